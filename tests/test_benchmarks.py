"""Every benchmark runs: each script on the test store's digits ensemble at a tiny size, as a
user runs it, printing its comparison line (the numbers are timings, not asserted here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: script -> (its tiny arguments, a line it must print); "{ckpt}" is the digits-dml run folder.
CASES = {
    "adaptive_vs_autoattack.py": (
        ["--checkpoint", "{ckpt}", "--n", "10", "--eps", "0.2", "--apgd-steps", "3",
         "--queries", "50", "--independent"],
        "time adaptive (cascade) / AutoAttack: x",
    ),
    "attack_throughput.py": (
        ["--checkpoint", "{ckpt}", "--n", "32", "--steps", "2", "--rounds", "1"],
        "compute floor:",
    ),
    "certify_throughput.py": (
        ["--checkpoint", "{ckpt}", "--samples", "2", "--n0", "4", "--n", "16",
         "--predict-n", "8", "--batch-size", "16"],
        "of the limit",
    ),
    "clever_throughput.py": (
        ["--checkpoint", "{ckpt}", "--samples", "1", "--nb-batches", "3", "--batch-size", "8",
         "--rounds", "1", "--art-rounds", "1"],
        "median score ours",
    ),
    "train_throughput.py": (["--steps", "2", "--batch-size", "32", "--rounds", "1"], "img/s"),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(CASES))
def test_the_benchmark_runs(script, trained_store, tmp_path):
    args, expect = CASES[script]
    ckpt = str(trained_store / "models" / "digits-dml")
    argv = [sys.executable, str(ROOT / "benchmarks" / script), *(a.format(ckpt=ckpt) for a in args)]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expect in proc.stdout


def test_every_benchmark_script_is_run_here():
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")} - {"rounds.py"}  # shared code
    assert scripts == set(CASES)
