"""The statistics of ``dml compare``: two runs on the same evaluation samples, and groups of
seeds over their seeds. They read only the per-sample frames they are given (result columns
of :mod:`dmlcli.results`); which stored results those are is :mod:`dmlcli.api.comparison`'s
business.

- :func:`mcnemar_exact`: McNemar's exact test on the discordant samples (McNemar 1947), the
  two-sided binomial test; checked against scipy's ``binomtest`` by
  ``tests/test_compare.py::test_mcnemar_matches_scipys_exact_binomial_test``.
- :func:`paired_bootstrap`: percentile-bootstrap CI of the accuracy difference, resampling
  samples jointly for both runs (Efron & Tibshirani 1993); :func:`compare_paired` puts both
  together on one result column. Counts, accuracies, p-value, CI and determinism are checked
  on a hand-built case by ``tests/test_compare.py::test_paired_comparison_on_a_constructed_case``.
- :func:`t_interval` and :func:`over_seeds`: over k seeds, the mean of the per-seed
  differences with a Student-t CI and the paired t-test (the one-sample t-test of the
  differences against 0; Student 1908);
  ``tests/test_defenses.py::test_compare_groups_per_seed_and_over_seeds`` checks it against
  scipy's ``ttest_1samp``.
- :func:`compare_pair`: the rows of ``dml compare`` for two runs, one per measure (clean,
  paper protocol, worst case); ``tests/test_compare.py::test_compare_two_stored_runs_end_to_end``
  and ``::test_worst_cases_over_different_attack_sets_warn`` run it end to end.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from dmlcli import results
from dmlcli.errors import DmlError, DmlWarning


# -- two runs on the same samples --------------------------------------------------------------
def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value of ``b`` samples robust only under model A and ``c``
    only under model B: the binomial test of ``min(b, c)`` successes in ``b + c`` trials at
    1/2 (McNemar 1947; scipy's ``binomtest(min(b, c), b + c).pvalue``). 1 when b + c = 0."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, reps: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(difference, lower, upper) in points of accuracy, ``mean(a) - mean(b)`` of two boolean
    per-sample outcomes ``[n]`` on the same samples, with a percentile bootstrap interval
    (the same resampled samples for both: paired); deterministic given ``seed``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = a - b
    idx = np.random.default_rng(seed).integers(0, len(diff), size=(reps, len(diff)))
    means = diff[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return 100.0 * float(diff.mean()), 100.0 * float(lo), 100.0 * float(hi)


def compare_paired(
    a: pd.DataFrame, b: pd.DataFrame, column: str, reps: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Paired comparison of boolean per-sample ``column`` of two results on the same samples
    (rows matched by ``sample``): accuracies, difference with its bootstrap 95% CI, the
    discordant counts and McNemar's exact p-value."""
    if sorted(a["sample"]) != sorted(b["sample"]):
        raise DmlError("the runs were evaluated on different samples: use the same --n and --seed")
    x = a.set_index("sample")[column].astype(bool)
    y = b.set_index("sample")[column].astype(bool).reindex(x.index)
    only_a, only_b = int((x & ~y).sum()), int((~x & y).sum())
    diff, lo, hi = paired_bootstrap(x.to_numpy(), y.to_numpy(), reps, seed)
    return {
        "n": len(x),
        "acc_a": 100.0 * float(x.mean()),
        "acc_b": 100.0 * float(y.mean()),
        "diff": diff,
        "ci_low": lo,
        "ci_high": hi,
        "only_a": only_a,
        "only_b": only_b,
        "p_value": mcnemar_exact(only_a, only_b),
    }


# -- over seeds --------------------------------------------------------------------------------
def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lower, upper): Student-t confidence interval of the mean of per-seed values
    (at least two)."""
    from scipy import stats

    arr = np.asarray(list(values), dtype=np.float64)
    if len(arr) < 2:
        raise DmlError("a confidence interval over seeds needs at least two seeds")
    mean, sem = float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(len(arr)))
    half = float(stats.t.ppf((1 + level) / 2, len(arr) - 1)) * sem
    return mean, mean - half, mean + half


# -- the rows of dml compare -------------------------------------------------------------------
def compare_pair(
    a: str, b: str, frames_a: dict[str, pd.DataFrame], frames_b: dict[str, pd.DataFrame],
    e: float, seed: int, reps: int, level: str,
) -> list[dict[str, Any]]:  # fmt: skip
    """The rows of :func:`dmlcli.api.compare` for runs ``a`` and ``b`` (one row per measure:
    ``clean``, ``paper protocol``, ``worst case``, each present in both frames): the paired
    statistics of :func:`compare_paired` on ``clean_correct`` (clean) or
    ``robust``, with ``reps`` bootstrap resamples seeded by ``seed``, and ``attacks_a`` /
    ``attacks_b``, how many stored attacks each worst case covers (a :class:`DmlWarning` when
    they differ). ``frames_a``/``frames_b``: measure -> per-sample rows of the run."""
    rows = []
    for measure, column in (("clean", "clean_correct"), ("paper protocol", "robust"),
                            ("worst case", "robust")):  # fmt: skip
        fa, fb = frames_a.get(measure), frames_b.get(measure)
        if fa is None or fb is None:
            continue
        stats = compare_paired(fa, fb, column, reps=reps, seed=seed)
        counts = {"attacks_a": int(results.first(fa, "attacks") or 0),
                  "attacks_b": int(results.first(fb, "attacks") or 0)}  # fmt: skip
        rows.append({"run_a": a, "run_b": b, "level": level, "measure": measure, "eps": e,
                     **stats, **counts})  # fmt: skip
        if measure == "worst case" and counts["attacks_a"] != counts["attacks_b"]:
            warnings.warn(
                f"{a}'s worst case is over {counts['attacks_a']} stored attacks, "
                f"{b}'s over {counts['attacks_b']}: attack both with the same suites "
                "for a fair comparison",
                DmlWarning,
                stacklevel=3,
            )
    return rows


def over_seeds(
    a: str, b: str, e: float, per_seed: list[dict[str, Any]], k: int
) -> list[dict[str, Any]]:
    """Per measure, the per-seed rows of :func:`compare_pair` (``level`` ``seed <s>``)
    summarised over the ``k`` seeds (``level`` ``over <k> seeds``): mean accuracies, the mean
    difference with its Student-t 95% CI and the paired t-test's two-sided p-value (NaN when
    every seed gives the same difference); a measure with fewer than two seeds is left out."""
    from scipy import stats

    out = []
    for measure in dict.fromkeys(r["measure"] for r in per_seed):
        rows = [r for r in per_seed if r["measure"] == measure]
        if len(rows) < 2:
            continue
        diffs = [r["diff"] for r in rows]
        mean, lo, hi = t_interval(diffs)
        spread = results.seed_spread(diffs)[1]
        p = float(stats.ttest_1samp(diffs, 0.0).pvalue) if spread > 0 else float("nan")
        out.append({
            "run_a": a, "run_b": b, "level": f"over {k} seeds", "measure": measure, "eps": e,
            "n": sum(r["n"] for r in rows),
            "acc_a": results.seed_spread([r["acc_a"] for r in rows])[0],
            "acc_b": results.seed_spread([r["acc_b"] for r in rows])[0],
            "diff": mean, "ci_low": lo, "ci_high": hi,
            "only_a": sum(r["only_a"] for r in rows), "only_b": sum(r["only_b"] for r in rows),
            "p_value": p,
            "attacks_a": min(r["attacks_a"] for r in rows),
            "attacks_b": min(r["attacks_b"] for r in rows),
        })  # fmt: skip
    return out
