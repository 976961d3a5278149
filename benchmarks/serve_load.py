"""A bounded load on `ragtune serve` from a second process over loopback: throughput, latency, errors.

    python benchmarks/serve_load.py --index runs/pubmedqa/index --clients 32 --requests 640 \
        --output-json benchmarks/results/serve_load.json

Starts the server itself on a free loopback port, sends a fixed number of requests from `--clients` concurrent
clients (half /v1/embeddings with one short question, half /search with k=10), then stops it.

`--poison 0.02`: that share of the requests carries a lone surrogate (invalid text); each must get a 4xx and no good
request may fail. `--large-clients N`: N more clients send 256-input embeddings requests of long texts the whole
time; the one-query searches' p99 then says whether small requests wait behind large ones.

    python benchmarks/serve_load.py --index /tmp/idx --poison 0.02 --large-clients 2 \
        --output-json benchmarks/results/serve_load-poisoned.json
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from output import report

QUESTIONS = [
    "Does age influence growth hormone response to exercise?",
    "Is obesity associated with lower prostate specific antigen?",
    "Do statins reduce mortality after heart surgery?",
    "What are the treatments for asthma?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--poison", type=float, default=0.0, help="Share of requests with invalid text.")
    parser.add_argument("--large-clients", type=int, default=0, help="Clients sending 256 long inputs at a time.")
    parser.add_argument("--output-json", type=Path)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ragtune", "serve", args.index, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("server did not start")
            time.sleep(0.5)

        poisoned = set(np.random.default_rng(0).choice(args.requests, int(args.requests * args.poison), False))

        def one(i: int) -> tuple[float, bool, bool]:
            q = QUESTIONS[i % len(QUESTIONS)] + f" ({i})"
            bad = i in poisoned
            if bad:
                q += " \ud800"  # a lone surrogate: json escapes it, the server must refuse only this request
            start = time.perf_counter()
            body = {"query": q, "k": 10} if i % 2 else {"input": q, "model": "tuned"}
            path = "/search" if i % 2 else "/v1/embeddings"
            try:
                r = httpx.post(
                    f"{url}{path}", content=json.dumps(body), headers={"content-type": "application/json"}, timeout=120
                )
                ok = 400 <= r.status_code < 500 if bad else r.status_code == 200
            except httpx.HTTPError:
                ok = False
            return time.perf_counter() - start, ok, bad

        stop = threading.Event()
        large_done = []

        def large() -> None:
            # As large as one request may be: 256 inputs of ~55 tokens is under --max-request-tokens (16,384).
            texts = [" ".join(["the dose of this drug"] * 10) + f" {n}" for n in range(256)]
            while not stop.is_set():
                try:
                    r = httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=600)
                    large_done.append(r.status_code)
                except httpx.HTTPError:
                    large_done.append(-1)

        background = [threading.Thread(target=large, daemon=True) for _ in range(args.large_clients)]
        for t in background:
            t.start()
        if background:
            time.sleep(2)  # the large requests are being encoded
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(one, range(args.requests)))
        seconds = time.perf_counter() - start
        stop.set()
        for t in background:
            t.join(timeout=600)
    finally:
        server.terminate()
        server.wait(timeout=30)
    good = [r for r in results if not r[2]]
    latencies = np.array([r[0] for r in good]) * 1000
    searches = np.array([r[0] for i, r in enumerate(results) if i % 2 and not r[2]]) * 1000
    out = {
        "clients": args.clients,
        "requests": args.requests,
        "poisoned_requests": len(results) - len(good),
        "large_clients": args.large_clients,
        "seconds": round(seconds, 2),
        "requests_per_second": round(args.requests / seconds, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "search_p99_ms": round(float(np.percentile(searches, 99)), 1),
        "errors": sum(1 for r in good if not r[1]),
        "poisoned_not_refused": sum(1 for r in results if r[2] and not r[1]),
        "large_requests_done": len(large_done),
        "large_requests_failed": sum(1 for c in large_done if c != 200),
    }
    report(out, args.output_json)


if __name__ == "__main__":
    main()
