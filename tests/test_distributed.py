"""Two training processes on CPU (torchrun, gloo): both ranks train, only rank 0 writes the model."""

import os
import shutil
import subprocess
import sys

import pytest
from helpers import split_folder


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tiny_model, tmp_path):
    data = split_folder(tmp_path, tiny_model, n_queries=80)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    command = [torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "ragtune", "train"]
    command += ["--data", str(data), "--out", str(tmp_path / "ddp"), "--model", str(tiny_model)]
    command += ["--batch-size", "8", "--epochs", "1", "--evals-per-epoch", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    # 64 training rows / (batch 8 x 2 ranks) = 4 steps on each rank.
    assert "rank 0: model saved to" in out and "after 4 steps" in out, out[-2000:]
    assert "rank 1: trained 4 steps; wrote nothing" in out, out[-2000:]
    assert (tmp_path / "ddp" / "model" / "model.safetensors").exists()
