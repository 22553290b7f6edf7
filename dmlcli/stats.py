"""The statistics of ``dml compare``: one run against another on the same evaluation samples,
and groups of seeds against each other over their seeds.

- :func:`compare_pair`: per measure (clean, paper protocol, worst case), the paired
  per-sample comparison of :func:`dmlcli.results.compare_paired`: McNemar's exact test on the
  discordant samples (McNemar 1947) and a paired percentile-bootstrap CI of the accuracy
  difference (Efron & Tibshirani 1993); tested in ``tests/test_compare.py``
  (``test_mcnemar_matches_scipys_exact_binomial_test``,
  ``test_paired_comparison_on_a_constructed_case``, ``test_compare_two_stored_runs_end_to_end``).
- :func:`over_seeds`: the per-seed differences summarised over k seeds: their mean with a
  Student-t CI (:func:`dmlcli.results.t_interval`) and the two-sided one-sample t-test of the
  differences against 0, i.e. the paired t-test (Student 1908); tested in
  ``tests/test_defenses.py`` (``test_compare_groups_per_seed_and_over_seeds``, against
  scipy's ``ttest_1samp``).

Both read only the per-sample frames they are given (result columns of :mod:`dmlcli.results`);
which stored results those are is :mod:`dmlcli.api.comparison`'s business.
"""

from __future__ import annotations

import warnings
from typing import Any

import pandas as pd

from dmlcli import results
from dmlcli.errors import DmlWarning


def compare_pair(
    a: str, b: str, frames_a: dict[str, pd.DataFrame], frames_b: dict[str, pd.DataFrame],
    e: float, seed: int, reps: int, level: str,
) -> list[dict[str, Any]]:  # fmt: skip
    """The rows of :func:`dmlcli.api.compare` for runs ``a`` and ``b`` (one row per measure:
    ``clean``, ``paper protocol``, ``worst case``, each present in both frames): the paired
    statistics of :func:`dmlcli.results.compare_paired` on ``clean_correct`` (clean) or
    ``robust``, with ``reps`` bootstrap resamples seeded by ``seed``, and ``attacks_a`` /
    ``attacks_b``, how many stored attacks each worst case covers (a :class:`DmlWarning` when
    they differ). ``frames_a``/``frames_b``: measure -> per-sample rows of the run."""
    rows = []
    for measure, column in (("clean", "clean_correct"), ("paper protocol", "robust"),
                            ("worst case", "robust")):  # fmt: skip
        fa, fb = frames_a.get(measure), frames_b.get(measure)
        if fa is None or fb is None:
            continue
        stats = results.compare_paired(fa, fb, column, reps=reps, seed=seed)
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
        mean, lo, hi = results.t_interval(diffs)
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
