"""The Python API: one function per ``dml`` subcommand, taking the CLI's option names.

Each function writes exactly the results the command writes and returns them as a pandas
DataFrame (``train``: the per-epoch history; ``report``/``ls``/``merge``: what they list).
``df.attrs["results"]`` describes the stored results behind the rows (kind, label, path,
status ``new``/``cached``/``shard i/n``, and which rows belong to it). The CLI calls exactly
these functions::

    from dmlcli import api

    api.train("digits", members=5)
    rows = api.attack("digits-dml", suite=["paper"], eps=["0.2"], n=100)
    rows.groupby("attack")["robust"].mean()

Every argument a user can get wrong raises :class:`~dmlcli.errors.DmlError` (one clear line)
before anything is computed or written. ``progress`` takes a :class:`Reporter` (the CLI
passes a rich progress bar); the default is silent.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from dmlcli import results
from dmlcli.data import dataset_info, eval_set, load_dataset
from dmlcli.defenses import parse_defense_args, resolve_defense, resolve_defense_args
from dmlcli.errors import DmlError, DmlWarning
from dmlcli.eval import certify as ce
from dmlcli.eval import clever as cl
from dmlcli.eval import detect as det
from dmlcli.eval import geometry as geo
from dmlcli.eval import robustness as rob
from dmlcli.eval import transfer as tr
from dmlcli.eval.jobs import Job
from dmlcli.files import (
    read_parquet,
    read_tensor_digest,
    read_tensors,
    save_tensors,
    write_parquet,
)
from dmlcli.models.aggregate import list_decisions
from dmlcli.models.config import resolve_config
from dmlcli.models.ensemble import Ensemble
from dmlcli.models.io import Run, checkpoint_config, save_ensemble
from dmlcli.models.spec import read_spec, spec_digest
from dmlcli.runner import Outcome, Reporter, run_job, run_jobs
from dmlcli.runner import merge as merge_parts
from dmlcli.runs import open_run
from dmlcli.runtime import init_distributed, parse_shard, resolve_device
from dmlcli.store import Store, validate_name
from dmlcli.train import Trainer, TrainSettings, default_run_name, parse_seeds, run_training
from dmlcli.units import parse_eps, parse_eps_list

__all__ = [
    "attack",
    "certify",
    "check",
    "clever",
    "compare",
    "detect",
    "export",
    "geometry",
    "ls",
    "merge",
    "report",
    "train",
    "transfer",
]

PathLike = str | Path


def _list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str | Path) else list(value)


def _rows(outcomes: Sequence[Outcome]) -> pd.DataFrame:
    """The rows of every outcome, one frame; ``attrs['results']`` says which is which."""
    frames, info, at = [], [], 0
    for o in outcomes:
        frames.append(o.rows)
        info.append(
            {
                "kind": o.job.kind,
                "run": o.job.run,
                "label": o.job.label,
                "path": str(o.path),
                "status": o.status,
                "rows": [at, at + len(o.rows)],
                "warnings": list(o.meta.get("warnings", [])),
                "meta": o.meta,
            }
        )
        at += len(o.rows)
    nonempty = [f for f in frames if len(f.columns)]
    df = pd.concat(nonempty, ignore_index=True) if nonempty else pd.DataFrame()
    df.attrs["results"] = info
    return df


def _test_data(run: Run, n: int, seed: int, data_dir: PathLike | None):
    """The test split of ``run``'s dataset and its seeded evaluation subset."""
    return eval_set(run.dataset, n, seed, data_dir or run.data_dir, image_size=run.image_size)


def _check_batch(batch_size: int) -> None:
    if batch_size < 1:
        raise DmlError(f"--batch-size must be at least 1; got {batch_size}")


# -- train ------------------------------------------------------------------------------------
def train(
    dataset: str,
    *,
    members: int = 5,
    defense: str | None = None,
    defense_arg: Sequence[str] | None = None,
    baseline: bool = False,
    head: str = "dml",
    backbone: str | None = None,
    prior: str | None = None,
    name: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    optimizer: str | None = None,
    lr: float | None = None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    augment: str | None = None,
    m_mode: str = "diag",
    m_init: str = "uniform",
    m_fixed: float = 0.1,
    centers: str = "identity",
    diversity: str = "split",
    head_samples: int = 20,
    head_sigma: float = 0.1,
    gamma: float = 0.01,
    beta: float = 0.01,
    adv_train: str = "none",
    adv_eps: str = "10/255",
    eval_attack: str = "none",
    eval_eps: str = "0.1",
    image_size: int | None = None,
    data_dir: PathLike | None = None,
    download: bool = True,
    resume: bool = False,
    checkpoint_every: int = 0,
    mode: str = "auto",
    seed: int = 0,
    seeds: str | Sequence[int] | None = None,
    device: str = "auto",
    force: bool = False,
    artifacts: PathLike | None = None,
    progress: Reporter | None = None,
) -> pd.DataFrame:
    """Train a K-member ensemble with ``defense``'s objective (:mod:`dmlcli.defenses`: ``dml``,
    Eq. 3, by default; ``baseline=True`` is ``defense="baseline"``) and store it as
    ``models/<run>/model.safetensors``; returns the per-epoch history.

    ``defense_arg``: ``["name=value", ...]`` overriding the defense's hyperparameters.
    ``seeds`` (``"0,1,2"`` or a list, at least two): one run per seed, ``<run>-seed<s>``, a
    group that ``attack``, ``compare`` and ``report`` aggregate; a ``prior`` naming a group
    gives each seed the prior of the same seed. The history then has a ``run`` column.

    ``attrs``: ``run``, ``benign`` (accuracy % per decision and member), ``files`` and
    ``status`` (``new``, or ``exists`` when the run was already there: nothing is trained
    unless ``force``); with ``seeds`` also ``runs``: one such dict per seed.
    """
    defense, head = resolve_defense(defense, baseline, head)
    run = validate_name(
        name or default_run_name(dataset, head, centers, diversity, adv_train, defense)
    )
    if seeds is not None:
        return _train_seeds(dict(locals()))
    defense_args = resolve_defense_args(defense, parse_defense_args(_list(defense_arg)))
    reporter = progress or Reporter()
    info = dataset_info(dataset)
    if defense == "baseline" and prior:
        raise DmlError("--baseline and --prior exclude each other")
    config = resolve_config(
        dataset, members, head, backbone=backbone, image_size=image_size, m_mode=m_mode,
        m_init=m_init, m_fixed=m_fixed, centers=centers, diversity=diversity,
        head_samples=head_samples, head_sigma=head_sigma, gamma=gamma, beta=beta, seed=seed,
    )  # fmt: skip
    d = info.train
    settings = TrainSettings(
        epochs=epochs if epochs is not None else d.epochs,
        batch_size=batch_size if batch_size is not None else d.batch_size,
        optimizer=optimizer or d.optimizer,
        lr=lr if lr is not None else d.lr,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
        augment=augment or info.augment,
        adv_train=adv_train,
        adv_eps=parse_eps(adv_eps),
        eval_attack=eval_attack,
        eval_eps=parse_eps(eval_eps),
        checkpoint_every=checkpoint_every,
        defense=defense,
        defense_args=dict(defense_args or {}),
    )
    settings.validate()
    store = Store(artifacts)
    prior_run = open_run(prior, store) if prior else None
    if prior_run is not None and prior_run.dataset != dataset:
        raise DmlError(f"--prior {prior} was trained on {prior_run.dataset}, not {dataset}")
    model_path = store.checkpoint_path(run)
    if store.has_run(run) and not force:
        _, meta = checkpoint_config(model_path)
        history = store.history_path(run)
        df = read_parquet(history)[0] if history.is_file() else pd.DataFrame()
        df.attrs.update(run=run, benign=meta.get("benign", {}), files=[], status="exists")
        return df
    dev, rank = init_distributed(resolve_device(device))
    resume_path = store.resume_path(run)
    config = config.replace(
        training=vars(settings).copy(), prior=prior_run.name if prior_run else None
    )
    train_data = load_dataset(dataset, "train", data_dir, download, config.image_size)
    test_data = load_dataset(dataset, "test", data_dir, download, config.image_size)
    ensemble = Ensemble(config, mode=mode)
    if prior_run is not None:
        ensemble.load_backbones_from(prior_run.model)
    trainer = Trainer(ensemble, train_data, test_data, settings, device=dev)
    if resume and not resume_path.is_file():
        reporter.note(f"no checkpoint to resume in {store.run_dir(run)}; starting fresh")
    if resume and resume_path.is_file():
        tensors, meta, _ = read_tensors(resume_path)
        if meta.get("config") != config.to_json():
            raise DmlError(f"--resume: {resume_path} belongs to a run with other settings")
        trainer.load_state(tensors, meta["trainer"])
        reporter.note(f"resuming {run} at epoch {trainer.epoch + 1}, step {trainer.step}")
    if force:
        model_path.unlink(missing_ok=True)
    meta_common = {"run": run, "config": config.to_json()}

    def checkpoint(t: Trainer) -> None:
        if rank == 0:
            tensors, state = t.state()
            save_tensors(resume_path, tensors, {"config": config.to_json(), "trainer": state})

    def write_history(t: Trainer, row: dict) -> None:
        if rank == 0:
            write_parquet(store.history_path(run), pd.DataFrame(t.history), meta_common)

    total = settings.epochs * trainer.steps_per_epoch
    update = reporter.task(f"train {run}", total) if rank == 0 else Reporter().task("", 0)

    def on_step(t: Trainer, out: dict, seconds: float) -> None:
        rate = settings.batch_size / max(seconds, 1e-9)
        done = t.epoch * t.steps_per_epoch + t.step
        info = (
            f"epoch {t.epoch + 1}/{settings.epochs} loss {out['total']:.3f} "
            f"acc {out['acc']:.1f}% {rate:,.0f} img/s"
        )
        update(done, info)

    run_training(trainer, on_step, write_history, checkpoint)
    history = pd.DataFrame(trainer.history)
    if rank == 0:
        final = trainer.history[-1]
        benign = {k[5:]: v for k, v in final.items() if k.startswith("test_") and "robust" not in k}
        extra = {"benign": benign, "run": run}
        if data_dir is not None:
            extra["data_dir"] = str(Path(data_dir).resolve())
        save_ensemble(model_path, trainer.ensemble.cpu(), extra)
        resume_path.unlink(missing_ok=True)
        history.attrs.update(
            run=run, benign=benign, status="new", files=[model_path, store.history_path(run)]
        )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return history


def _train_seeds(options: dict[str, Any]) -> pd.DataFrame:
    """:func:`train` once per seed of ``options["seeds"]``: runs ``<run>-seed<s>`` of the
    group ``options["run"]``, each with the same seed's run of a ``prior`` group; the
    histories with ``run`` and ``seed``."""
    store = Store(options["artifacts"])
    seeds, prior, group = parse_seeds(options.pop("seeds")), options.pop("prior"), options["run"]
    for key in ("name", "seed", "run"):
        options.pop(key)
    prior_group = store.group_runs(prior) if prior else {}
    frames, runs = [], []
    for s in seeds:
        prior_s = prior_group.get(s, prior)
        df = train(**options, name=store.seed_run(group, s), seed=s, prior=prior_s)
        runs.append(dict(df.attrs))
        frames.append(df.assign(run=df.attrs["run"], seed=s))
    history = pd.concat(frames, ignore_index=True)
    history.attrs.update(
        run=group,
        runs=runs,
        benign=runs[-1].get("benign", {}),
        files=[f for r in runs for f in r.get("files", [])],
        status="exists" if all(r.get("status") == "exists" for r in runs) else "new",
    )
    return history


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
    names = _list(attack)
    suites = _list(suite) or ([] if names else ["paper"])
    _check_batch(batch_size)
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
        queries=queries, independent=independent, cascade_order=tuple(_list(cascade_order)),
    )  # fmt: skip
    budgets.validate()
    eps_values = parse_eps_list(eps) if eps else None
    dev = resolve_device(device)
    store = Store(artifacts)
    names_, groups = expand_groups(store, _list(runs))
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
    images, labels, indices = _test_data(opened[0], n, seed, data_dir)
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
            _list(decision) or [r.meta.get("decision", "vote")], r.num_members,
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
    df = _rows(outcomes)
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
    current = _current_attacks(store, run)
    plan = rob.worst_case_plan([(c, meta["setting"]) for c, (_, meta) in current.items()])
    for c in {c for components in plan.values() for c in components} - set(cache):
        cache[c] = store.read_result(current[c][0])[0]
    return {key: (components, [cache[c] for c in components]) for key, components in plan.items()}


def _current_attacks(store: Store, run: Run) -> dict[str, tuple[Path, dict[str, Any]]]:
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


def _check_decision(decision: str, members: int) -> None:
    choices = list_decisions(members)
    if decision not in choices:
        raise DmlError(f"unknown decision {decision!r}; choose one of {', '.join(choices)}")


# -- transfer ---------------------------------------------------------------------------------
def transfer(
    run: str,
    *,
    source: Sequence[str] | None = None,
    attack: str = "pgd",
    eps: Sequence[str | float] | None = None,
    steps: int = 10,
    step_size: float | None = None,
    restarts: int = 1,
    loss: str = "ce",
    targeted: bool = False,
    decision: str = "vote",
    cw_distortion: bool = False,
    kappa: Sequence[float] | None = None,
    cw_c: float = 1.0,
    cw_steps: int = 1000,
    cw_lr: float = 0.1,
    cw_search_steps: int = 0,
    n: int | None = None,
    dataset: str | None = None,
    data_dir: PathLike | None = None,
    batch_size: int = 500,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    artifacts: PathLike | None = None,
    progress: Reporter | None = None,
) -> pd.DataFrame:
    """Adversarials crafted on ``source`` (``member:k``, ``ensemble`` or ``all`` members)
    scored on every member and on the ensemble (Table 4; schema ``transfer``), or with
    ``cw_distortion`` the adaptive CW-L2 distortion per source and ``kappa`` (Table 5;
    schema ``cw-distortion``). ``n`` defaults to 1000 (100 with ``cw_distortion``)."""
    tr.check_attack(attack)
    _check_batch(batch_size)
    if dataset:
        dataset_info(dataset)
    eps_given = parse_eps_list(eps) if eps else None
    dev = resolve_device(device)
    store = Store(artifacts)
    r = open_run(run, store)
    if dataset and dataset != r.dataset:
        raise DmlError(f"{r.name} was trained on {r.dataset}, not {dataset}")
    _check_decision(decision, r.num_members)
    sources = tr.resolve_sources(
        _list(source) or (["ensemble", "all"] if cw_distortion else ["member:1"]), r.num_members
    )
    eps_values = eps_given or [parse_eps(dataset_info(r.dataset).transfer_eps)]
    n = n if n is not None else (100 if cw_distortion else 1000)
    images, labels, indices = _test_data(r, n, seed, data_dir)
    jobs = []
    if cw_distortion:
        for kap in list(kappa) if kappa else [0.0]:
            params = tr.cw_params(cw_c, kap, cw_steps, cw_lr, targeted, cw_search_steps)
            jobs += [(s, "cw", params) for s in sources]
    else:
        for e in eps_values:
            params = tr.attack_params(attack, e, steps, restarts, loss, targeted, step_size)
            jobs += [(s, attack, params) for s in sources]
    built = [
        tr.transfer_job(
            r,
            s,
            a,
            p,
            images,
            labels,
            indices,
            seed=seed,
            decision=decision,
            batch_size=batch_size,
            device=dev,
            cw=cw_distortion,
        )  # fmt: skip
        for s, a, p in jobs
    ]
    r.model.to(dev)
    return _rows(run_jobs(store, built, force=force, progress=progress))


# -- clever -----------------------------------------------------------------------------------
def clever(
    run: str,
    *,
    n: int = 1000,
    norm: str = "2",
    radius: float = 2.0,
    nb_batches: int = 500,
    batch_size: int = 1024,
    pool_factor: int = 10,
    target: str = "sum",
    c_init: float | Sequence[float] | None = None,
    grad_batch: int = 512,
    data_dir: PathLike | None = None,
    part_size: int = 10,
    shard: str | None = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    artifacts: PathLike | None = None,
    progress: Reporter | None = None,
) -> pd.DataFrame:
    """Untargeted CLEVER scores (Weng et al. 2018) of ``target`` per sample (Fig. 1, 7, 8;
    schema ``clever``); the result's metadata holds the DML head's Lipschitz bounds.
    ``c_init``: the Weibull shape start(s) of the fit, the best (KS p-value) kept; default
    Weng et al.'s ``0.1 1 5 10 20 50 100``."""
    shard_of = _part_options(shard, part_size)
    starts = cl.SHAPE_STARTS if c_init is None else c_init
    settings = cl.CleverSettings(
        norm=cl.parse_norm(norm), radius=radius, nb_batches=nb_batches,
        batch_size=batch_size, pool_factor=pool_factor, c_init=starts, grad_batch=grad_batch,
    ).validate()  # fmt: skip
    dev = resolve_device(device)
    store = Store(artifacts)
    r = open_run(run, store)
    cl.ScoredModel(r.model, target)  # checks the target
    images, labels, indices = _test_data(r, n, seed, data_dir)
    job = cl.clever_job(
        r, images, labels, indices, settings, target=target, seed=seed, part_size=part_size,
        device=dev,
    )  # fmt: skip
    return _rows(run_jobs(store, [job], force=force, shard=shard_of, progress=progress))


def _part_options(shard: str | None, part_size: int):
    if part_size < 1:
        raise DmlError(f"--part-size must be at least 1; got {part_size}")
    return parse_shard(shard)


# -- certify ----------------------------------------------------------------------------------
def certify(
    run: str,
    *,
    sigma: float = 0.25,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    n_samples: int = 500,
    decision: str = "vote",
    head: str | None = None,
    head_sigma: float | None = None,
    head_samples: int | None = None,
    predict_n: int = 1000,
    batch_size: int = 1000,
    data_dir: PathLike | None = None,
    part_size: int = 10,
    shard: str | None = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    artifacts: PathLike | None = None,
    progress: Reporter | None = None,
) -> pd.DataFrame:
    """Randomized-smoothing CERTIFY and PREDICT (Cohen et al. 2019) of the ``decision`` on
    ``n_samples`` samples (A.9, Fig. 14-16; schema ``certify``); ``head`` evaluates the same
    weights behind another DML head (e.g. R-DML with ``head_sigma``)."""
    shard_of = _part_options(shard, part_size)
    settings = ce.CertifySettings(
        sigma=sigma, n0=n0, n=n, alpha=alpha, predict_n=predict_n, batch_size=batch_size
    ).validate()
    if (head_sigma is not None or head_samples is not None) and head is None:
        raise DmlError("--head-sigma/--head-samples only apply with --head dml|rdml|augdml")
    dev = resolve_device(device)
    store = Store(artifacts)
    r = open_run(run, store)
    trained = r.model.config.head if hasattr(r.model, "config") else None
    if head is not None:
        if not hasattr(r.model, "with_head"):
            raise DmlError(f"--head: {r.name} has no DML head to swap")
        r = Run(r.name, r.model.with_head(head, head_sigma, head_samples), r.checkpoint,
                r.dataset, r.meta, r.path)  # fmt: skip
    images, labels, indices = _test_data(r, n_samples, seed, data_dir)
    job = ce.certify_job(
        r, images, labels, indices, settings, decision=decision, seed=seed,
        part_size=part_size, device=dev, trained_head=trained,
    )  # fmt: skip
    return _rows(run_jobs(store, [job], force=force, shard=shard_of, progress=progress))


# -- geometry ---------------------------------------------------------------------------------
def geometry(
    run: str,
    *,
    gradients: bool = False,
    surface: bool = False,
    n: int = 1000,
    surface_samples: int = 3,
    grid: int = 21,
    r_max: float = 0.1,
    theta_max: float = 0.1,
    noise_std: float = 0.05,
    direction: str = "sign",
    batch_size: int = 256,
    data_dir: PathLike | None = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    artifacts: PathLike | None = None,
    progress: Reporter | None = None,
) -> pd.DataFrame:
    """Cosine of members' input gradients per pair (``gradients``, A.7, Fig. 9-11) and loss
    surfaces around samples (``surface``, Fig. 2, 17); both when neither is asked for."""
    if not gradients and not surface:
        gradients = surface = True
    settings = geo.SurfaceSettings(grid, r_max, theta_max, noise_std, direction).validate()
    _check_batch(batch_size)
    if surface and surface_samples < 1:
        raise DmlError(f"--surface-samples must be at least 1; got {surface_samples}")
    dev = resolve_device(device)
    store = Store(artifacts)
    r = open_run(run, store)
    jobs = []
    if gradients:
        images, labels, indices = _test_data(r, n, seed, data_dir)
        jobs.append(geo.geometry_job(r, "gradients", images, labels, indices, seed=seed,
                                     batch_size=batch_size, device=dev))  # fmt: skip
    if surface:
        images, labels = load_dataset(r.dataset, "test", data_dir or r.data_dir,
                                      image_size=r.image_size)  # fmt: skip
        if surface_samples > len(labels):
            raise DmlError(
                f"--surface-samples {surface_samples} is larger than the test set "
                f"({len(labels)} samples)"
            )
        _, _, indices = _test_data(r, surface_samples, seed, data_dir)
        job = geo.geometry_job(r, "surface", images, labels, indices, seed=seed,
                               settings=settings, batch_size=batch_size, device=dev)  # fmt: skip
        jobs.append(job)
    return _rows(run_jobs(store, jobs, force=force, progress=progress))


# -- detect -----------------------------------------------------------------------------------
DETECT_ATTACKS = ("fgsm", "pgd", "adaptive")
RANDOM_DRAWS = 10  # forward passes per input of a randomized head when --draws is not given


def detect(
    run: str,
    *,
    method: str = "vote",
    attack: Sequence[str] | None = None,
    fit_attack: Sequence[str] | None = None,
    eps: str | float = "0.3",
    n: int = 1000,
    nu: int | None = None,
    draws: int | None = None,
    noise_sigma: float = 0.1,
    steps: int = 40,
    step_size: str | float | None = None,
    adaptive_loss: str = "ce",
    adaptive_targets: int = 3,
    fpr: float = 0.05,
    var_weight: float = 1.0,
    eot: int | None = None,
    head: str | None = None,
    head_sigma: float | None = None,
    head_samples: int | None = None,
    batch_size: int = 500,
    shard: str | None = None,
    data_dir: PathLike | None = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    artifacts: PathLike | None = None,
    progress: Reporter | None = None,
) -> pd.DataFrame:
    """Adversary detection by member disagreement (``vote``, Eq. 8) or uncertainty and a
    logistic regression (A.5.1), against FGSM, PGD and an adaptive attack that knows the
    detector. The regression is fit once on the fit half (benign + noisy vs the adversarials
    of ``fit_attack``, default fgsm and pgd, crafted even when not in ``attack``), frozen, and
    every attack (the adaptive one included) is scored against it on the eval half. One
    ``detect`` result holds the rows of every attack, one ``detect-roc`` result their ROC
    points; the rows of the ``detect`` result are returned. ``attrs['nu']`` and
    ``attrs['fpr']`` are the operating points the command prints (``results.detect_nu_table``
    and ``results.detector_table``), ``attrs['aucs']`` the AUC per attack."""
    if parse_shard(shard) is not None:
        raise DmlError(
            "dml detect cannot be sharded: its detector is fit on every sample; run it in one "
            "process (unset WORLD_SIZE under torchrun); an interrupted run resumes its batches"
        )
    attacks = det.check_attacks(_list(attack) or list(DETECT_ATTACKS))
    fit_attacks = det.check_fit_attacks(_list(fit_attack) or list(det.FIT_ATTACKS))
    results.check_fpr(fpr)
    eps_value = parse_eps(eps)
    step_value = parse_eps(step_size) if step_size is not None else None
    if (head_sigma is not None or head_samples is not None) and head is None:
        raise DmlError("--head-sigma/--head-samples only apply with --head rdml|augdml|dml")
    if n < 1:
        raise DmlError(f"--n must be at least 1; got {n}")
    dev = resolve_device(device)
    store = Store(artifacts)
    r = open_run(run, store)
    if head is not None:
        if not hasattr(r.model, "with_head"):
            raise DmlError(f"--head: {r.name} has no DML head to swap")
        r = Run(r.name, r.model.with_head(head, head_sigma, head_samples), r.checkpoint,
                r.dataset, r.meta, r.path)  # fmt: skip
    k = r.num_members
    nu = det.check_nu(nu if nu is not None else det.default_nu(k), k)
    det.check_method(method, k, r.randomized)
    if draws is not None and draws < 1:
        raise DmlError(f"--draws must be at least 1; got {draws}")
    notes = []
    if method != "uncertainty" and fit_attack is not None:
        notes.append("--fit-attack applies to --method uncertainty only; the vote fits nothing")
    if not r.randomized:
        if draws not in (None, 1):
            notes.append("deterministic head: every draw is the same; --draws 1")
        draws = 1
    draws = draws or RANDOM_DRAWS
    settings = det.DetectSettings(
        method=method, eps=eps_value, draws=draws, noise_sigma=noise_sigma, seed=seed,
        steps=steps, step_size=step_value, adaptive_loss=adaptive_loss,
        adaptive_targets=adaptive_targets, var_weight=var_weight,
        eot=eot if eot is not None else draws, batch_size=batch_size,
        attacks=tuple(attacks), fit_attacks=tuple(fit_attacks),
    )  # fmt: skip
    settings.validate()
    for note in notes:
        (progress or Reporter()).note(note)
    cached = store.result_path("detect", r.name, det.detect_setting(r, settings, n))
    outcomes: list[Outcome] = []
    if force or not cached.is_file():
        images, labels, indices = _test_data(r, n, seed, data_dir)
        r.model.to(dev)
        x = images[indices].float().div_(255.0)
        data = det.prepare(r.model, x, labels[indices], indices.numpy(), settings)
        job = det.detect_job(r, data, settings, n)
        outcomes = run_jobs(store, [job], force=force, progress=progress)
    else:
        job = det.detect_job(r, det.Benign.empty(), settings, n)
        outcomes = run_jobs(store, [job], progress=progress)
    df = _rows(outcomes)
    df.attrs.update(nu=nu, fpr=fpr, method=method, eps=eps_value, attacks=attacks)
    df.attrs.update(fit_attacks=fit_attacks if method == "uncertainty" else [])
    df.attrs["aucs"] = dict(outcomes[0].meta.get("aucs", {}))
    return df


# -- the store --------------------------------------------------------------------------------
def report(
    store_dir: PathLike | None = None,
    *,
    format: Sequence[str] | None = None,  # noqa: A002 - the CLI's --format
    out: PathLike | None = None,
    artifacts: PathLike | None = None,
) -> pd.DataFrame:
    """Render the paper's tables and figures from the stored results (nothing is rerun) as
    markdown, HTML, LaTeX and/or RobustBench JSON; returns one row per table or figure
    (dataset, item, what was rendered, where or why not). ``attrs['files']``: what it wrote;
    ``attrs['problems']``: files it could not read."""
    from dmlcli.report import Skip, Table, render_report

    if store_dir is not None and artifacts is not None and Path(store_dir) != Path(artifacts):
        raise DmlError(f"two stores given: {store_dir} and --artifacts {artifacts}; give one")
    store = Store(store_dir or artifacts)
    rep, files = render_report(store, out, _list(format) or ["markdown"])
    rows = []
    for sec in rep.sections:
        for item in sec.items:
            if isinstance(item, Skip):
                rendered, detail = f"{item.kind}: skipped", item.reason
            elif isinstance(item, Table):
                rendered, detail = "table", f"{len(item.rows)} rows"
            else:
                rendered, detail = "figure", str(item.path)
            rows.append({"dataset": sec.dataset, "item": item.key, "rendered": rendered,
                         "detail": detail})  # fmt: skip
    df = pd.DataFrame(rows, columns=["dataset", "item", "rendered", "detail"])
    df.attrs.update(files=[str(f) for f in files], problems=list(rep.problems))
    return df


def merge(runs: Sequence[str] | None = None, *, artifacts: PathLike | None = None) -> pd.DataFrame:
    """Write the final results of sharded evaluations from their part files (every sample
    exactly once, checked before anything is written), then refresh the worst cases of every
    run that got attack results, exactly as an unsharded ``dml attack`` does; one row per
    part folder."""
    store = Store(artifacts)
    names = [validate_name(r) for r in _list(runs)]
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


def ls(
    *, stale: bool = False, remove_stale: bool = False, artifacts: PathLike | None = None
) -> pd.DataFrame:
    """The runs in the store (trained ones, and users' ensembles used through a model spec):
    name, dataset, K, head, defense, benign vote accuracy, date, results, and how many of those
    results are stale (computed from another checkpoint of the run, e.g. before a ``train
    --force`` or a changed weight of a spec, or of another schema version; never used by the
    worst case or the report).
    ``attrs['stale']`` lists the stale files; ``remove_stale`` deletes them."""
    store = Store(artifacts)
    rows: list[dict[str, Any]] = []
    old: list[Path] = []

    def row(name: str, digest: str, **info: Any) -> dict[str, Any]:
        files = store.list_results(run=name)
        mine = [p for p in files if _checkpoint_of(store, p) != digest]
        old.extend(mine)
        return {"run": name, **info, "results": len(files) - len(mine), "stale": len(mine)}

    for name in store.list_runs():
        try:
            config, meta = checkpoint_config(store.checkpoint_path(name))
            digest = read_tensor_digest(store.checkpoint_path(name))
        except DmlError as exc:
            rows.append({"run": name, "problem": str(exc)})
            continue
        benign = meta.get("benign", {}).get("vote")
        saved = str(meta.get("saved", ""))[:19]
        rows.append(row(name, digest, dataset=config.dataset, members=config.members,
                        head=config.head, defense=config.defense, vote=benign,
                        saved=saved))  # fmt: skip
    for name in store.list_spec_runs():  # users' ensembles: identity from the files now
        record = store.spec_record(name) or {}
        try:
            digest = spec_digest(read_spec(record.get("spec", store.spec_record_path(name))))
        except DmlError as exc:
            rows.append({"run": name, "problem": str(exc)})
            continue
        saved = str(record.get("recorded", ""))[:19]
        rows.append(row(name, digest, dataset=record.get("dataset"), members=record.get("members"),
                        head="user", defense="", vote=None, saved=saved))  # fmt: skip
    if remove_stale:
        for path in old:
            path.unlink(missing_ok=True)
    cols = ["run", "dataset", "members", "head", "defense", "vote", "saved", "results", "stale",
            "problem"]  # fmt: skip
    df = pd.DataFrame(rows, columns=cols)
    df["problem"] = df["problem"].astype(object).fillna("")
    df.attrs.update(stale=[str(p) for p in old], removed=remove_stale)
    return df


def _checkpoint_of(store: Store, path: Path) -> str | None:
    """The checkpoint digest a stored result was computed from (None if unreadable or of
    another schema version)."""
    try:
        return store.result_meta(path)["setting"].get("checkpoint")
    except DmlError:
        return None


# -- check ------------------------------------------------------------------------------------
def check(
    run: str,
    *,
    baseline: str | None = None,
    surrogate: str | None = None,
    eps: str | float | None = None,
    large_eps: str | float | None = None,
    n: int = 200,
    decision: str = "vote",
    steps: int = 20,
    restarts: int = 1,
    queries: int = 1000,
    eot: int = 10,
    batch_size: int = 500,
    data_dir: PathLike | None = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    artifacts: PathLike | None = None,
    progress: Reporter | None = None,
) -> pd.DataFrame:
    """Sanity checks for gradient masking and failed attacks (Carlini et al. 2019; AutoAttack's
    checks; Pintor et al. 2022) on ``n`` samples at ``eps`` (default: the dataset's first
    paper eps): iterative vs single-step, more budget, silent success and incomplete
    optimization (Pintor et al.'s indicators, from the loss trace of a PGD kept by loss), a
    large eps (default 4x the largest paper eps, at most 0.5) and the eps sweep, RayS on the
    decision (``queries`` per sample; and a transfer from ``surrogate``) vs the white-box
    attacks per sample, zero input gradients per surface, randomness and, with
    ``baseline``, that the attacks break an undefended model. One ``check`` result: one row
    per check (``status`` pass/warn/fail, ``value``, ``threshold``, ``detail``)."""
    from dmlcli.eval import check as chk

    if n < 1:
        raise DmlError(f"--n must be at least 1; got {n}")
    _check_batch(batch_size)
    eps_value = parse_eps(eps) if eps is not None else None
    large_value = parse_eps(large_eps) if large_eps is not None else None
    dev = resolve_device(device)
    store = Store(artifacts)
    r = open_run(run, store)
    info = dataset_info(r.dataset)
    eps_value = eps_value if eps_value is not None else parse_eps(info.paper_eps[0])
    if large_value is None:
        large_value = chk.default_large_eps(info, eps_value)
    settings = chk.CheckSettings(
        eps=eps_value, large_eps=large_value, decision=decision, steps=steps,
        restarts=restarts, queries=queries, eot=eot, batch_size=batch_size,
    ).validate()  # fmt: skip
    _check_decision(decision, r.num_members)
    others = {}
    for flag, ref in (("--baseline", baseline), ("--surrogate", surrogate)):
        other = open_run(ref, store) if ref else None
        if other is not None and other.dataset != r.dataset:
            raise DmlError(f"{flag} {other.name} was trained on {other.dataset}, not {r.dataset}")
        others[flag] = other
    images, labels, indices = _test_data(r, n, seed, data_dir)
    job = chk.check_job(
        r, images, labels, indices, settings, seed=seed, baseline=others["--baseline"],
        surrogate=others["--surrogate"], device=dev,
    )  # fmt: skip
    for m in (r, *others.values()):
        if m is not None:
            m.model.to(dev)
    df = _rows(run_jobs(store, [job], force=force, progress=progress))
    df.attrs.update(eps=settings.eps, large_eps=settings.large_eps, n=n, seed=seed)
    return df


# -- export -----------------------------------------------------------------------------------
def export(
    run: str,
    *,
    format: str = "csv",  # noqa: A002 - the CLI's --format
    kind: str | None = None,
    attack: str | None = None,
    out: PathLike | None = None,
    artifacts: PathLike | None = None,
) -> pd.DataFrame:
    """Write ``run``'s current results (of its checkpoint; stale ones never) in ``format``
    (:mod:`dmlcli.report.export`: ``csv`` any result, ``autoattack-log`` AutoAttack results,
    ``cohen-tsv`` certify results, ``adversarials`` the stored adversarial images), one file
    per result in ``out`` (default ``ARTIFACTS/exports/<run>``), optionally only results of
    ``kind`` or of attack label ``attack``. Returns one row per file: ``kind, label, rows,
    path``."""
    from dmlcli.report import export as exp

    store = Store(artifacts)
    fmt = exp.check_format(format)
    if kind is not None and kind not in results.list_kinds():
        raise DmlError(
            f"unknown result kind {kind!r}; choose one of {', '.join(results.list_kinds())}"
        )
    r = open_run(run, store)
    kinds = exp.KINDS[fmt] or ((kind,) if kind else tuple(results.list_kinds()))
    chosen = []
    for k in kinds:
        for path in store.list_results(k, r.name):
            setting = store.result_meta(path).get("setting") or {}
            if setting.get("checkpoint") != r.checkpoint:
                continue
            if attack is not None and setting.get("attack") != attack:
                continue
            if fmt == "autoattack-log" and setting.get("attack_name") != "autoattack":
                continue
            chosen.append((k, path, setting))
    if not chosen:
        what = f"{fmt} ({', '.join(kinds)})" + (f", attack {attack}" if attack else "")
        raise DmlError(f"{r.name} has no current results to export as {what} (dml ls lists them)")
    out_dir = Path(out) if out is not None else store.export_dir(r.name)
    rows = []
    for k, path, setting in chosen:
        df, meta = store.read_result(path)
        target = exp.export_result(df, meta, fmt, out_dir / (path.stem + exp.SUFFIX[fmt]))
        rows.append({"kind": k, "label": str(setting.get("attack") or path.stem), "rows": len(df),
                     "path": str(target)})  # fmt: skip
    frame = pd.DataFrame(rows, columns=["kind", "label", "rows", "path"])
    frame.attrs["run"] = r.name
    return frame


# -- compare ----------------------------------------------------------------------------------
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
    names = _list(runs)
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
        return _compare_pair(a, b, frames[a], frames[b], e, seed, reps, level)

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
        rows += _over_seeds(base, other, e, per_seed, len(common))
    if not rows:
        raise DmlError(f"no stored attack results at eps {eps} to compare (dml attack first)")
    return pd.DataFrame(rows)


def _compare_pair(
    a: str, b: str, frames_a: dict[str, pd.DataFrame], frames_b: dict[str, pd.DataFrame],
    e: float, seed: int, reps: int, level: str,
) -> list[dict[str, Any]]:  # fmt: skip
    """The rows of :func:`compare` for runs ``a`` and ``b`` from their :func:`_compared`
    frames (one row per measure)."""
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


def _over_seeds(
    a: str, b: str, e: float, per_seed: list[dict[str, Any]], k: int
) -> list[dict[str, Any]]:
    """Per measure, the per-seed rows summarised over the seeds: mean accuracies, the mean
    difference with its Student-t 95% CI and the paired t-test's two-sided p-value."""
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
        for path, meta in _current_attacks(store, r).values()
        if rob.worst_case_key(meta["setting"]) == key
    ]
    paper = [df for df in frames if results.paper_protocol(df)]
    if paper:
        out["paper protocol"] = results.worst_case(paper)
    return out
