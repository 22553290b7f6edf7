"""``dml clever``: CLEVER scores of the ensemble (Fig. 1, 7, 8) and the DML head's Lipschitz
bound (Lemma 1, A.1)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dmlcli.cli.common import (
    ArtifactsOpt,
    DeviceOpt,
    ForceOpt,
    PartSizeOpt,
    SeedOpt,
    ShardOpt,
    console,
    finish_parts,
    open_store,
    progress,
    resolve_device,
    summary,
)

if TYPE_CHECKING:
    import pandas as pd

    from dmlcli.eval.clever import CleverSettings


def command(
    checkpoint: Annotated[str, typer.Argument(help="Run name, run folder or .safetensors file.")],
    n: Annotated[int, typer.Option("--n", help="Evaluation samples (eval_indices).")] = 1000,
    norm: Annotated[str, typer.Option(help="Ball norm p: 2, inf or 1 (dual norm q).")] = "2",
    radius: Annotated[float, typer.Option(help="Radius R of the sampling ball.")] = 2.0,
    nb_batches: Annotated[int, typer.Option(help="Batches N_b (batch maxima).")] = 500,
    batch_size: Annotated[int, typer.Option(help="Points per batch N_s.")] = 1024,
    pool_factor: Annotated[
        int, typer.Option(help="Gradient pool = factor x batch size (ART); 0: fresh points.")
    ] = 10,
    target: Annotated[
        str, typer.Option(help="sum (summed member logits, the paper) or member:K.")
    ] = "sum",
    c_init: Annotated[float, typer.Option(help="Initial Weibull shape of the fit.")] = 1.0,
    grad_batch: Annotated[
        int, typer.Option(help="Points per forward/backward pass (speed and memory only).")
    ] = 512,
    data_dir: Annotated[Path | None, typer.Option(help="Folder with the dataset's files.")] = None,
    part_size: PartSizeOpt = 10,
    shard: ShardOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Untargeted CLEVER scores (Weng et al. 2018) per sample, and the head's Lipschitz bound.

    Every '--part-size' samples are kept as a part file: after Ctrl-C or a kill the same
    command computes only the missing ones; '--shard i/n' computes the i-th block only and
    'dml merge' writes the result.
    """
    import numpy as np

    from dmlcli.attacks import seeded
    from dmlcli.data import eval_indices, load_dataset, to_float
    from dmlcli.eval import clever as cl
    from dmlcli.eval import parts as pt
    from dmlcli.store import load_ensemble, read_parquet

    shard_of = pt.parse_part_options(shard, part_size)

    settings = cl.CleverSettings(
        norm=cl.parse_norm(norm),
        radius=radius,
        nb_batches=nb_batches,
        batch_size=batch_size,
        pool_factor=pool_factor,
        c_init=c_init,
        grad_batch=grad_batch,
    ).validate()
    dev = resolve_device(pt.rank_device(device))
    store = open_store(artifacts)
    ckpt = store.resolve_checkpoint(checkpoint)
    run = store.run_name_of(ckpt)
    ensemble = load_ensemble(ckpt)
    scored = cl.ScoredModel(ensemble, target)
    cfg = ensemble.config
    x_all, y_all = load_dataset(cfg["dataset"], "test", data_dir, image_size=cfg["image_size"])
    idx = eval_indices(len(y_all), n, seed)
    setting = {
        **settings.setting(),
        "n": n,
        "seed": seed,
        "target": target,
        "checkpoint": ensemble.digest,
    }
    bounds = cl.head_lipschitz(ensemble)
    path = store.result_path("clever", run, setting)
    files: list[Path] = []
    if path.is_file() and not force:
        console.print(f"[yellow]{path} exists[/yellow]; nothing to do (--force recomputes)")
        df, _ = read_parquet(path)
    else:
        for p in ensemble.parameters():
            p.requires_grad_(False)
        scored = scored.to(dev)
        x = to_float(x_all[idx]).to(dev)
        y = y_all[idx].numpy()
        console.print(
            f"{run}: CLEVER of {target} on {n} samples, L{cl.norm_name(settings.norm)} ball "
            f"R={radius:g}, {nb_batches}x{batch_size} maxima from {settings.pool} gradients "
            f"per sample ({cfg['head']} head, K={ensemble.num_members})"
        )
        extra = {
            "dataset": cfg["dataset"],
            "members": ensemble.num_members,
            "head": cfg["head"],
            "head_lipschitz": bounds,
        }
        parts = pt.Parts.for_result(
            store,
            "clever",
            run,
            setting,
            idx.tolist(),
            part_size,
            extra,
            id_column="idx",
            columns=["sample", "score", "score_label", "fit_status", "seconds"],
            label=f"clever {target} L{cl.norm_name(settings.norm)} R={radius:g}",
        )
        mine = parts.batches_of(shard_of)
        parts.prepare(force, mine)
        seeds = [seed * 1_000_003 + int(i) for i in idx]
        with pt.exit_on_interrupt(), progress() as bar:
            task = bar.add_task("clever", total=parts.rows_of(mine), info="")
            scores: list[float] = []

            def done(i: int, res: cl.CleverResult) -> None:
                bar.update(task, advance=1)

            def compute(b: int, start: int, stop: int) -> tuple[dict, dict]:
                # randomized heads draw from the global generator: seeded per part
                with seeded(seed + start, dev):
                    res = cl.clever_u(
                        scored, x[start:stop], settings, seeds=seeds[start:stop], on_sample=done
                    )
                part = cl.results_frame(res, idx[start:stop].numpy(), y[start:stop], target, start)
                return {"part": part}, {}

            def on_batch(b: int, frames: dict) -> None:
                scores.extend(frames["part"]["score"].tolist())
                median = float(np.median(scores))
                bar.update(task, completed=len(scores), info=f"median {median:.3f}")

            pt.run_batches(parts, compute, shard=shard_of, on_batch=on_batch)
        written = finish_parts(store, parts, shard_of)
        if written is None:
            return
        files.append(written)
        df, _ = read_parquet(written)
    _print(run, target, settings, df, bounds, files)


def _print(
    run: str,
    target: str,
    settings: CleverSettings,
    df: pd.DataFrame,
    bounds: list[dict[str, float]] | None,
    files: list[Path],
) -> None:
    """The Lipschitz-bound table and the CLEVER quantile table."""
    from dmlcli.eval.clever import norm_name, score_quantiles

    if bounds is None:
        console.print("head Lipschitz bound (Lemma 1): n/a (linear head)")
    else:
        rows = [
            (
                f"member:{b['member']}",
                f"{b['p_spectral']:.4f}",
                f"{b['lemma1']:.4f}",
                f"{b['alpha_m']:.4f}",
                f"{b['beta_m']:.4f}",
                f"{b['paper_diag_upper']:.4f}",
            )
            for b in bounds
        ]
        summary(
            f"{run}: DML head Lipschitz bounds",
            ["member", "||P||_2", "sqrt2||P||_2 (Lemma 1)", "max M_ii", "min M_ii", "max M_ii^1/4"],
            rows,
        )
    q_all = score_quantiles(df["score"].to_numpy())
    q_lab = score_quantiles(df["score_label"].to_numpy())
    keys = ["q10", "q25", "q50", "q75", "q90", "mean"]
    rows = [
        ("score", *[f"{q_all[k]:.4f}" for k in keys], q_all["above_0.2"], len(df)),
        ("score_label", *[f"{q_lab[k]:.4f}" for k in keys], q_lab["above_0.2"], len(df)),
    ]
    statuses = df["fit_status"].explode()
    statuses = statuses[statuses != ""].value_counts().to_dict()
    summary(
        f"{run}: CLEVER of {target}, L{norm_name(settings.norm)} R={settings.radius:g} "
        f"(fits: {', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))})",
        ["", "10%", "25%", "median", "75%", "90%", "mean", "> 0.2", "n"],
        rows,
        files,
    )
