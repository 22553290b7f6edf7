"""``dml attack`` and ``dml merge``: white-box robustness results and the stored worst case
they feed (rebuilt under the run's lock whenever a run's attack results change); groups of
seeds expanded to their runs."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from dmlcli import results
from dmlcli.api._common import RunContext, as_list, eval_subset
from dmlcli.api.outcome import Outcome, StoredResult
from dmlcli.api.settings import (
    DATA_DIR_HELP,
    N_HELP,
    SHARD_HELP,
    Common,
    InStore,
    argument,
    entry_point,
    flag,
    option,
)
from dmlcli.attacks import list_attacks
from dmlcli.attacks.autoattack import VERSIONS as AA_VERSIONS
from dmlcli.attacks.base import NORMS
from dmlcli.attacks.losses import list_losses
from dmlcli.attacks.surfaces import list_surfaces
from dmlcli.data import dataset_info
from dmlcli.errors import DmlError
from dmlcli.eval import robustness as rob
from dmlcli.eval.jobs import Job
from dmlcli.models.aggregate import list_decisions
from dmlcli.models.io import Run
from dmlcli.runner import Outcome as JobOutcome
from dmlcli.runner import Reporter, run_job, run_jobs
from dmlcli.runner import merge as merge_parts
from dmlcli.runs import open_run
from dmlcli.runtime import parse_shard
from dmlcli.store import Store, validate_name
from dmlcli.units import parse_eps, parse_eps_list

# -- attack -----------------------------------------------------------------------------------
#: The suites' default budgets (the paper's and AutoAttack's): the defaults of the options below.
BUDGETS = rob.Budgets()


@dataclass(kw_only=True)
class AttackSettings(Common):
    """The options of ``dml attack`` / :func:`attack` (each field is one option)."""

    runs: list[str] = argument(
        "Runs, groups of seeds (dml train --seeds), run folders or .safetensors files."
    )
    suite: list[str] | None = option(
        None, f"{', '.join(rob.SUITES)} or all (repeatable; default paper)."
    )
    attack: list[str] | None = option(None, f"Run this attack ({', '.join(list_attacks())}).")
    eps: list[str | float] | None = option(
        None, "L-inf budget(s) in pixels: 8/255, 0.1 (default: the paper's)."
    )
    n: int = option(1000, N_HELP)
    dataset: str | None = option(None, "Dataset the checkpoints must have been trained on.")
    data_dir: str | Path | None = option(None, DATA_DIR_HELP)
    decision: list[str] | None = option(
        None, f"Decision scored: {', '.join(list_decisions())} (repeatable; default vote)."
    )
    surface: list[str] | None = option(
        None,
        f"Surface(s) of --attack (default sum) and of the adaptive suite (default all): "
        f"{', '.join(list_surfaces())}.",
    )
    loss: str | None = option(None, f"--attack loss: {', '.join(list_losses())}.")
    steps: int | None = option(None, "--attack steps.")
    step_size: float | None = option(None, "--attack step size.")
    restarts: int | None = option(None, "--attack restarts.")
    norm: str | None = option(None, f"--attack norm: {' or '.join(NORMS)}.")
    targeted: bool = flag("--attack targeted at random wrong labels.")
    target_classes: int | None = option(
        None,
        "--attack targeted at each of the K most likely wrong classes in turn (not with "
        "--targeted).",
    )
    pgd_restarts: int = option(BUDGETS.pgd_restarts, "Restarts of PGD-20/40 (paper).")
    cw_c: float = option(BUDGETS.cw_c, "CW penalty constant c (paper's gamma).")
    cw_steps: int = option(BUDGETS.cw_steps, "CW Adam steps (paper: 200).")
    cw_lr: float = option(BUDGETS.cw_lr, "CW Adam learning rate.")
    cw_kappa: float = option(BUDGETS.cw_kappa, "CW confidence kappa.")
    cw_search_steps: int = option(
        BUDGETS.cw_search_steps, "CW binary-search rounds over c (0: the paper's fixed c)."
    )
    apgd_steps: int = option(BUDGETS.apgd_steps, "APGD iterations (adaptive).")
    apgd_restarts: int = option(BUDGETS.apgd_restarts, "APGD restarts (adaptive).")
    eot: int = option(BUDGETS.eot, "EOT draws on randomized heads.")
    aa_version: str = option(BUDGETS.aa_version, f"AutoAttack version: {', '.join(AA_VERSIONS)}.")
    aa_attack: list[str] | None = option(None, "AutoAttack custom attacks (repeatable).")
    aa_steps: int = option(BUDGETS.aa_steps, "AutoAttack APGD iterations.")
    square_queries: int = option(BUDGETS.square_queries, "AutoAttack Square queries.")
    targets: int = option(
        BUDGETS.targets, "Adaptive: wrong classes tried by APGD-T and the agree attacks."
    )
    score_draws: int = option(
        BUDGETS.score_draws, "Randomized heads: draws each decision is scored on (majority)."
    )
    queries: int = option(
        BUDGETS.queries, "Adaptive: RayS's queries per sample (hard-label, on the vote)."
    )
    independent: bool = flag(
        "Adaptive: run every attack on every sample (default: a cascade, each attack on the "
        "samples still robust)."
    )
    cascade_order: list[str] | None = option(
        None, "Adaptive: attack labels to run first in the cascade (repeatable)."
    )
    surrogate: str | None = option(None, "Adaptive: transfer from this run (e.g. a baseline).")
    batch_size: int = option(500, "Images per attack batch.")
    shard: str | None = option(None, SHARD_HELP)

    def check(self) -> None:
        parse_shard(self.shard)
        self.positive("batch_size")
        if self.dataset:
            dataset_info(self.dataset)
        for a in self.attack or []:
            if a not in list_attacks():
                raise DmlError(f"unknown attack {a!r}; choose one of {', '.join(list_attacks())}")
        self.budgets().validate()
        if self.eps:
            parse_eps_list(self.eps)

    def budgets(self) -> rob.Budgets:
        """The suites' budgets (:class:`~dmlcli.eval.robustness.Budgets`) of these settings."""
        custom = self.aa_attack and self.aa_version == "auto"
        return rob.Budgets(
            pgd_restarts=self.pgd_restarts, cw_c=self.cw_c, cw_steps=self.cw_steps,
            cw_lr=self.cw_lr, cw_kappa=self.cw_kappa, cw_search_steps=self.cw_search_steps,
            apgd_steps=self.apgd_steps, apgd_restarts=self.apgd_restarts, eot=self.eot,
            aa_version="custom" if custom else self.aa_version,
            aa_attacks=tuple(self.aa_attack or ()), aa_steps=self.aa_steps,
            square_queries=self.square_queries, surfaces=tuple(self.surface or ()),
            targets=self.targets, score_draws=self.score_draws, queries=self.queries,
            independent=self.independent, cascade_order=tuple(self.cascade_order or ()),
        )  # fmt: skip

    def attack_options(self) -> dict[str, Any]:
        """The parameters of ``--attack`` set by these settings (None: the attack's own)."""
        return {
            "steps": self.steps,
            "step_size": self.step_size,
            "restarts": self.restarts,
            "loss": self.loss,
            "norm": self.norm,
            "targeted": self.targeted or None,
            "target_classes": self.target_classes,
        }


@dataclass(frozen=True)
class SeedSpread:
    """One row of a group's summary: a result's robust accuracy (%) on every seed run of the
    group (``runs``: run -> accuracy) and their mean and standard deviation."""

    group: str
    attack: str
    surface: str
    decision: str
    eps: float | None
    n: int
    seed: int
    mean: float
    std: float
    runs: dict[str, float]


@dataclass
class AttackOutcome(Outcome):
    """:func:`attack`'s rows (schema ``attack``, then each run's ``worst-case``) and, for
    groups of seeds, the per-group summary."""

    groups: list[SeedSpread] = field(default_factory=list)

    @property
    def worst_cases(self) -> list[tuple[StoredResult, pd.DataFrame]]:
        """Each run's stored per-sample worst case over every attack of its checkpoint
        (schema ``worst-case``: the headline robust accuracy), with its rows."""
        return self.of_kind("worst-case")


@entry_point(AttackSettings)
def attack(s: AttackSettings, progress: Reporter | None = None) -> AttackOutcome:
    """White-box robustness of each run: the suites ``paper`` (FGSM, BIM-10, PGD-10,
    PGD-20/40, CW-L2 on the summed logits, scored by the vote), ``autoattack`` (re-checked on
    the decision) and ``adaptive`` (APGD on every surface, APGD-T and agreement attacks, MORA,
    ARC, RayS with ``queries`` per sample, EOT, transfer from ``surrogate``; by default a
    cascade: each attack only on the samples every stored attack so far left robust, its
    targeted attacks on every wrong class; ``independent`` runs every attack on every sample
    with ``targets`` classes; ``cascade_order`` names labels to run first), and attacks
    named in ``attack``, at every ``eps`` (default: the dataset's eps of the paper), scored by
    each ``decision`` (default the vote, or the ``decision`` a model spec names). A
    randomized decision is scored on ``score_draws`` draws. Options: :class:`AttackSettings`.

    Returns the rows of every run (schema ``attack``: one per sample and attack setting),
    then the stored per-sample worst case of each run over every stored L-inf attack result
    of its checkpoint (schema ``worst-case``; recomputed whenever those results change), and
    ``groups``: each group of seeds' mean and spread.
    """
    ctx = RunContext.of(s, progress)
    names, groups = expand_groups(ctx.store, s.runs)
    opened = [open_run(r, ctx.store) for r in names]
    if not opened:
        raise DmlError("name at least one run to attack")
    wanted = s.dataset or opened[0].dataset
    for r in opened:
        if r.dataset != wanted:
            raise DmlError(f"{r.name} was trained on {r.dataset}, not {wanted}")
    sur = open_run(s.surrogate, ctx.store) if s.surrogate else None
    if sur is not None and sur.dataset != wanted:
        raise DmlError(f"--surrogate {sur.name} was trained on {sur.dataset}")
    eps = parse_eps_list(s.eps) if s.eps else None
    eps = eps or [parse_eps(e) for e in dataset_info(wanted).paper_eps]
    sample = eval_subset(opened[0], s.n, s.seed, s.data_dir)
    # every job of every run is built (and so checked) before any attack runs
    plans = [(r, _plan(r, s, ctx, eps, sample, sur)) for r in opened]
    outcomes: list[JobOutcome] = []
    for r, planned in plans:
        outcomes += _run_plan(ctx, r, sur, planned, len(sample[2]), s)
    return AttackOutcome.of(outcomes, groups=_group_summary(groups, outcomes))


Sample = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images uint8, labels, indices


@dataclass(frozen=True)
class _Planned:
    """One attack setting of a run: its spec, its job, and how to rebuild the job so that it
    skips samples (a cascaded attack, once the samples still robust are known)."""

    spec: rob.AttackSpec
    job: Job
    skipping: Callable[[dict[int, str]], Job]


def _plan(
    r: Run, s: AttackSettings, ctx: RunContext, eps: list[float], sample: Sample, sur: Run | None
) -> list[_Planned]:
    """Every attack setting of ``r`` with its job; built here, so that a bad setting of any
    run fails before an attack runs."""
    budgets = s.budgets()
    specs = rob.plan_specs(
        as_list(s.suite) or ([] if s.attack else ["paper"]), as_list(s.attack), eps,
        s.attack_options(), budgets, as_list(s.decision) or [r.meta.get("decision", "vote")],
        r.num_members, r.randomized, sur.name if sur else None, r.num_classes,
    )  # fmt: skip

    def job(spec: rob.AttackSpec, skip: dict[int, str] | None = None) -> Job:
        return rob.attack_job(
            r, spec, *sample, seed=s.seed, batch_size=s.batch_size, device=ctx.device,
            surrogate=sur, score_draws=budgets.score_draws, skip=skip,
        )  # fmt: skip

    return [_Planned(spec, job(spec), functools.partial(job, spec)) for spec in specs]


def _run_plan(
    ctx: RunContext, r: Run, sur: Run | None, planned: list[_Planned], n: int, s: AttackSettings
) -> list[JobOutcome]:
    """Run ``r``'s planned attacks: the standalone ones, then each cascaded one on the
    samples still robust; then (unsharded) refresh the worst cases of this sample set."""
    r.model.to(ctx.device)
    if sur is not None:
        sur.model.to(ctx.device)
    opts = {"force": ctx.force, "shard": ctx.shard, "progress": ctx.progress}
    outcomes = run_jobs(ctx.store, [p.job for p in planned if not p.spec.cascade], **opts)
    cache: dict[str, pd.DataFrame] = {}
    for p in planned:
        if p.spec.cascade:
            skip = _broken(ctx.store, r, p.spec, n, s.seed, s.score_draws, cache)
            outcomes.append(run_job(ctx.store, p.skipping(skip), **opts))
    if ctx.shard is None:  # the worst cases of this call's samples (others are refreshed too)
        outcomes += [
            o
            for o in refresh_worst_cases(ctx.store, r, progress=ctx.progress)
            if (o.job.setting["n"], o.job.setting["seed"]) == (n, s.seed)
        ]
    r.model.cpu()
    return outcomes


def _broken(
    store: Store,
    run: Run,
    spec: rob.AttackSpec,
    n: int,
    seed: int,
    score_draws: int,
    cache: dict[str, pd.DataFrame],
) -> dict[int, str]:
    """The samples a cascaded ``spec`` skips: every sample some stored attack of ``run``'s
    checkpoint broke at ``spec``'s eps or a smaller one (same decision, samples, seed and
    scoring draws: :func:`~dmlcli.eval.robustness.worst_case_plan`), mapped to that attack
    (the worst case's ``broken_by``). Computed in memory from the store as it is now;
    ``cache`` keeps the frames read by earlier calls (a component id names one file
    version)."""
    draws = score_draws if run.randomized else 1
    key = (float(spec.eps), spec.decision, n, seed, draws)
    planned = _planned_frames(store, run, cache).get(key)
    if planned is None:
        return {}
    wc = results.worst_case(planned[1], key[0])
    rows = wc[wc["clean_correct"] & ~wc["robust"]]
    return dict(zip(rows["sample"].astype(int), rows["broken_by"], strict=True))


def expand_groups(store: Store, names: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Run names with every group of seeds (``dml train --seeds``) replaced by its runs, and
    the groups named: group -> its runs (by seed)."""
    out, groups = [], {}
    for name in names:
        members = store.group_runs(str(name))
        if members:
            groups[name] = list(members.values())
            out += groups[name]
        else:
            out.append(name)
    return out, groups


def _group_summary(
    groups: dict[str, list[str]], outcomes: Sequence[JobOutcome]
) -> list[SeedSpread]:
    """Per group and (attack, surface, decision, eps): the robust accuracy of every seed run
    and their mean and standard deviation (``results.seed_spread``)."""
    if not groups:
        return []
    acc: dict[tuple[str, tuple], float] = {}
    for o in outcomes:
        if not len(o.rows) or o.job.kind not in ("attack", "worst-case"):
            continue
        rows = o.rows
        decision = str(results.first(rows, "decision"))
        samples = (o.job.setting["n"], o.job.setting["seed"])  # never mix sample sets
        clean, robust = results.robust_accuracy(rows)
        acc.setdefault((o.job.run, ("clean", "-", decision, None, *samples)), clean)
        if o.job.kind == "worst-case":
            key = ("worst case", "-", decision, results.first(rows, "eps"), *samples)
        else:
            surface = results.first(rows, "surrogate") or results.first(rows, "surface")
            key = (str(results.first(rows, "attack")), str(surface), decision,
                   results.first(rows, "eps"), *samples)  # fmt: skip
        acc[(o.job.run, key)] = robust
    out = []
    for group, runs in groups.items():
        keys = list(dict.fromkeys(k for (r, k) in acc if r in runs))
        for key in keys:
            per_run = {r: acc[(r, key)] for r in runs if (r, key) in acc}
            mean, std = results.seed_spread(list(per_run.values()))
            attack_, surface, decision, eps, n, seed = key
            out.append(SeedSpread(group, attack_, surface, decision, eps, n, seed, mean, std,
                                  per_run))  # fmt: skip
    return out


def refresh_worst_cases(
    store: Store, run: Run, *, progress: Reporter | None = None
) -> list[JobOutcome]:
    """Recompute ``run``'s stored worst cases (schema ``worst-case``): per (eps, decision,
    samples, seed, scoring draws), the per-sample minimum over every stored L-inf attack
    result of the run's current checkpoint at that eps or a smaller one
    (:func:`~dmlcli.eval.robustness.worst_case_plan`), whatever command, suite or merge wrote
    it. Runs under the run's lock and reads the store inside it, so two processes that finish
    together leave the worst case of every result both wrote. A worst case whose component
    files are unchanged is read back; results of other checkpoints (stale) and unreadable
    ones are left out."""
    outcomes = []
    with store.lock(run.name):
        for key, (components, frames) in _planned_frames(store, run, {}).items():
            job = rob.worst_case_job(run, key, frames, components)
            path = store.result_path(job.kind, job.run, job.setting)
            stale = not path.is_file() or store.result_meta(path).get("components") != components
            outcomes += run_jobs(store, [job], force=stale, progress=progress)
    return outcomes


def _planned_frames(
    store: Store, run: Run, cache: dict[str, pd.DataFrame]
) -> dict[tuple, tuple[list[str], list[pd.DataFrame]]]:
    """Per worst-case key of ``run``'s current attack results
    (:func:`~dmlcli.eval.robustness.worst_case_plan`): its component ids and their rows, read
    from the store as it is now; ``cache`` keeps frames already read (an id names one file
    version)."""
    current = current_attacks(store, run)
    plan = rob.worst_case_plan([(c, meta["setting"]) for c, (_, meta) in current.items()])
    for c in {c for components in plan.values() for c in components} - set(cache):
        cache[c] = store.read_result(current[c][0])[0]
    return {key: (components, [cache[c] for c in components]) for key, components in plan.items()}


def current_attacks(store: Store, run: Run) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Every stored attack result of ``run``'s current checkpoint by its component id
    (``file@created``, what a worst case records it was built from): (path, metadata);
    unreadable files left out."""
    out = {}
    for path in store.list_results("attack", run.name):
        try:
            meta = store.result_meta(path)
        except DmlError:
            continue
        if meta["setting"].get("checkpoint") == run.checkpoint:
            out[f"{path.name}@{meta['created']}"] = (path, meta)
    return out


# -- merge ------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class MergeSettings(InStore):
    """The options of ``dml merge`` / :func:`merge` (each field is one option)."""

    runs: list[str] | None = argument(
        "Runs whose pending results to merge (default all).", default=None
    )

    def check(self) -> None:
        for name in self.runs or []:
            validate_name(name)


@dataclass
class MergeOutcome:
    """What :func:`merge` did. ``rows``: one per part folder (``run``, ``result``: its
    label, ``rows``: samples, ``parts``: part files, ``path``: the result file written, or
    ``""`` for a folder its own command finishes (detection), ``note``: what to do then)."""

    rows: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def new_files(self) -> list[Path]:
        """The result files written."""
        return [Path(p) for p in self.rows["path"] if p] if len(self.rows) else []


@entry_point(MergeSettings)
def merge(s: MergeSettings) -> MergeOutcome:
    """Write the final results of sharded evaluations from their part files (every sample
    exactly once, checked before anything is written), then refresh the worst cases of every
    run that got attack results, exactly as an unsharded ``dml attack`` does. Options:
    :class:`MergeSettings`.

    Returns a :class:`MergeOutcome`: ``rows``, one per part folder.
    """
    store = Store(s.artifacts)
    merged = merge_parts(store, s.runs or [])
    for name in dict.fromkeys(m.run for m in merged if m.path and m.kind == "attack"):
        refresh_worst_cases(store, open_run(name, store))  # as an unsharded run would
    rows = [
        {
            "run": m.run,
            "result": m.label,
            "rows": m.rows,
            "parts": m.blocks,
            "path": "" if m.path is None else str(m.path),
            "note": m.note,
        }
        for m in merged
    ]
    return MergeOutcome(
        rows=pd.DataFrame(rows, columns=["run", "result", "rows", "parts", "path", "note"])
    )
