"""``dml compare``: paired comparison of runs (or groups of seeds) from stored results; the
statistics themselves are :mod:`dmlcli.stats`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from dmlcli import results
from dmlcli.api.robustness import current_attacks, expand_groups, refresh_worst_cases
from dmlcli.api.settings import (
    SEED_HELP,
    InStore,
    argument,
    entry_point,
    option,
)
from dmlcli.errors import DmlError
from dmlcli.eval import robustness as rob
from dmlcli.runs import open_run
from dmlcli.stats import compare_pair, over_seeds
from dmlcli.store import Store
from dmlcli.units import parse_eps


@dataclass(kw_only=True)
class CompareSettings(InStore):
    """The options of ``dml compare`` / :func:`compare` (each field is one option)."""

    runs: list[str] = argument(
        "Two or more runs (or groups of seeds); the first is compared with each other."
    )
    eps: str | float = option(
        dataclasses.MISSING, "L-inf budget of the stored results, e.g. 0.1 or 8/255."
    )
    decision: str = option("vote", "Decision the results were scored by.")
    n: int | None = option(None, "Evaluation samples (when several were stored).")
    reps: int = option(10_000, "Bootstrap resamples of the 95% CI.")
    seed: int = option(0, SEED_HELP)

    def check(self) -> None:
        if len(self.runs) < 2:
            raise DmlError("dml compare needs at least two runs")
        self.budget()
        if self.reps < 100:
            raise DmlError(f"--reps must be at least 100 bootstrap resamples; got {self.reps}")

    def budget(self) -> float:
        """``eps`` as a number (:func:`~dmlcli.units.parse_eps`)."""
        return parse_eps(str(self.eps))


@dataclass
class CompareOutcome:
    """What :func:`compare` found: ``rows``, one per (run pair, measure) and level (the
    columns of :func:`dmlcli.stats.compare_pair`: ``run_a, run_b, level, measure, eps, n,
    acc_a, acc_b, diff, ci_low, ci_high, only_a, only_b, p_value, attacks_a, attacks_b``);
    ``base``, the run (or group) compared with each other; ``by_seed``, whether groups of
    seeds were compared (rows per seed and over the seeds) rather than single runs."""

    rows: pd.DataFrame = field(repr=False)
    base: str
    by_seed: bool = False


@entry_point(CompareSettings)
def compare(s: CompareSettings) -> CompareOutcome:
    """Paired per-sample comparison of the first run with each other run on the same
    evaluation samples, from stored results only (nothing is attacked): clean accuracy, the
    paper protocol (robust under every stored attack of the paper suite) and the stored
    worst case at ``eps``; per measure the accuracies, their difference with a paired
    bootstrap 95% CI (``reps`` resamples, deterministic given ``seed``) and McNemar's exact
    p-value on the discordant samples; ``attacks_a``/``attacks_b``: how many stored attacks
    each worst case covers (a :class:`DmlWarning` when they differ: a worst case is only as
    strong as the attacks run). One row per (run pair, measure); ``level`` is ``run``.

    Groups of seeds (``dml train --seeds``) are compared seed by seed (rows with ``level``
    ``seed <s>``: the runs of the same seed, paired per sample as above), then over the
    seeds (``level`` ``over <k> seeds``): the mean of the per-seed differences with a
    Student-t 95% CI and the paired t-test's p-value, which needs at least two seeds that
    both groups share. Options: :class:`CompareSettings`.

    Returns a :class:`CompareOutcome` (``rows``, ``base``, ``by_seed``).
    """
    store = Store(s.artifacts)
    _, groups = expand_groups(store, s.runs)
    if groups and len(groups) != len(s.runs):
        single = next(x for x in s.runs if x not in groups)
        raise DmlError(
            f"{single} is one run and {next(iter(groups))} a group of seeds: compare groups "
            "with groups, runs with runs"
        )
    paired = _Paired(store, s)
    base, rows = s.runs[0], []
    for other in s.runs[1:]:
        rows += _over_seeds(paired, base, other) if groups else paired.rows(base, other, "run")
    if not rows:
        raise DmlError(f"no stored attack results at eps {s.eps} to compare (dml attack first)")
    return CompareOutcome(pd.DataFrame(rows), base, by_seed=bool(groups))


@dataclass
class _Paired:
    """The rows of run pairs, each run's stored frames read once (:func:`_compared`)."""

    store: Store
    s: CompareSettings
    frames: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)

    def rows(self, a: str, b: str, level: str) -> list[dict[str, Any]]:
        """The rows of :func:`~dmlcli.stats.compare_pair` for runs ``a`` and ``b``."""
        for name in (a, b):
            if name not in self.frames:
                self.frames[name] = _compared(self.store, name, self.s)
        s = self.s
        return compare_pair(a, b, self.frames[a], self.frames[b], s.budget(), s.seed, s.reps,
                            level)  # fmt: skip


def _over_seeds(paired: _Paired, base: str, other: str) -> list[dict[str, Any]]:
    """Groups ``base`` and ``other`` compared seed by seed, then over their shared seeds
    (:func:`~dmlcli.stats.over_seeds`)."""
    seeds_a, seeds_b = paired.store.group_runs(base), paired.store.group_runs(other)
    common = [s for s in seeds_a if s in seeds_b]
    if len(common) < 2:
        raise DmlError(
            f"a confidence interval over seeds needs at least two seeds that {base} and "
            f"{other} share; they share {len(common)} (train more with --seeds)"
        )
    per_seed = []
    for s in common:
        per_seed += paired.rows(seeds_a[s], seeds_b[s], f"seed {s}")
    return per_seed + over_seeds(base, other, paired.s.budget(), per_seed, len(common))


def _compared(store: Store, name: str, s: CompareSettings) -> dict[str, pd.DataFrame]:
    """The per-sample frames ``compare`` needs of one run: ``worst case`` (the stored worst
    case), ``clean`` (its clean outcomes) and ``paper protocol`` (per sample over the stored
    paper-suite attacks), all at ``eps``/``decision``/``seed`` (and ``n`` when given). Only
    the matching files are read."""
    eps, decision, n, seed = s.budget(), s.decision, s.n, s.seed
    r = open_run(name, store)
    worst = []
    for o in refresh_worst_cases(store, r):  # current: recomputed if its components changed
        st = o.job.setting
        if (abs(float(st["eps"]) - eps) < 1e-9 and st["decision"] == decision
                and st["seed"] == seed and (n is None or st["n"] == n)):  # fmt: skip
            worst.append((o, st))
    if not worst:
        raise DmlError(
            f"{r.name} has no stored worst case at eps {eps:g}, decision {decision}, seed {seed}"
            + ("" if n is None else f", n {n}")
            + " (dml attack it first)"
        )
    if len(worst) > 1:
        sizes = ", ".join(str(st["n"]) for _, st in worst)
        raise DmlError(
            f"{r.name} has worst cases on several sample sets ({sizes}): pick one with --n"
        )
    ((o, st),) = worst
    wc = o.rows
    out = {"worst case": wc, "clean": wc}
    key = rob.stored_worst_case_key(st)
    frames = [
        store.read_result(path)[0]
        for path, meta in current_attacks(store, r).values()
        if rob.worst_case_key(meta["setting"]) == key
    ]
    paper = [df for df in frames if results.paper_protocol(df)]
    if paper:
        out["paper protocol"] = results.worst_case(paper)
    return out
