"""``dml train``: train a DML ensemble (Eq. 3) or the cross-entropy baseline."""

from __future__ import annotations

from typing import Annotated

import typer

from dmlcli import api
from dmlcli.cli.common import (
    ArtifactsOpt,
    DataDirOpt,
    DeviceOpt,
    ForceOpt,
    SeedOpt,
    console,
    defaults,
    flag,
    reporter,
    summary,
)
from dmlcli.data import list_datasets
from dmlcli.defenses import list_defenses
from dmlcli.models.backbones import list_backbones
from dmlcli.runtime import world

D = defaults(api.train)


def command(
    dataset: Annotated[str, typer.Argument(help=", ".join(list_datasets()) + ".")],
    members: Annotated[int, typer.Option("--members", "-k", help="Ensemble size K.")] = D[
        "members"
    ],
    defense: Annotated[
        str | None,
        typer.Option(help=f"Training objective: {', '.join(list_defenses())} (default dml)."),
    ] = D["defense"],
    defense_arg: Annotated[
        list[str] | None,
        typer.Option(help="Override a defense hyperparameter, e.g. alpha=2 (repeatable)."),
    ] = D["defense_arg"],
    baseline: Annotated[bool, flag("Same as --defense baseline.", "--baseline")] = D["baseline"],
    head: Annotated[str, typer.Option(help="dml, rdml, augdml, linear or mmc.")] = D["head"],
    backbone: Annotated[
        str | None,
        typer.Option(help=f"Member backbone: {', '.join(list_backbones())} (dataset default)."),
    ] = D["backbone"],
    prior: Annotated[str | None, typer.Option(help="Initialise backbones from this run.")] = D[
        "prior"
    ],
    name: Annotated[str | None, typer.Option(help="Run name (default from the choices).")] = D[
        "name"
    ],
    epochs: Annotated[int | None, typer.Option(help="Epochs (dataset default).")] = D["epochs"],
    batch_size: Annotated[int | None, typer.Option(help="Batch size (dataset default).")] = D[
        "batch_size"
    ],
    optimizer: Annotated[str | None, typer.Option(help="sgd or adam (dataset default).")] = D[
        "optimizer"
    ],
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (dataset default).")] = D[
        "lr"
    ],
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = D["momentum"],
    weight_decay: Annotated[float, typer.Option(help="Weight decay.")] = D["weight_decay"],
    schedule: Annotated[str, typer.Option(help="none, cosine or step.")] = D["schedule"],
    augment: Annotated[str | None, typer.Option(help="none or crop-flip (dataset default).")] = D[
        "augment"
    ],
    m_mode: Annotated[str, typer.Option(help="diag (paper) or full (P^T P).")] = D["m_mode"],
    m_init: Annotated[str, typer.Option(help="Trainable M entries: uniform U(0,1) or fixed.")] = D[
        "m_init"
    ],
    m_fixed: Annotated[float, typer.Option(help="Value of the fixed M entries.")] = D["m_fixed"],
    centers: Annotated[str, typer.Option(help="identity or 1d (A.5).")] = D["centers"],
    diversity: Annotated[str, typer.Option(help="split (I_k, paper) or scaling (A.9.1).")] = D[
        "diversity"
    ],
    head_samples: Annotated[int, typer.Option(help="Monte-Carlo draws T of R-DML/AUG-DML.")] = D[
        "head_samples"
    ],
    head_sigma: Annotated[float, typer.Option(help="Noise std of R-DML/AUG-DML.")] = D[
        "head_sigma"
    ],
    gamma: Annotated[float, typer.Option(help="Weight of the orthogonality term (Eq. 3).")] = D[
        "gamma"
    ],
    beta: Annotated[float, typer.Option(help="Weight of the L1 term (Eq. 3).")] = D["beta"],
    adv_train: Annotated[str, typer.Option(help="none or fgsm (A.8).")] = D["adv_train"],
    adv_eps: Annotated[str, typer.Option(help="FGSM training eps, e.g. 10/255.")] = D["adv_eps"],
    eval_attack: Annotated[str, typer.Option(help="none or fgsm: robust accuracy per epoch.")] = D[
        "eval_attack"
    ],
    eval_eps: Annotated[str, typer.Option(help="Eps of --eval-attack.")] = D["eval_eps"],
    image_size: Annotated[int | None, typer.Option(help="Resize images (RESISC-45).")] = D[
        "image_size"
    ],
    data_dir: DataDirOpt = D["data_dir"],
    download: Annotated[
        bool,
        typer.Option(
            "--download/--no-download", help="Let torchvision download missing files.", metavar=""
        ),
    ] = D["download"],
    resume: Annotated[bool, flag("Continue from the run's last checkpoint.", "--resume")] = D[
        "resume"
    ],
    checkpoint_every: Annotated[int, typer.Option(help="Also checkpoint every N steps.")] = D[
        "checkpoint_every"
    ],
    mode: Annotated[str, typer.Option(help="Member evaluation: auto, batched or loop.")] = D[
        "mode"
    ],
    seed: SeedOpt = D["seed"],
    seeds: Annotated[
        str | None, typer.Option(help="One run per seed, e.g. 0,1,2 (runs NAME-seedS).")
    ] = D["seeds"],
    device: DeviceOpt = D["device"],
    force: ForceOpt = D["force"],
    artifacts: ArtifactsOpt = D["artifacts"],
) -> None:
    """Train a K-member DML ensemble (or another --defense) and store it as safetensors."""
    options = dict(locals())
    with reporter(enabled=world()[0] == 0) as progress:
        history = api.train(**options, progress=progress)
    run = history.attrs.get("run")
    if run is None:  # another torchrun rank: rank 0 reports
        return
    if history.attrs["status"] == "exists":
        console.print(
            f"[yellow]{run} exists[/yellow]; nothing to do (--force retrains, --name picks "
            "another name)"
        )
    if "runs" in history.attrs:  # --seeds: one column per seed run
        runs = history.attrs["runs"]
        keys = list(runs[0]["benign"])
        rows = [(k, *(f"{r['benign'].get(k, float('nan')):.2f}" for r in runs)) for k in keys]
        title = f"{run}: benign test accuracy (%) per seed"
        summary(
            title, ["model / decision", *(r["run"] for r in runs)], rows, history.attrs["files"]
        )
        return
    rows = list(history.attrs["benign"].items())
    title = f"{run}: benign test accuracy (%)"
    summary(title, ["model / decision", "accuracy"], rows, history.attrs["files"])
