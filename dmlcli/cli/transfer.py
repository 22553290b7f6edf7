"""``dml transfer``: attacks crafted on one member (or the ensemble) scored on all (Table 4);
``--cw-distortion``: the adaptive CW-L2 distortion per member and for the ensemble (Table 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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

# Table 4's eps per dataset when --eps is not given.
DEFAULT_EPS = {
    "digits": "0.2",
    "mnist": "0.2",
    "fashion-mnist": "0.2",
    "cifar10": "0.015",
    "resisc45": "0.015",
}
TRANSFER_ATTACKS = ("fgsm", "bim", "pgd", "apgd-ce", "apgd-dlr")


def command(
    checkpoint: Annotated[str, typer.Argument(help="Run name, run folder or .safetensors file.")],
    source: Annotated[
        list[str] | None,
        typer.Option(
            help="ensemble, member:k or all (every member); repeatable. Default member:1."
        ),
    ] = None,
    attack: Annotated[str, typer.Option(help="fgsm, bim, pgd, apgd-ce or apgd-dlr.")] = "pgd",
    eps: Annotated[
        list[str] | None, typer.Option(help="L-inf budget(s): 0.2, 8/255 (repeatable).")
    ] = None,
    steps: Annotated[int, typer.Option(help="Attack steps (PGD-10 in Table 4).")] = 10,
    step_size: Annotated[
        float | None, typer.Option(help="Step size (default 2.5 eps/steps).")
    ] = None,
    restarts: Annotated[int, typer.Option(help="Restarts.")] = 1,
    loss: Annotated[str, typer.Option(help="ce, cw, dlr or logit.")] = "ce",
    targeted: Annotated[
        bool, typer.Option(help="Targeted at random wrong labels (Table 4, 'Targeted').")
    ] = False,
    decision: Annotated[
        str, typer.Option(help="Ensemble decision: vote, meta-vote, sum.")
    ] = "vote",
    cw_distortion: Annotated[
        bool, typer.Option(help="Run the adaptive CW-L2 distortion study (Table 5) instead.")
    ] = False,
    kappa: Annotated[
        list[float] | None, typer.Option(help="CW confidence(s) (repeatable; default 0).")
    ] = None,
    cw_c: Annotated[float, typer.Option(help="CW penalty constant (paper's gamma).")] = 1.0,
    cw_steps: Annotated[int, typer.Option(help="CW Adam steps (Table 5: 1000).")] = 1000,
    cw_lr: Annotated[float, typer.Option(help="CW Adam learning rate (Table 5: 0.1).")] = 0.1,
    cw_search_steps: Annotated[
        int, typer.Option(help="CW binary-search rounds over c (0: the paper's fixed c).")
    ] = 0,
    n: Annotated[
        int | None, typer.Option("--n", help="Samples (default 1000; 100 with --cw-distortion).")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset the checkpoint must have been trained on.")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Folder with the dataset's files.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per attack batch.")] = 500,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Transfer of adversarials between members (Table 4) or CW-L2 distortion (Table 5)."""
    import pandas as pd
    import torch

    from dmlcli.attacks import create_attack, random_targets
    from dmlcli.data import dataset_info, eval_indices, load_dataset
    from dmlcli.eval import transfer as tr
    from dmlcli.models.aggregate import list_decisions
    from dmlcli.store import load_ensemble, read_parquet

    if attack not in TRANSFER_ATTACKS:
        raise DmlError(
            f"unknown transfer attack {attack!r}; choose one of {', '.join(TRANSFER_ATTACKS)}"
        )
    if batch_size < 1:
        raise DmlError("--batch-size must be at least 1")
    if dataset:
        dataset_info(dataset)
    eps_given = [parse_eps(e) for e in eps] if eps else None
    kappas = list(kappa) if kappa else [0.0]
    dev = resolve_device(device)
    store = open_store(artifacts)
    path = store.resolve_checkpoint(checkpoint)
    run = store.run_name_of(path)
    model = load_ensemble(path)
    data = model.config["dataset"]
    if dataset and dataset != data:
        raise DmlError(f"{run} was trained on {data}, not {dataset}")
    choices = list_decisions(model.num_members)
    if decision not in choices:
        raise DmlError(f"unknown decision {decision!r}; choose one of {', '.join(choices)}")
    sources = tr.resolve_sources(
        source or (["ensemble", "all"] if cw_distortion else ["member:1"]), model.num_members
    )
    eps_values = eps_given or [parse_eps(DEFAULT_EPS[data])]
    n = n if n is not None else (100 if cw_distortion else 1000)
    images, labels = load_dataset(data, "test", data_dir, image_size=model.config["image_size"])
    indices = eval_indices(len(labels), n, seed)
    targets = None
    if targeted:
        targets = random_targets(
            labels[indices], model.num_classes, torch.Generator().manual_seed(seed)
        )
    context = {
        "run": run,
        "checkpoint": model.digest,
        "dataset": data,
        "n": n,
        "seed": seed,
        "decision": decision,
        "targeted": targeted,
    }
    if cw_distortion:
        jobs = []
        for kap in kappas:
            params = {"c": cw_c, "kappa": kap, "steps": cw_steps, "lr": cw_lr, "targeted": targeted}
            if cw_search_steps:  # absent at 0: results stored before the search keep their key
                params["search_steps"] = cw_search_steps
            create_attack("cw", **params)  # validates before any work
            jobs += [(s, kap, params) for s in sources]
    else:
        jobs = []
        for e in eps_values:
            params = tr.attack_params(attack, e, steps, restarts, loss, targeted, step_size)
            jobs += [(s, e, params) for s in sources]

    model.to(dev)
    frames, files, statuses = [], [], []
    kind = "cw-distortion" if cw_distortion else "transfer"
    with progress() as bar:
        for src, value, params in jobs:
            name = "cw" if cw_distortion else attack
            setting = {**context, "kind": kind, "source": src, "attack": name, "params": params}
            out = store.result_path(kind, run, setting)
            if out.is_file() and not force:
                df, _ = read_parquet(out)
                status = "cached"
            else:
                what = f"kappa {value:g}" if cw_distortion else f"eps {format_eps(value)}"
                task = bar.add_task(f"{run} {name} on {src} {what}", total=n, info="")

                def tick(done: int, task=task) -> None:
                    bar.update(task, completed=done)

                fn = tr.cw_rows if cw_distortion else tr.transfer_rows
                args = (params,) if cw_distortion else (name, params)
                df = fn(
                    model,
                    src,
                    *args,
                    images,
                    labels,
                    indices,
                    seed=seed,
                    decision=decision,
                    targets=targets,
                    batch_size=batch_size,
                    device=dev,
                    on_batch=tick,
                )
                tr.tag(df, run=run, checkpoint=model.digest, dataset=data, attack=name,
                       eps=params.get("eps"), kappa=params.get("kappa"), targeted=targeted,
                       decision=decision, seed=seed)  # fmt: skip
                store.write_result(kind, run, setting, df)
                status = "new"
            frames.append((src, value, df))
            files.append(out)
            statuses.append(status)
    mode = "targeted" if targeted else "untargeted"
    label = attack if attack == "fgsm" else f"{attack}-{steps}"
    if cw_distortion:
        search = f", searched {cw_search_steps} rounds" if cw_search_steps else ""
        rows = []
        for (src, kap, df), status in zip(frames, statuses, strict=True):
            acc, dist, fooled = tr.cw_summary(df)
            shown = "-" if dist != dist else dist  # nan: nothing was fooled
            rows.append([src, f"{kap:g}", acc, shown, fooled, len(df), status])
        summary(
            f"{run}: CW-L2 (c={cw_c:g}{search}, {cw_steps} steps, lr {cw_lr:g}), {mode}, n={n}",
            ["attacked", "kappa", "adv acc", "mean L2 (fooled)", "fooled %", "n", "status"],
            rows,
            files,
        )
        return
    for e in eps_values:
        df = pd.concat([d for _, v, d in frames if v == e])
        matrix = tr.transfer_matrix(df)
        cols = ["ensemble", *[f"member:{k}" for k in range(1, model.num_members + 1)]]
        benign = df.groupby("scored")["clean_correct"].mean() * 100.0
        rows = [["benign", *[float(benign[c]) for c in cols]]]
        rows += [[src, *[float(matrix.loc[src, c]) for c in cols]] for src in matrix.index]
        console.print()
        summary(
            f"{run}: {label} {mode} transfer, eps {format_eps(e)}, adversarial "
            f"accuracy (%) on {n} samples (rows: crafted on; columns: scored)",
            ["crafted on", *cols],
            rows,
            [],
        )
    for f in files:
        console.print(f"[dim]wrote[/dim] {f}")
