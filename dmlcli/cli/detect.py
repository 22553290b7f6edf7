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


def print_tables(df: Any) -> None:
    """The threshold-nu table (every nu, per attack, and the per-sample worst case) and the
    detector table (AUC and the headline operating point)."""
    a = df.attrs
    nu, fpr, method, eps = a["nu"], a["fpr"], a["method"], a["eps"]
    parts = list(results_of(df))
    frames = {str(rows["attack"].iloc[0]): rows for _, rows in parts}
    aucs = {str(rows["attack"].iloc[0]): float(r["meta"]["auc"]) for r, rows in parts}
    run = parts[0][0]["run"]
    attacks = list(frames)
    tables = {k: results.nu_table(f).set_index("nu") for k, f in frames.items()}
    cols = ["nu", "attack", "benign acc %", "FPR %", "FPR noisy %", "det %", "undet+wrong %"]
    rows: list[list[Any]] = []
    for v in tables[attacks[0]].index:
        mark = v if v != nu else f"{v} *"
        for k in attacks:
            t = tables[k].loc[v]
            rows.append([mark, k, t["benign_acc"], t["fpr"], t["fpr_noisy"], t["detected"],
                         t["undetected_wrong"]])  # fmt: skip
        if len(attacks) > 1:  # per sample, whichever attack works
            worst = results.worst_case_undetected_wrong(list(frames.values()), f"flagged_nu_{v}")
            rows.append([mark, "worst case", "", "", "", "", worst])
    summary(f"{run}: threshold-nu vote detector (Eq. 8), eps {format_eps(eps)}", cols, rows)

    at = f"@{100 * fpr:g}%"
    if method == "uncertainty":
        head = ["attack", "AUC", "LR FPR %", "LR det %", "LR u+w %"]
        head += [f"FPR {at}", f"det {at}", f"u+w {at}"]
    else:
        head = ["attack", "AUC", f"det % nu={nu}", f"u+w % nu={nu}", "adv vote acc %"]
    rows = []
    for k in attacks:
        row: list[Any] = [k, f"{aucs[k]:.4f}"]
        if method == "uncertainty":
            for lr in (results.lr_rates(frames[k]), results.lr_rates_at_fpr(frames[k], fpr)):
                row += [lr["fpr"], lr["detected"], lr["undetected_wrong"]]
        else:
            r = tables[k].loc[nu]
            row += [r["detected"], r["undetected_wrong"], r["adv_vote_acc"]]
        rows.append(row)
    if len(attacks) > 1:  # per sample, whichever attack works
        if method == "uncertainty":
            evals = [f[f["half"] == "eval"] for f in frames.values()]
            at_fpr = [results.flag_at_fpr(f, fpr) for f in frames.values()]
            row = [
                "worst case",
                "",
                "",
                "",
                results.worst_case_undetected_wrong(evals, "flagged_lr"),
            ]
            row += ["", "", results.worst_case_undetected_wrong(at_fpr, "flagged_fpr")]
        else:
            worst = results.worst_case_undetected_wrong(list(frames.values()), f"flagged_nu_{nu}")
            row = ["worst case", "", "", worst, ""]
        rows.append(row)
    what = "dissent (K - top votes)" if method == "vote" else "uncertainty + LR, eval half"
    title = (
        f"{run}: detection by {what}, eps {format_eps(eps)} (u+w: undetected and wrong; "
        "worst case: per sample, any attack)"
    )
    summary(title, head, rows, new_files(df))
