"""``dml clever``: CLEVER scores of the ensemble (Fig. 1, 7, 8) and the DML head's Lipschitz
bound (Lemma 1, A.1)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dmlcli import api
from dmlcli.cli.common import (
    ArtifactsOpt,
    DataDirOpt,
    DeviceOpt,
    ForceOpt,
    NOpt,
    PartSizeOpt,
    RunArg,
    SeedOpt,
    ShardOpt,
    cached_note,
    console,
    defaults,
    new_files,
    reporter,
    results_of,
    shard_note,
    summary,
)
from dmlcli.results import score_quantiles

D = defaults(api.clever)


def command(
    run: RunArg,
    n: NOpt = D["n"],
    norm: Annotated[str, typer.Option(help="Ball norm p: 2, inf or 1 (dual norm q).")] = D["norm"],
    radius: Annotated[float, typer.Option(help="Radius R of the sampling ball.")] = D["radius"],
    nb_batches: Annotated[int, typer.Option(help="Batches N_b (batch maxima).")] = D["nb_batches"],
    batch_size: Annotated[int, typer.Option(help="Points per batch N_s.")] = D["batch_size"],
    pool_factor: Annotated[
        int, typer.Option(help="Gradient pool = factor x batch size (ART); 0: fresh points.")
    ] = D["pool_factor"],
    target: Annotated[
        str, typer.Option(help="sum (summed member logits, the paper) or member:K.")
    ] = D["target"],
    c_init: Annotated[
        list[float] | None,
        typer.Option(
            help="Weibull shape start(s) of the fit, the best kept (repeatable; default Weng "
            "et al.'s 0.1 1 5 10 20 50 100)."
        ),
    ] = D["c_init"],
    grad_batch: Annotated[
        int, typer.Option(help="Points per forward/backward pass (speed and memory only).")
    ] = D["grad_batch"],
    data_dir: DataDirOpt = D["data_dir"],
    part_size: PartSizeOpt = D["part_size"],
    shard: ShardOpt = D["shard"],
    seed: SeedOpt = D["seed"],
    device: DeviceOpt = D["device"],
    force: ForceOpt = D["force"],
    artifacts: ArtifactsOpt = D["artifacts"],
) -> None:
    """Untargeted CLEVER scores (Weng et al. 2018) per sample, and the head's Lipschitz bound.

    Every '--part-size' samples are kept as a part file: after Ctrl-C or a kill the same
    command computes only the missing ones; '--shard i/n' computes the i-th block only and
    'dml merge' writes the result.
    """
    options = dict(locals())
    with reporter() as progress:
        df = api.clever(**options, progress=progress)
    if shard_note(df, artifacts):
        return
    print_summary(df, target, norm, radius)
    cached_note(df, artifacts)


def print_summary(df: Any, target: str, norm: str, radius: float) -> None:
    """The Lipschitz bounds of the DML head and the quantiles of the scores."""
    r, rows = next(results_of(df))
    bounds = r["meta"].get("head_lipschitz")
    if bounds:
        table = [
            (
                f"member:{b['member']}",
                b["p_spectral"],
                b["lemma1"],
                b["alpha_m"],
                b["beta_m"],
                b["paper_diag_upper"],
            )  # fmt: skip
            for b in bounds
        ]
        columns = ["member", "||P||_2", "sqrt2||P||_2 (Lemma 1)", "max M_ii", "min M_ii"]
        summary(f"{r['run']}: DML head Lipschitz bounds", [*columns, "max M_ii^1/4"], table)
    else:
        console.print("head Lipschitz bound (Lemma 1): n/a (linear head)")
    keys = ["q10", "q50", "q90", "mean"]
    table = []
    for col in ("score", "score_label"):
        q = score_quantiles(rows, col)
        counts = [q["score_label>0"], q["score_label>0.2"], q["capped"]]
        counts = counts if col == q["counted"] else ["", "", ""]  # counted on score_label
        table.append((col, *[f"{q[k]:.4f}" for k in keys], *counts, q["n"]))
    statuses = rows["fit_status"].explode()
    statuses = statuses[statuses != ""].value_counts().to_dict()
    fits = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
    summary(
        f"{r['run']}: CLEVER of {target}, L{norm} R={radius:g} (fits: {fits})",
        ["", "10%", "median", "90%", "mean", "> 0", "> 0.2", "capped", "n"],
        table,
    )
    cap = r["meta"].get("setting", {}).get("max_offset", 1.0)
    console.print(
        "> 0, > 0.2: samples whose score_label (the score where the prediction is right, 0 "
        "where it is wrong) is above 0 (the paper's non-zero count, Fig. 1) or 0.2 (Fig. 7, "
        f"8). capped: samples with a Weibull fit whose location hit its cap (max + {cap:g} x "
        f"range of the batch maxima; {q['capped_fits']} of {q['fits']} fits): the fit wanted "
        "a larger gradient norm, so their score may be too high."
    )
    for path in new_files(df):
        console.print(f"[dim]wrote[/dim] {path}")
