"""``dml compare``: paired comparison of runs (or groups of seeds) from stored results; the
statistics themselves are :mod:`dmlcli.stats`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from dmlcli import results
from dmlcli.api._common import PathLike, as_list
from dmlcli.api.robustness import current_attacks, expand_groups, refresh_worst_cases
from dmlcli.errors import DmlError
from dmlcli.eval import robustness as rob
from dmlcli.runs import open_run
from dmlcli.stats import compare_pair, over_seeds
from dmlcli.store import Store
from dmlcli.units import parse_eps


def compare(
    runs: Sequence[str],
    *,
    eps: str | float,
    decision: str = "vote",
    n: int | None = None,
    seed: int = 0,
    reps: int = 10_000,
    artifacts: PathLike | None = None,
) -> pd.DataFrame:
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
    both groups share.
    """
    store = Store(artifacts)
    names = as_list(runs)
    if len(names) < 2:
        raise DmlError("dml compare needs at least two runs")
    e = parse_eps(str(eps))
    if reps < 100:
        raise DmlError(f"--reps must be at least 100 bootstrap resamples; got {reps}")
    _, groups = expand_groups(store, names)
    if groups and len(groups) != len(names):
        single = next(x for x in names if x not in groups)
        raise DmlError(
            f"{single} is one run and {next(iter(groups))} a group of seeds: compare groups "
            "with groups, runs with runs"
        )
    frames: dict[str, dict[str, pd.DataFrame]] = {}

    def pair(a: str, b: str, level: str) -> list[dict[str, Any]]:
        for name in (a, b):
            if name not in frames:
                frames[name] = _compared(store, name, e, decision, n, seed)
        return compare_pair(a, b, frames[a], frames[b], e, seed, reps, level)

    rows = []
    base = names[0]
    for other in names[1:]:
        if not groups:
            rows += pair(base, other, "run")
            continue
        seeds_a, seeds_b = store.group_runs(base), store.group_runs(other)
        common = [s for s in seeds_a if s in seeds_b]
        if len(common) < 2:
            raise DmlError(
                f"a confidence interval over seeds needs at least two seeds that {base} and "
                f"{other} share; they share {len(common)} (train more with --seeds)"
            )
        per_seed = []
        for s in common:
            per_seed += pair(seeds_a[s], seeds_b[s], f"seed {s}")
        rows += per_seed
        rows += over_seeds(base, other, e, per_seed, len(common))
    if not rows:
        raise DmlError(f"no stored attack results at eps {eps} to compare (dml attack first)")
    return pd.DataFrame(rows)


def _compared(
    store: Store, name: str, eps: float, decision: str, n: int | None, seed: int
) -> dict[str, pd.DataFrame]:
    """The per-sample frames ``compare`` needs of one run: ``worst case`` (the stored worst
    case), ``clean`` (its clean outcomes) and ``paper protocol`` (per sample over the stored
    paper-suite attacks), all at ``eps``/``decision``/``seed`` (and ``n`` when given). Only
    the matching files are read."""
    r = open_run(name, store)
    worst = []
    for o in refresh_worst_cases(store, r):  # current: recomputed if its components changed
        s = o.job.setting
        if (abs(float(s["eps"]) - eps) < 1e-9 and s["decision"] == decision
                and s["seed"] == seed and (n is None or s["n"] == n)):  # fmt: skip
            worst.append((o, s))
    if not worst:
        raise DmlError(
            f"{r.name} has no stored worst case at eps {eps:g}, decision {decision}, seed {seed}"
            + ("" if n is None else f", n {n}")
            + " (dml attack it first)"
        )
    if len(worst) > 1:
        sizes = ", ".join(str(s["n"]) for _, s in worst)
        raise DmlError(
            f"{r.name} has worst cases on several sample sets ({sizes}): pick one with --n"
        )
    ((o, s),) = worst
    wc = o.rows
    out = {"worst case": wc, "clean": wc}
    key = rob.stored_worst_case_key(s)
    frames = [
        store.read_result(path)[0]
        for path, meta in current_attacks(store, r).values()
        if rob.worst_case_key(meta["setting"]) == key
    ]
    paper = [df for df in frames if results.paper_protocol(df)]
    if paper:
        out["paper protocol"] = results.worst_case(paper)
    return out
