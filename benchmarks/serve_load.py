"""A bounded load on `ragtune serve` from a second process over loopback: throughput, latency, errors.

    python benchmarks/serve_load.py --index runs/pubmedqa/index --clients 32 --requests 640 \
        --output-json benchmarks/results/serve_load.json

Starts the server itself on a free loopback port, sends a fixed number of requests from `--clients` concurrent
clients (half /v1/embeddings with one short question, half /search with k=10), then stops it.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
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

        def one(i: int) -> tuple[float, bool]:
            q = QUESTIONS[i % len(QUESTIONS)] + f" ({i})"
            start = time.perf_counter()
            try:
                if i % 2:
                    r = httpx.post(f"{url}/search", json={"query": q, "k": 10}, timeout=120)
                else:
                    r = httpx.post(f"{url}/v1/embeddings", json={"input": q, "model": "tuned"}, timeout=120)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            return time.perf_counter() - start, ok

        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            results = list(pool.map(one, range(args.requests)))
        seconds = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=30)
    latencies = np.array([r[0] for r in results]) * 1000
    out = {
        "clients": args.clients,
        "requests": args.requests,
        "seconds": round(seconds, 2),
        "requests_per_second": round(args.requests / seconds, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "errors": sum(1 for _, ok in results if not ok),
    }
    report(out, args.output_json)


if __name__ == "__main__":
    main()
