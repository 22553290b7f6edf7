"""The adaptive suite against AutoAttack-standard on the same trained model and samples.

Runs ``dml attack --suite adaptive`` and ``dml attack --suite autoattack`` (standard, re-checked
on the decision) through the API into a temporary store, on the same seeded evaluation
samples, and prints each one's robust accuracy (the adaptive suite's per-sample worst case,
AutoAttack alone as the paper scores it, AutoAttack + the decision-checked APGD, and the
worst case over both) and the ratio of their wall-clock times, measured in this run::

    python benchmarks/adaptive_vs_autoattack.py --checkpoint artifacts/models/fashion-mnist-dml \\
        --data-dir /usr/share/datasets/fashion-mnist --n 200 --eps 0.2
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


def _frames(df: pd.DataFrame, kind: str) -> list[tuple[dict, pd.DataFrame]]:
    out = []
    for r in df.attrs["results"]:
        if r["kind"] == kind:
            start, stop = r["rows"]
            out.append((r, df.iloc[start:stop]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="run folder or .safetensors file")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--eps", default="0.2")
    parser.add_argument("--apgd-steps", type=int, default=100)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    common = {"eps": [args.eps], "n": args.n, "data_dir": args.data_dir, "device": args.device}
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        adaptive = api.attack(
            args.checkpoint, suite=["adaptive"], apgd_steps=args.apgd_steps,
            artifacts=Path(tmp), **common,
        )  # fmt: skip
        t_adaptive = time.perf_counter() - began
        began = time.perf_counter()
        auto = api.attack(
            args.checkpoint, suite=["autoattack"], aa_version="standard", artifacts=Path(tmp),
            **common,
        )  # fmt: skip
        t_auto = time.perf_counter() - began
    attacks = _frames(adaptive, "attack")
    (adaptive_worst,) = [f for _, f in _frames(adaptive, "worst-case")]
    (aa_meta, aa_rows), *_ = _frames(auto, "attack")
    (both,) = [f for _, f in _frames(auto, "worst-case")]
    n = len(aa_rows)
    counts = aa_meta["meta"].get("counts", {})
    aa_alone = sum_scored_robust(aa_rows, counts)
    strongest = min(attacks, key=lambda a: robust_accuracy(a[1])[1])
    print(f"{args.checkpoint}: n={n}, eps {args.eps}, clean {robust_accuracy(aa_rows)[0]:.1f}%")
    print(f"  adaptive suite ({len(attacks)} attacks), per-sample worst case: "
          f"{100.0 * adaptive_worst['robust'].mean():.1f}%  [{t_adaptive:.0f} s]")  # fmt: skip
    print(f"    strongest single attack: {strongest[0]['label']}: "
          f"{robust_accuracy(strongest[1])[1]:.1f}%")  # fmt: skip
    print(f"  AutoAttack standard on the sum, scored by the vote: {aa_alone:.1f}%")
    print(f"  ... + decision-checked APGD: {robust_accuracy(aa_rows)[1]:.1f}%  [{t_auto:.0f} s]")
    print(f"  worst case over both: {100.0 * both['robust'].mean():.1f}%")
    print(f"  time adaptive / AutoAttack: x{t_adaptive / t_auto:.2f}")
    # profile: where the adaptive suite spends its time, and what each attack alone adds
    clean = aa_rows["clean_correct"].to_numpy()
    broke = {r["label"]: clean & ~f["robust"].to_numpy() for r, f in attacks}
    print("  profile (seconds, samples only this attack breaks within the suite):")
    for r, f in sorted(attacks, key=lambda a: -float(a[1]["seconds"].sum())):
        others = [b for label, b in broke.items() if label != r["label"]]
        only = int((broke[r["label"]] & ~np.logical_or.reduce(others)).sum()) if others else 0
        print(f"    {r['label']:40s} {float(f['seconds'].sum()):7.1f} s  only-this {only}")


if __name__ == "__main__":
    main()
