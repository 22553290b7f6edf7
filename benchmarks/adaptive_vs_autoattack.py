"""The adaptive suite against AutoAttack-standard on the same trained model and samples.

Runs ``dml attack --suite adaptive`` (the default cascade) and ``dml attack --suite
autoattack`` (standard, re-checked on the decision) through the API into a temporary store,
on the same seeded evaluation samples, and prints each one's robust accuracy (the adaptive
suite's per-sample worst case, AutoAttack alone as the paper scores it, AutoAttack + the
decision-checked APGD, and the worst case over both), the ratio of their wall-clock times,
measured in this run, and where the cascade spent its time. ``--independent`` also runs every
adaptive attack on every sample (another store) and prints its worst case, each attack's own
accuracy and the samples no other attack broke::

    python benchmarks/adaptive_vs_autoattack.py --checkpoint artifacts/models/fashion-mnist-dml \\
        --data-dir /usr/share/datasets/fashion-mnist --n 200 --eps 0.1 --independent
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dmlcli import api
from dmlcli.results import robust_accuracy, sum_scored_robust


def _broken(df: pd.DataFrame) -> np.ndarray:
    """Samples this result's attack ran on and broke (a cascade's skipped rows excluded)."""
    ran = df["clean_correct"].to_numpy() & (df["skipped_by"] == "").to_numpy()
    return ran & ~df["robust"].to_numpy()


def _suite(checkpoint: str, tmp: str, independent: bool, args, common) -> tuple:
    """The adaptive suite into store ``tmp``: (result frames, worst case, seconds)."""
    began = time.perf_counter()
    df = api.attack(
        checkpoint, suite=["adaptive"], apgd_steps=args.apgd_steps, queries=args.queries,
        independent=independent, artifacts=Path(tmp), **common,
    )  # fmt: skip
    seconds = time.perf_counter() - began
    ((_, worst),) = df.worst_cases
    return df.of_kind("attack"), worst, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="run folder or .safetensors file")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--eps", default="0.2")
    parser.add_argument("--apgd-steps", type=int, default=100)
    parser.add_argument("--queries", type=int, default=10_000, help="RayS queries per sample")
    parser.add_argument(
        "--independent", action="store_true", help="also run every attack on every sample"
    )
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    common = {"eps": [args.eps], "n": args.n, "data_dir": args.data_dir, "device": args.device}
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as alone:
        attacks, adaptive_worst, t_adaptive = _suite(args.checkpoint, tmp, False, args, common)
        began = time.perf_counter()
        auto = api.attack(
            args.checkpoint, suite=["autoattack"], aa_version="standard", artifacts=Path(tmp),
            **common,
        )  # fmt: skip
        t_auto = time.perf_counter() - began
        if args.independent:
            independent = _suite(args.checkpoint, alone, True, args, common)
    (aa_meta, aa_rows), *_ = auto.of_kind("attack")
    ((_, both),) = auto.worst_cases
    n = len(aa_rows)
    counts = aa_meta.meta.get("counts", {})
    aa_alone = sum_scored_robust(aa_rows, counts)
    print(f"{args.checkpoint}: n={n}, eps {args.eps}, clean {robust_accuracy(aa_rows)[0]:.1f}%")
    print(f"  adaptive suite, cascade ({len(attacks)} attacks), per-sample worst case: "
          f"{100.0 * adaptive_worst['robust'].mean():.1f}%  [{t_adaptive:.0f} s]")  # fmt: skip
    print(f"  AutoAttack standard on the sum, scored by the vote: {aa_alone:.1f}%")
    print(f"  ... + decision-checked APGD: {robust_accuracy(aa_rows)[1]:.1f}%  [{t_auto:.0f} s]")
    print(f"  worst case over both: {100.0 * both['robust'].mean():.1f}%")
    print(f"  time adaptive (cascade) / AutoAttack: x{t_adaptive / t_auto:.2f}")
    print("  cascade profile, in run order (seconds, samples attacked, samples it broke):")
    for r, f in attacks:
        ran = int((f["clean_correct"] & (f["skipped_by"] == "")).sum())
        name = r.label
        print(f"    {name:44s} {float(f['seconds'].sum()):7.1f} s  ran {ran:4d}  broke "
              f"{int(_broken(f).sum())}")  # fmt: skip
    if not args.independent:
        return
    frames, worst, seconds = independent
    print(f"  adaptive suite, --independent: worst case {100.0 * worst['robust'].mean():.1f}%  "
          f"[{seconds:.0f} s, x{seconds / t_auto:.2f} AutoAttack]")  # fmt: skip
    broke = {r.label: _broken(f) for r, f in frames}
    print("  each attack alone (robust %, seconds, samples no other attack breaks):")
    for r, f in sorted(frames, key=lambda a: robust_accuracy(a[1])[1]):
        others = [b for label, b in broke.items() if label != r.label]
        only = int((broke[r.label] & ~np.logical_or.reduce(others)).sum()) if others else 0
        print(f"    {r.label:44s} {robust_accuracy(f)[1]:5.1f}%  "
              f"{float(f['seconds'].sum()):7.1f} s  only-this {only}")  # fmt: skip


if __name__ == "__main__":
    main()
