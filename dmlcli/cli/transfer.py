"""``dml transfer``: attacks crafted on one member (or the ensemble) scored on all (Table 4);
``--cw-distortion``: the adaptive CW-L2 distortion per member and for the ensemble (Table 5)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dmlcli import api
from dmlcli.cli.common import (
    ArtifactsOpt,
    DataDirOpt,
    DeviceOpt,
    ForceOpt,
    RunArg,
    SeedOpt,
    console,
    defaults,
    flag,
    reporter,
    results_of,
    summary,
)
from dmlcli.results import cw_summary, first, transfer_matrix
from dmlcli.units import format_eps

D = defaults(api.transfer)


def command(
    run: RunArg,
    source: Annotated[
        list[str] | None,
        typer.Option(
            help="ensemble, member:k or all (every member); repeatable. Default member:1."
        ),
    ] = D["source"],
    attack: Annotated[str, typer.Option(help="fgsm, bim, pgd, apgd-ce or apgd-dlr.")] = D["attack"],
    eps: Annotated[
        list[str] | None, typer.Option(help="L-inf budget(s): 0.2, 8/255 (repeatable).")
    ] = D["eps"],
    steps: Annotated[int, typer.Option(help="Attack steps (PGD-10 in Table 4).")] = D["steps"],
    step_size: Annotated[float | None, typer.Option(help="Step size (default 2.5 eps/steps).")] = D[
        "step_size"
    ],
    restarts: Annotated[int, typer.Option(help="Restarts.")] = D["restarts"],
    loss: Annotated[str, typer.Option(help="ce, cw, dlr or logit.")] = D["loss"],
    targeted: Annotated[
        bool, flag("Targeted at random wrong labels (Table 4, 'Targeted').", "--targeted")
    ] = D["targeted"],
    decision: Annotated[str, typer.Option(help="Ensemble decision: vote, meta-vote, sum.")] = D[
        "decision"
    ],
    cw_distortion: Annotated[
        bool, flag("Run the adaptive CW-L2 distortion study (Table 5) instead.", "--cw-distortion")
    ] = D["cw_distortion"],
    kappa: Annotated[
        list[float] | None, typer.Option(help="CW confidence(s) (repeatable; default 0).")
    ] = D["kappa"],
    cw_c: Annotated[float, typer.Option(help="CW penalty constant (paper's gamma).")] = D["cw_c"],
    cw_steps: Annotated[int, typer.Option(help="CW Adam steps (Table 5: 1000).")] = D["cw_steps"],
    cw_lr: Annotated[float, typer.Option(help="CW Adam learning rate (Table 5: 0.1).")] = D[
        "cw_lr"
    ],
    cw_search_steps: Annotated[
        int, typer.Option(help="CW binary-search rounds over c (0: the paper's fixed c).")
    ] = D["cw_search_steps"],
    n: Annotated[
        int | None, typer.Option("--n", help="Samples (default 1000; 100 with --cw-distortion).")
    ] = D["n"],
    dataset: Annotated[
        str | None, typer.Option(help="Dataset the checkpoint must have been trained on.")
    ] = D["dataset"],
    data_dir: DataDirOpt = D["data_dir"],
    batch_size: Annotated[int, typer.Option(help="Images per attack batch.")] = D["batch_size"],
    seed: SeedOpt = D["seed"],
    device: DeviceOpt = D["device"],
    force: ForceOpt = D["force"],
    artifacts: ArtifactsOpt = D["artifacts"],
) -> None:
    """Transfer of adversarials between members (Table 4) or CW-L2 distortion (Table 5)."""
    options = dict(locals())
    with reporter() as progress:
        df = api.transfer(**options, progress=progress)
    if cw_distortion:
        print_cw(df, cw_c, cw_steps, cw_lr, cw_search_steps)
    else:
        print_transfer(df, attack, steps)


def _mode(rows: Any) -> str:
    return "targeted" if bool(first(rows, "targeted")) else "untargeted"


def print_cw(df: Any, c: float, steps: int, lr: float, search: int) -> None:
    rows, run, mode = [], "", ""
    for r, part in results_of(df):
        acc, dist, fooled = cw_summary(part)
        shown = "-" if dist != dist else dist  # nan: nothing was fooled
        kappa = f"{float(first(part, 'kappa')):g}"
        rows.append([str(first(part, "source")), kappa, acc, shown, fooled, len(part), r["status"]])
        run, mode = r["run"], _mode(part)
    searched = f", searched {search} rounds" if search else ""
    title = f"{run}: CW-L2 (c={c:g}{searched}, {steps} steps, lr {lr:g}), {mode}, n={len(part)}"
    columns = ["attacked", "kappa", "adv acc", "mean L2 (fooled)", "fooled %", "n", "status"]
    summary(title, columns, rows, [r["path"] for r, _ in results_of(df)])


def print_transfer(df: Any, attack: str, steps: int) -> None:
    label = attack if attack == "fgsm" else f"{attack}-{steps}"
    run = df.attrs["results"][0]["run"]
    members = set(df["scored"]) - {"ensemble"}
    cols = ["ensemble", *sorted(members, key=lambda s: int(s.split(":")[1]))]
    for e, part in df.groupby("eps", sort=False):
        matrix = transfer_matrix(part)
        benign = part.groupby("scored")["clean_correct"].mean() * 100.0
        rows = [["benign", *[float(benign[c]) for c in cols]]]
        rows += [[src, *[float(matrix.loc[src, c]) for c in cols]] for src in matrix.index]
        n = int(part["sample"].nunique())
        console.print()
        summary(
            f"{run}: {label} {_mode(part)} transfer, eps {format_eps(float(e))}, adversarial "
            f"accuracy (%) on {n} samples (rows: crafted on; columns: scored)",
            ["crafted on", *cols],
            rows,
        )
    for r, _ in results_of(df):
        console.print(f"[dim]wrote[/dim] {r['path']}")
