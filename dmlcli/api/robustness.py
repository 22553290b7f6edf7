"""``dml attack`` and ``dml merge``: white-box robustness results and the stored worst case
they feed (rebuilt under the run's lock whenever a run's attack results change); groups of
seeds expanded to their runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dmlcli import results
from dmlcli.api._common import PathLike, as_list, check_batch, eval_subset, rows_of
from dmlcli.data import dataset_info
from dmlcli.errors import DmlError
from dmlcli.eval import robustness as rob
from dmlcli.eval.jobs import Job
from dmlcli.models.io import Run
from dmlcli.runner import Outcome, Reporter, run_job, run_jobs
from dmlcli.runner import merge as merge_parts
from dmlcli.runs import open_run
from dmlcli.runtime import parse_shard, resolve_device
from dmlcli.store import Store, validate_name
from dmlcli.units import parse_eps, parse_eps_list


# -- attack -----------------------------------------------------------------------------------
def attack(
    runs: str | Sequence[str],
    *,
    suite: Sequence[str] | None = None,
    attack: Sequence[str] | None = None,
    eps: Sequence[str | float] | None = None,
    n: int = 1000,
    dataset: str | None = None,
    data_dir: PathLike | None = None,
    decision: Sequence[str] | None = None,
    surface: Sequence[str] | None = None,
    loss: str | None = None,
    steps: int | None = None,
    step_size: float | None = None,
    restarts: int | None = None,
    norm: str | None = None,
    targeted: bool = False,
    target_classes: int | None = None,
    pgd_restarts: int = 5,
    cw_c: float = 1.0,
    cw_steps: int = 200,
    cw_lr: float = 0.01,
    cw_kappa: float = 0.0,
    cw_search_steps: int = 0,
    apgd_steps: int = 100,
    apgd_restarts: int = 1,
    eot: int = 20,
    aa_version: str = "auto",
    aa_attack: Sequence[str] | None = None,
    aa_steps: int = 100,
    square_queries: int = 5000,
    targets: int = 3,
    score_draws: int = 20,
    queries: int = 10_000,
    independent: bool = False,
    cascade_order: Sequence[str] | None = None,
    surrogate: str | None = None,
    batch_size: int = 500,
    shard: str | None = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    artifacts: PathLike | None = None,
    progress: Reporter | None = None,
) -> pd.DataFrame:
    """White-box robustness of each run: the suites ``paper`` (FGSM, BIM-10, PGD-10,
    PGD-20/40, CW-L2 on the summed logits, scored by the vote), ``autoattack`` (re-checked on
    the decision) and ``adaptive`` (APGD on every surface, APGD-T and agreement attacks, MORA,
    ARC, RayS with ``queries`` per sample, EOT, transfer from ``surrogate``; by default a
    cascade: each attack only on the samples every stored attack so far left robust, its
    targeted attacks on every wrong class; ``independent`` runs every attack on every sample
    with ``targets`` classes; ``cascade_order`` names labels to run first), and attacks
    named in ``attack``, at every ``eps`` (default: the dataset's eps of the paper), scored by
    each ``decision`` (default the vote, or the ``decision`` a model spec names). A
    randomized decision is scored on ``score_draws`` draws. Returns one row per (sample,
    attack setting) of every run (schema ``attack``), then the stored per-sample worst case
    of each run over every stored L-inf attack result of its checkpoint (schema
    ``worst-case``; recomputed whenever those results change).
    """
    shard_of = parse_shard(shard)
    names = as_list(attack)
    suites = as_list(suite) or ([] if names else ["paper"])
    check_batch(batch_size)
    if dataset:
        dataset_info(dataset)
    from dmlcli.attacks import list_attacks

    for a in names:
        if a not in list_attacks():
            raise DmlError(f"unknown attack {a!r}; choose one of {', '.join(list_attacks())}")
    budgets = rob.Budgets(
        pgd_restarts=pgd_restarts, cw_c=cw_c, cw_steps=cw_steps, cw_lr=cw_lr,
        cw_kappa=cw_kappa, cw_search_steps=cw_search_steps, apgd_steps=apgd_steps,
        apgd_restarts=apgd_restarts, eot=eot,
        aa_version="custom" if aa_attack and aa_version == "auto" else aa_version,
        aa_attacks=tuple(aa_attack or ()), aa_steps=aa_steps, square_queries=square_queries,
        surfaces=tuple(surface or ()), targets=targets, score_draws=score_draws,
        queries=queries, independent=independent, cascade_order=tuple(as_list(cascade_order)),
    )  # fmt: skip
    budgets.validate()
    eps_values = parse_eps_list(eps) if eps else None
    dev = resolve_device(device)
    store = Store(artifacts)
    names_, groups = expand_groups(store, as_list(runs))
    opened = [open_run(r, store) for r in names_]
    if not opened:
        raise DmlError("name at least one run to attack")
    wanted = dataset or opened[0].dataset
    for r in opened:
        if r.dataset != wanted:
            raise DmlError(f"{r.name} was trained on {r.dataset}, not {wanted}")
    sur = open_run(surrogate, store) if surrogate else None
    if sur is not None and sur.dataset != wanted:
        raise DmlError(f"--surrogate {sur.name} was trained on {sur.dataset}")
    eps_values = eps_values or [parse_eps(e) for e in dataset_info(wanted).paper_eps]
    images, labels, indices = eval_subset(opened[0], n, seed, data_dir)
    options = {
        "steps": steps,
        "step_size": step_size,
        "restarts": restarts,
        "loss": loss,
        "norm": norm,
        "targeted": targeted or None,
        "target_classes": target_classes,
    }
    plans = []  # every job of every run is built (and so checked) before any attack runs

    def job(r: Run, spec: rob.AttackSpec, skip: dict[int, str] | None = None) -> Job:
        return rob.attack_job(
            r, spec, images, labels, indices, seed=seed, batch_size=batch_size, device=dev,
            surrogate=sur, score_draws=budgets.score_draws, skip=skip,
        )  # fmt: skip

    for r in opened:
        specs = rob.plan_specs(
            suites, names, eps_values, options, budgets,
            as_list(decision) or [r.meta.get("decision", "vote")], r.num_members,
            r.randomized, sur.name if sur else None, r.num_classes,
        )  # fmt: skip
        plans.append((r, [(spec, job(r, spec)) for spec in specs]))
    outcomes: list[Outcome] = []
    for r, planned in plans:
        r.model.to(dev)
        if sur is not None:
            sur.model.to(dev)
        alone = [j for spec, j in planned if not spec.cascade]
        outcomes += run_jobs(store, alone, force=force, shard=shard_of, progress=progress)
        cache: dict[str, pd.DataFrame] = {}
        for spec, _ in [(spec, j) for spec, j in planned if spec.cascade]:
            skip = _broken(store, r, spec, len(indices), seed, budgets.score_draws, cache)
            outcomes.append(
                run_job(store, job(r, spec, skip), force=force, shard=shard_of, progress=progress)
            )
        if shard_of is None:  # the worst cases of this call's samples (others are refreshed too)
            outcomes += [
                o
                for o in refresh_worst_cases(store, r, progress=progress)
                if (o.job.setting["n"], o.job.setting["seed"]) == (len(indices), seed)
            ]
        r.model.cpu()
    df = rows_of(outcomes)
    df.attrs["groups"] = _group_summary(groups, outcomes)
    return df


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


def _group_summary(groups: dict[str, list[str]], outcomes: Sequence[Outcome]) -> list[dict]:
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
            out.append({"group": group, "attack": attack_, "surface": surface,
                        "decision": decision, "eps": eps, "n": n, "seed": seed, "mean": mean,
                        "std": std, "runs": per_run})  # fmt: skip
    return out


def refresh_worst_cases(
    store: Store, run: Run, *, progress: Reporter | None = None
) -> list[Outcome]:
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


def merge(runs: Sequence[str] | None = None, *, artifacts: PathLike | None = None) -> pd.DataFrame:
    """Write the final results of sharded evaluations from their part files (every sample
    exactly once, checked before anything is written), then refresh the worst cases of every
    run that got attack results, exactly as an unsharded ``dml attack`` does; one row per
    part folder."""
    store = Store(artifacts)
    names = [validate_name(r) for r in as_list(runs)]
    merged = merge_parts(store, names)
    for name in dict.fromkeys(m.run for m in merged if m.path and m.kind == "attack"):
        refresh_worst_cases(store, open_run(name, store))  # as an unsharded run would
    return pd.DataFrame(
        [
            {
                "run": m.run,
                "result": m.label,
                "rows": m.rows,
                "parts": m.blocks,
                "path": "" if m.path is None else str(m.path),
                "note": m.note,
            }
            for m in merged
        ],
        columns=["run", "result", "rows", "parts", "path", "note"],
    )
