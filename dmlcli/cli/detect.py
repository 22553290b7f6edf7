"""``dml detect``: adversary detection by member disagreement or uncertainty (A.4, A.5, A.5.1)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dmlcli import api, results
from dmlcli.cli.common import (
    ArtifactsOpt,
    DataDirOpt,
    DeviceOpt,
    ForceOpt,
    NOpt,
    RunArg,
    SeedOpt,
    ShardOpt,
    cached_note,
    defaults,
    new_files,
    reporter,
    results_of,
    summary,
)
from dmlcli.units import format_eps

D = defaults(api.detect)


def command(
    run: RunArg,
    method: Annotated[str, typer.Option(help="vote (Eq. 8, A.4/A.5) or uncertainty (A.5.1).")] = D[
        "method"
    ],
    attack: Annotated[
        list[str] | None,
        typer.Option("--attack", help="fgsm, pgd or adaptive; repeat for several (default all)."),
    ] = D["attack"],
    fit_attack: Annotated[
        list[str] | None,
        typer.Option(
            "--fit-attack",
            help="Uncertainty: standard attack(s) the detector is fit on once, then frozen: "
            "fgsm or pgd, repeatable (default both; crafted even if not an --attack).",
        ),
    ] = D["fit_attack"],
    eps: Annotated[str, typer.Option(help="L-inf budget in pixels, e.g. 0.3 or 8/255.")] = D["eps"],
    n: NOpt = D["n"],
    nu: Annotated[
        int | None, typer.Option(help="Threshold for the headline rates (default K//2+1).")
    ] = D["nu"],
    draws: Annotated[
        int | None,
        typer.Option(help=f"Forward passes per input (randomized heads: {api.RANDOM_DRAWS})."),
    ] = D["draws"],
    noise_sigma: Annotated[float, typer.Option(help="Std of the noisy negatives.")] = D[
        "noise_sigma"
    ],
    steps: Annotated[int, typer.Option(help="PGD / adaptive iterations.")] = D["steps"],
    step_size: Annotated[str | None, typer.Option(help="PGD step (default 2.5*eps/steps).")] = D[
        "step_size"
    ],
    adaptive_loss: Annotated[str, typer.Option(help="Adaptive attack loss: ce or margin.")] = D[
        "adaptive_loss"
    ],
    adaptive_targets: Annotated[
        int, typer.Option(help="Adaptive: target classes tried per sample, best kept.")
    ] = D["adaptive_targets"],
    fpr: Annotated[
        float,
        typer.Option(
            help="Uncertainty: also report the regression at this benign FPR (set on the fit half)."
        ),
    ] = D["fpr"],
    var_weight: Annotated[
        float, typer.Option(help="Adaptive vs uncertainty: weight of the variance match.")
    ] = D["var_weight"],
    eot: Annotated[
        int | None, typer.Option(help="Adaptive: head draws per step (default --draws).")
    ] = D["eot"],
    head: Annotated[
        str | None, typer.Option(help="Swap the DML head at detection time: dml, rdml, augdml.")
    ] = D["head"],
    head_sigma: Annotated[float | None, typer.Option(help="Noise std of the swapped head.")] = D[
        "head_sigma"
    ],
    head_samples: Annotated[
        int | None, typer.Option(help="Monte-Carlo draws inside the swapped head.")
    ] = D["head_samples"],
    batch_size: Annotated[int, typer.Option(help="Attack / inference batch size.")] = D[
        "batch_size"
    ],
    shard: ShardOpt = D["shard"],
    data_dir: DataDirOpt = D["data_dir"],
    seed: SeedOpt = D["seed"],
    device: DeviceOpt = D["device"],
    force: ForceOpt = D["force"],
    artifacts: ArtifactsOpt = D["artifacts"],
) -> None:
    """Detect adversarials by disagreement (threshold-nu vote) or uncertainty; ROC/AUC.

    The uncertainty regression is fit once on half of the samples (benign + noisy vs the
    --fit-attack adversarials), frozen, and every --attack (adaptive included) is scored
    against that same detector on the other half. One result holds every attack's rows.
    Every crafted batch of adversarials is kept as a part file, so after Ctrl-C or a kill
    the same command crafts only the missing batches. '--shard' is refused (also under
    torchrun): the logistic regression and the ROC need every sample, so detection runs
    in one process.
    """
    options = dict(locals())
    with reporter() as progress:
        df = api.detect(**options, progress=progress)
    print_tables(df)
    cached_note(df, artifacts)


_NU_COLS = {
    "benign_acc": "benign acc %",
    "fpr": "FPR %",
    "fpr_noisy": "FPR noisy %",
    "detected": "det %",
    "undetected_wrong": "undet+wrong %",
}


def _cells(row: Any, columns: list[str]) -> list[Any]:
    """A table row's cells; missing numbers (NaN) print empty."""
    return ["" if isinstance(row[c], float) and row[c] != row[c] else row[c] for c in columns]


def print_tables(df: Any) -> None:
    """The threshold-nu table (every nu, per attack, and the per-sample worst case) and the
    detector table (AUC and the operating points), both computed by :mod:`dmlcli.results`."""
    a = df.attrs
    nu, fpr, method, eps = a["nu"], a["fpr"], a["method"], a["eps"]
    run = next(results_of(df))[0]["run"]
    nu_rows = results.detect_nu_table(df)
    nu_rows["nu"] = [f"{v} *" if v == nu else v for v in nu_rows["nu"]]
    cols = ["nu", "attack", *_NU_COLS]
    rows = [_cells(r, cols) for _, r in nu_rows.iterrows()]
    title = f"{run}: threshold-nu vote detector (Eq. 8), eps {format_eps(eps)}"
    summary(title, ["nu", "attack", *_NU_COLS.values()], rows)

    table = results.detector_table(df, nu, fpr, a["aucs"])
    at = f"@{100 * fpr:g}%"
    if method == "uncertainty":
        head = ["attack", "AUC", "LR FPR %", "LR det %", "LR u+w %"]
        head += [f"FPR {at}", f"det {at}", f"u+w {at}"]
        fit = ", ".join(a["fit_attacks"])
        what = (
            f"uncertainty + LR fit once on {fit} (fit half), frozen; eval half; "
            f"threshold {at} = {results.fpr_threshold(df, fpr):.4g}"
        )
    else:
        head = ["attack", "AUC", f"det % nu={nu}", f"u+w % nu={nu}", "adv vote acc %"]
        what = "dissent (K - top votes)"
    table["auc"] = [f"{v:.4f}" if v == v else "" for v in table["auc"]]
    rows = [_cells(r, list(table.columns)) for _, r in table.iterrows()]
    title = (
        f"{run}: detection by {what}, eps {format_eps(eps)} (u+w: undetected and wrong; "
        "worst case: per sample, any attack, same detector)"
    )
    summary(title, head, rows, new_files(df))
