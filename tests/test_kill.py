"""kill -9 at random points of `ragtune run` and `ragtune index --add`: a re-run always ends where an uninterrupted
run does, and nothing outside the output is touched."""

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import pytest
import yaml
from conftest import write_jsonl
from helpers import ragtune_here, toy_rows

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _start(args):
    return subprocess.Popen(
        [sys.executable, "-m", "ragtune", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
        start_new_session=True,
    )


def _whole(args):
    """A run as a user starts it, in its own process: its length sets where the kills land."""
    done = subprocess.run([sys.executable, "-m", "ragtune", *map(str, args)], capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]


def _kill_after(args, delay: float, trigger: Callable[[], bool] | None = None) -> bool:
    """Start, kill -9 the whole process group `delay` seconds after the start, or after `trigger()` first holds;
    True if it was still running."""
    proc = _start(args)
    deadline = None if trigger else time.monotonic() + delay
    while proc.poll() is None and (deadline is None or time.monotonic() < deadline):
        if deadline is None and trigger():
            deadline = time.monotonic() + delay
        time.sleep(0.001)
    alive = proc.poll() is None
    if alive:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return alive


def _timed(args, building: Callable[[], bool]) -> tuple[float, float]:
    """Run to the end: seconds until `building()` first held, and until it stopped holding."""
    started = time.monotonic()
    began = ended = None
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "ragtune", *map(str, args)], stderr=err, env=ENV)
        while proc.poll() is None:
            now, held = time.monotonic() - started, building()
            if began is None and held:
                began = now
            elif began is not None and ended is None and not held:
                ended = now
            time.sleep(0.001)
        err.seek(0)
        assert proc.returncode == 0 and began is not None, err.read().decode()[-3000:]
    return began, ended or time.monotonic() - started


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_kill_9_anywhere_in_a_run(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_rows(120))
    neighbour = tmp_path / "runs" / "notes"
    neighbour.mkdir(parents=True)
    (neighbour / "keep.txt").write_text("not ragtune's")
    config = {
        "base_model": str(tiny_model),
        "data": {"path": str(data)},
        "mining": {"strategy": "hard", "range_max": 10},
        "train": {"epochs": 2, "batch_size": 8, "evals_per_epoch": 2},
        "allow_regression": True,
    }

    def config_for(name):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**config, "output_dir": str(tmp_path / "runs" / name)}))
        return path

    started = time.monotonic()
    _whole(["run", config_for("whole")])
    duration = time.monotonic() - started
    whole = json.loads((tmp_path / "runs" / "whole" / "results.json").read_text())
    before = _snapshot(neighbour) | {"data": data.read_bytes()}
    killed = 0
    for seed in (0, 1, 2, 3, 5, 9):  # seed 4 would draw seed 3's moment again (0.31 of the run); 9 draws 0.52
        # Spread over the whole run: start-up, mining, evaluation, training, checkpoints, the report.
        delay = random.Random(seed).uniform(0.1, 1.0) * duration
        name = f"kill{seed}"
        killed += _kill_after(["run", config_for(name)], delay)
        ragtune_here("run", config_for(name))
        again = json.loads((tmp_path / "runs" / name / "results.json").read_text())
        for system in ("bm25", "base"):
            assert again["metrics"][system] == whole["metrics"][system], (seed, system)
        for metric, value in whole["metrics"]["tuned"].items():
            # A run resumed from a checkpoint matches to float noise (optimizer, scheduler, RNG state restored).
            assert abs(again["metrics"]["tuned"][metric] - value) <= 0.01, (seed, metric)
        assert _snapshot(neighbour) | {"data": data.read_bytes()} == before
    assert killed >= 4  # most kills landed mid-run, not after it finished


@pytest.mark.slow
def test_kill_9_during_index_add(tiny_model, tmp_path):
    from ragtune.index import Index

    docs = [{"id": f"d{i}", "text": f"passage {i} on topic {i % 7} with words {i * 3}"} for i in range(3000)]
    first = write_jsonl(tmp_path / "first.jsonl", docs[:1500])
    every = write_jsonl(tmp_path / "all.jsonl", docs)

    def add(index, cache):
        # Its own empty cache: the new passages must be encoded (cached, the add would end before any kill).
        return ["index", tiny_model, every, "--out", index, "--add", "--cache-dir", cache]

    def building(index):
        """True once the add writes its new version beside the old one (`outputs.replace_folder`)."""
        return lambda: any(index.parent.glob(f".{index.name}.new-*"))

    timed = tmp_path / "timed"
    ragtune_here("index", tiny_model, first, "--out", timed)
    building_at, swapped_at = _timed(add(timed, tmp_path / "cache-timed"), building(timed))
    killed, mid_write = 0, 0
    # Two kills in start-up and encoding (0.4 and 0.8 of the way to writing), two while the new version is written
    # beside the old one and swapped in (a quarter and three quarters through; some 30 ms here).
    for n, (phase, fraction) in enumerate([("start", 0.4), ("write", 0.25), ("start", 0.8), ("write", 0.75)]):
        index = tmp_path / f"idx{n}"
        ragtune_here("index", tiny_model, first, "--out", index)
        if phase == "start":
            moment, trigger = fraction * building_at, None
        else:
            moment, trigger = fraction * (swapped_at - building_at), building(index)
        killed += _kill_after(add(index, tmp_path / f"cache{n}"), moment, trigger)
        mid_write += building(index)()  # its half-written new version is still there
        # Whatever the moment, the index loads: the old version or the new one, never a mix.
        survived = Index.load(index)
        count = len(survived.documents)
        assert count in (1500, 3000) and survived.vectors.ntotal == count, (phase, fraction, count)
        ragtune_here(*add(index, tmp_path / f"cache{n}"))  # and the next add completes it
        assert not building(index)()
        loaded = Index.load(index)
        assert [d.id for d in loaded.documents] == [d["id"] for d in docs]
        assert loaded.vectors.ntotal == 3000
    assert killed >= 3 and mid_write >= 1  # kills landed while the add ran, one while it wrote its new version
