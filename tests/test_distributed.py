"""torchrun with gloo on the CPU: two ranks train like one process."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from dmlcli.files import read_tensors


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_torchrun_two_ranks_matches_single_process(cli, tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    args = ["train", "digits", "--members", "5", "--epochs", "4", "--device", "cpu"]
    assert cli(*args, "--artifacts", single).code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["torchrun", "--nproc-per-node", "2", "-m", "dmlcli", *args, "--artifacts", str(multi)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = sorted(p.name for p in (multi / "models" / "digits-dml").iterdir())
    assert files == ["history.parquet", "model.safetensors"]  # one checkpoint, from rank 0
    _, meta_multi, _ = read_tensors(multi / "models" / "digits-dml" / "model.safetensors")
    _, meta_single, _ = read_tensors(single / "models" / "digits-dml" / "model.safetensors")
    assert abs(meta_multi["benign"]["vote"] - meta_single["benign"]["vote"]) <= 3.0
    assert meta_multi["benign"]["vote"] > 90.0
