"""``dml attack``: white-box suites (paper, AutoAttack, adaptive) -> per-sample parquet rows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dmlcli.cli.common import (
    ArtifactsOpt,
    DeviceOpt,
    ForceOpt,
    SeedOpt,
    console,
    format_eps,
    open_store,
    parse_eps,
    progress,
    resolve_device,
    summary,
)
from dmlcli.errors import DmlError

# The paper's eps per dataset when --eps is not given (Tables 2-3).
DEFAULT_EPS = {
    "digits": ("0.2", "0.3"),
    "mnist": ("0.2", "0.3"),
    "fashion-mnist": ("0.2", "0.3"),
    "cifar10": ("0.015", "0.031"),
    "resisc45": ("0.015", "0.031"),
}
SUITE_CHOICES = ("paper", "autoattack", "adaptive", "all")


def command(
    checkpoints: Annotated[
        list[str], typer.Argument(help="Run names, run folders or .safetensors files.")
    ],
    suite: Annotated[
        list[str] | None,
        typer.Option(help="paper, autoattack, adaptive or all (repeatable; default paper)."),
    ] = None,
    attack: Annotated[
        list[str] | None,
        typer.Option(help="Run this attack (fgsm, bim, pgd, apgd-ce, apgd-dlr, cw, autoattack)."),
    ] = None,
    eps: Annotated[
        list[str] | None, typer.Option(help="L-inf budget(s) in pixels: 8/255, 0.1 (repeatable).")
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Evaluation samples (seeded subset).")] = 1000,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset the checkpoints must have been trained on.")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Folder with the dataset's files.")] = None,
    decision: Annotated[
        list[str] | None,
        typer.Option(help="Decision scored: vote (paper), meta-vote, sum, member:k (repeatable)."),
    ] = None,
    surface: Annotated[
        list[str] | None,
        typer.Option(
            help="Surface(s) of --attack (default sum) and of the adaptive suite (default all)."
        ),
    ] = None,
    loss: Annotated[str | None, typer.Option(help="--attack loss: ce, cw, dlr or logit.")] = None,
    steps: Annotated[int | None, typer.Option(help="--attack steps.")] = None,
    step_size: Annotated[float | None, typer.Option(help="--attack step size.")] = None,
    restarts: Annotated[int | None, typer.Option(help="--attack restarts.")] = None,
    norm: Annotated[str | None, typer.Option(help="--attack norm: linf or l2.")] = None,
    targeted: Annotated[
        bool, typer.Option(help="--attack targeted at random wrong labels.")
    ] = False,
    pgd_restarts: Annotated[int, typer.Option(help="Restarts of PGD-20/40 (paper).")] = 5,
    cw_c: Annotated[float, typer.Option(help="CW penalty constant c (paper's gamma).")] = 1.0,
    cw_steps: Annotated[int, typer.Option(help="CW Adam steps (paper: 200).")] = 200,
    cw_lr: Annotated[float, typer.Option(help="CW Adam learning rate.")] = 0.01,
    cw_kappa: Annotated[float, typer.Option(help="CW confidence kappa.")] = 0.0,
    cw_search_steps: Annotated[
        int, typer.Option(help="CW binary-search rounds over c (0: the paper's fixed c).")
    ] = 0,
    apgd_steps: Annotated[int, typer.Option(help="APGD iterations (adaptive).")] = 100,
    apgd_restarts: Annotated[int, typer.Option(help="APGD restarts (adaptive).")] = 1,
    eot: Annotated[int, typer.Option(help="EOT draws on randomized heads.")] = 20,
    aa_version: Annotated[
        str, typer.Option(help="AutoAttack version: auto, standard, plus, rand, custom.")
    ] = "auto",
    aa_attack: Annotated[
        list[str] | None, typer.Option(help="AutoAttack custom attacks (repeatable).")
    ] = None,
    aa_steps: Annotated[int, typer.Option(help="AutoAttack APGD iterations.")] = 100,
    square_queries: Annotated[int, typer.Option(help="AutoAttack Square queries.")] = 5000,
    surrogate: Annotated[
        str | None, typer.Option(help="Adaptive: transfer from this run (e.g. a baseline).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per attack batch.")] = 500,
    shard: Annotated[
        str | None,
        typer.Option(help="Compute only shard i/n of the batches (default: torchrun's RANK)."),
    ] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Attack trained ensembles; one parquet row per (sample, attack setting).

    Every batch is kept as a part file as soon as it is done: after Ctrl-C or a kill, the
    same command computes only the missing batches. '--shard i/n' computes the i-th block
    of batches only; 'dml merge' then writes the results.
    """
    from dmlcli.data import dataset_info, eval_indices, load_dataset
    from dmlcli.eval import robustness as rob
    from dmlcli.eval.parts import exit_on_interrupt, parse_shard, rank_device
    from dmlcli.store import load_ensemble

    shard_of = parse_shard(shard)

    suites = list(suite or ([] if attack else ["paper"]))
    for s in suites:
        if s not in SUITE_CHOICES:
            raise DmlError(f"unknown suite {s!r}; choose one of {', '.join(SUITE_CHOICES)}")
    if "all" in suites:
        suites = list(rob.SUITES)
    if batch_size < 1:
        raise DmlError("--batch-size must be at least 1")
    if dataset:
        dataset_info(dataset)
    from dmlcli.attacks import list_attacks

    for name in attack or []:
        if name not in list_attacks():
            raise DmlError(f"unknown attack {name!r}; choose one of {', '.join(list_attacks())}")
    budgets = rob.Budgets(
        pgd_restarts=pgd_restarts,
        cw_c=cw_c,
        cw_steps=cw_steps,
        cw_lr=cw_lr,
        cw_kappa=cw_kappa,
        cw_search_steps=cw_search_steps,
        apgd_steps=apgd_steps,
        apgd_restarts=apgd_restarts,
        eot=eot,
        aa_version="custom" if aa_attack and aa_version == "auto" else aa_version,
        aa_attacks=tuple(aa_attack or ()),
        aa_steps=aa_steps,
        square_queries=square_queries,
        surfaces=tuple(surface or ()),
    )
    budgets.validate()
    eps_values = [parse_eps(e) for e in eps] if eps else None
    dev = resolve_device(rank_device(device))
    store = open_store(artifacts)

    models = []
    for ref in checkpoints:
        path = store.resolve_checkpoint(ref)
        models.append((store.run_name_of(path), load_ensemble(path)))
    datasets = {m.config["dataset"] for _, m in models}
    wanted = dataset or models[0][1].config["dataset"]
    for run, m in models:
        if m.config["dataset"] != wanted:
            raise DmlError(f"{run} was trained on {m.config['dataset']}, not {wanted}")
    if len(datasets) > 1:
        raise DmlError("all checkpoints must share one dataset")
    sur_model = None
    if surrogate:
        sur_path = store.resolve_checkpoint(surrogate)
        sur_model = load_ensemble(sur_path)
        surrogate = store.run_name_of(sur_path)
        if sur_model.config["dataset"] != wanted:
            raise DmlError(f"--surrogate {surrogate} was trained on {sur_model.config['dataset']}")
    if eps_values is None:
        eps_values = [parse_eps(e) for e in DEFAULT_EPS[wanted]]
    image_size = models[0][1].config["image_size"]
    images, labels = load_dataset(wanted, "test", data_dir, image_size=image_size)
    indices = eval_indices(len(labels), n, seed)
    options = {
        "steps": steps,
        "step_size": step_size,
        "restarts": restarts,
        "loss": loss,
        "norm": norm,
        "targeted": targeted or None,
    }

    # Every spec of every model is built and checked before any attack runs.
    plans = []
    for run, m in models:
        specs = _specs(
            rob,
            suites,
            attack or [],
            eps_values,
            options,
            budgets,
            surface or [],
            decision or ["vote"],
            m,
            surrogate,
        )
        for spec in specs:
            rob.Objective(m, spec.surface, spec.decision, spec.eot)
            spec.build(seed)
        plans.append((run, m, specs))

    tables, files, warnings = {}, [], []
    with exit_on_interrupt(), progress() as bar:
        for run, m, specs in plans:
            m.to(dev)
            context = {"run": run, "checkpoint": m.digest, "dataset": wanted, "n": n, "seed": seed}
            sur = sur_model.to(dev) if sur_model is not None else None
            results, rows = [], tables.setdefault(run, [])
            for spec in specs:
                df, status, path, warns = _run_one(
                    bar, store, rob, m, spec, context, images, labels, indices, seed,
                    batch_size, dev, sur, force, shard_of,
                )  # fmt: skip
                results.append((spec, df))
                files.append((path, status))
                where = "" if spec.eps is None else f" eps {format_eps(spec.eps)}"
                warnings += [f"{run} {spec.label}{where}: {w}" for w in warns]
                rows.append(_table_row(spec, df, status))
            if "adaptive" in suites and shard_of is None:
                for spec, df, status, path in _worst_cases(store, rob, results, context, force):
                    files.append((path, status))
                    rows.append(_table_row(spec, df, status))
            for decision in dict.fromkeys(spec.decision for spec, _ in results):
                df = next(d for spec, d in results if spec.decision == decision)
                clean = 100.0 * df["clean_correct"].mean()
                rows.insert(0, ["clean", "-", decision, "-", clean, "-", ""])
            m.cpu()
    for w in warnings:
        console.print(f"[yellow]autoattack warning[/yellow] {w}")
    columns = ["attack", "surface", "decision", "eps", "acc %", "s", "status"]
    new = [path for path, status in files if status == "new"]
    for i, (run, rows) in enumerate(tables.items()):
        title = f"{run}: robust accuracy on {n} {wanted} test samples (seed {seed})"
        summary(title, columns, rows, new if i == len(tables) - 1 else [])
    if shard_of is not None:
        console.print(
            f"shard {shard_of}: batches kept in {store.root / 'results'}/<run>/.parts; "
            f"run `dml merge --artifacts {store.root}` once every shard is done",
            soft_wrap=True,
        )
        return
    cached = len(files) - len(new)
    if cached:
        console.print(f"{cached} result(s) were already in {store.root} (--force recomputes)")


def _specs(
    rob, suites, names, eps_values, options, budgets, surfaces, decisions, model, surrogate
) -> list:
    specs = []
    k, randomized = model.num_members, model.randomized
    for decision in decisions:
        specs += rob.custom_specs(
            names, eps_values, options, budgets, surfaces, decision, randomized
        )
        if "paper" in suites:
            specs += rob.paper_suite(eps_values, budgets, decision)
        if "autoattack" in suites:
            specs += rob.autoattack_suite(eps_values, budgets, decision, randomized)
        if "adaptive" in suites:
            specs += rob.adaptive_suite(eps_values, budgets, decision, k, randomized, surrogate)
    return specs


def _run_one(
    bar,
    store,
    rob,
    model,
    spec,
    context,
    images,
    labels,
    indices,
    seed,
    batch_size,
    device,
    surrogate,
    force,
    shard=None,
) -> tuple[Any, str, Path, list[str]]:
    """Run ``spec`` on ``model`` batch by batch (kept as part files), or read its stored
    result: (rows, status, path, warnings). A shard returns its own rows only."""
    import pandas as pd
    import torch

    from dmlcli.attacks import random_targets
    from dmlcli.cli.common import format_eps
    from dmlcli.eval.parts import Parts, finalize, run_batches
    from dmlcli.store import read_parquet

    attack = spec.build(seed)
    setting = rob.setting_of(spec, attack, context)
    if spec.surrogate:
        setting["surrogate_checkpoint"] = surrogate.digest
    run = context["run"]
    path = store.result_path("attack", run, setting)
    if path.is_file() and not force:
        df, meta = read_parquet(path)
        return df, "cached", path, meta.get("warnings", [])
    targets = None
    if getattr(attack, "targeted", False):
        gen = torch.Generator().manual_seed(seed)
        targets = random_targets(labels[indices], model.num_classes, gen)
    eps = "-" if spec.eps is None else format_eps(spec.eps)
    parts = Parts.for_result(
        store,
        "attack",
        run,
        setting,
        indices.tolist(),
        batch_size,
        {"batch_size": batch_size},
        result_sides={"examples": {"kind": "adv-examples", "head": rob.EXAMPLES}},
        columns=["label", "clean_correct", "robust", "seconds"],
        sides=["examples"],
        label=f"{spec.label} {spec.surface} eps {eps}",
    )
    mine = parts.batches_of(shard)
    parts.prepare(force, mine)
    task = bar.add_task(
        f"{run} {spec.label} {spec.surface} eps {eps}", total=parts.rows_of(mine), info=""
    )
    state = {"done": 0, "robust": 0, "batches": 0}
    frames: list[pd.DataFrame] = []

    def compute(b: int, start: int, stop: int) -> tuple[dict, dict]:
        rows, examples, warns = rob.attack_batch(
            model, spec, images, labels, indices, start, stop, seed=seed,
            batch_size=batch_size, device=device,
            surrogate=surrogate if spec.surrogate else None, targets=targets,
        )  # fmt: skip
        df = rob.describe(pd.DataFrame(rows), spec, attack, context)
        return {"part": df, "examples": pd.DataFrame(examples)}, {"warnings": warns}

    def on_batch(b: int, got: dict) -> None:
        df = got["part"]
        frames.append(df)
        state["done"] += len(df)
        state["robust"] += int(df["robust"].sum())
        state["batches"] += 1
        info = f"batch {state['batches']}/{len(mine)} robust "
        bar.update(
            task,
            completed=state["done"],
            info=info + f"{100.0 * state['robust'] / state['done']:.1f}%",
        )

    run_batches(parts, compute, shard=shard, on_batch=on_batch)
    if shard is not None:
        df = (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame({"clean_correct": [], "robust": [], "seconds": []})
        )
        return df, f"shard {shard}", parts.folder, []
    finalize(store, parts)
    df, meta = read_parquet(path)
    return df, "new", path, meta.get("warnings", [])


def _worst_cases(store, rob, results, context, force) -> list:
    """Per-sample worst case over the eps-bounded attacks of each (eps, decision)."""
    from dmlcli.store import read_parquet

    groups: dict[tuple, list] = {}
    for spec, df in results:
        if spec.eps is not None and df["norm"].iloc[0] == "linf":
            groups.setdefault((spec.eps, spec.decision), []).append((spec, df))
    out = []
    for (eps, decision), members in groups.items():
        spec = rob.AttackSpec(
            "worst-case", "worst-case", {"eps": eps}, "-", decision, 1, "worst-case"
        )
        setting = {
            **context,
            "attack": "worst-case",
            "eps": eps,
            "norm": "linf",
            "decision": decision,
            "components": sorted(f"{s.label}|{s.surface}|{s.surrogate}" for s, _ in members),
        }
        path = store.result_path("attack", context["run"], setting)
        if path.is_file() and not force:
            df, _ = read_parquet(path)
            out.append((spec, df, "cached", path))
            continue
        df = rob.worst_case([d for _, d in members])
        store.write_result(
            "attack", context["run"], setting, df, {"components": setting["components"]}
        )
        out.append((spec, df, "new", path))
    return out


def _table_row(spec, df, status: str) -> list:
    from dmlcli.eval.robustness import robust_accuracy

    _, robust = robust_accuracy(df)
    eps = "L2" if spec.eps is None else format_eps(spec.eps)
    surface = spec.surface if not spec.surrogate else f"{spec.surrogate}"
    return [spec.label, surface, spec.decision, eps, robust, f"{df['seconds'].sum():.1f}", status]
