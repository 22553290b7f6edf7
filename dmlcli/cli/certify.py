"""``dml certify``: randomized-smoothing certified accuracy (Cohen et al. 2019; A.9, Fig. 14-16)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
from dmlcli.errors import DmlError


def command(
    checkpoint: Annotated[str, typer.Argument(help="Run name, run folder or .safetensors file.")],
    sigma: Annotated[float, typer.Option(help="Std of the Gaussian pixel noise.")] = 0.25,
    n0: Annotated[int, typer.Option("--n0", help="Draws for the class guess.")] = 100,
    n: Annotated[int, typer.Option("--n", help="Draws for the lower bound.")] = 100_000,
    alpha: Annotated[float, typer.Option(help="Failure probability.")] = 0.001,
    n_samples: Annotated[
        int, typer.Option("--n-samples", help="Evaluation samples (eval_indices).")
    ] = 500,
    decision: Annotated[
        str, typer.Option(help="Base classifier: vote, sum, meta-vote, mean-softmax, member:K.")
    ] = "vote",
    head: Annotated[
        str | None, typer.Option(help="Swap the DML head for certification: dml, rdml, augdml.")
    ] = None,
    head_sigma: Annotated[float | None, typer.Option(help="Noise std of the swapped head.")] = None,
    head_samples: Annotated[
        int | None, typer.Option(help="Monte-Carlo draws T of the swapped head.")
    ] = None,
    predict_n: Annotated[
        int, typer.Option(help="Draws for PREDICT (binomial test; columns smoothed*).")
    ] = 1000,
    batch_size: Annotated[int, typer.Option(help="Noise draws per forward pass.")] = 1000,
    data_dir: Annotated[Path | None, typer.Option(help="Folder with the dataset's files.")] = None,
    part_size: PartSizeOpt = 10,
    shard: ShardOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    artifacts: ArtifactsOpt = None,
) -> None:
    """CERTIFY and PREDICT the smoothed ensemble; certified accuracy at radii 0..1.

    Every '--part-size' samples are kept as a part file: after Ctrl-C or a kill the same
    command computes only the missing ones; '--shard i/n' computes the i-th block only and
    'dml merge' writes the result.
    """
    from dmlcli.data import eval_indices, load_dataset, to_float
    from dmlcli.eval import certify as ce
    from dmlcli.eval import parts as pt
    from dmlcli.models.aggregate import create_decision
    from dmlcli.store import load_ensemble, read_parquet

    shard_of = pt.parse_part_options(shard, part_size)

    settings = ce.CertifySettings(
        sigma=sigma, n0=n0, n=n, alpha=alpha, predict_n=predict_n, batch_size=batch_size
    ).validate()
    if (head_sigma is not None or head_samples is not None) and head is None:
        raise DmlError("--head-sigma/--head-samples only apply with --head dml|rdml|augdml")
    dev = resolve_device(pt.rank_device(device))
    store = open_store(artifacts)
    ckpt = store.resolve_checkpoint(checkpoint)
    run = store.run_name_of(ckpt)
    ensemble = load_ensemble(ckpt)
    create_decision(decision, ensemble.trainable_sets)  # validates member:K and names
    trained_head = ensemble.config["head"]
    if head is not None:
        ensemble = ce.swap_head(ensemble, head, head_sigma, head_samples)
    cfg = ensemble.config
    x_all, y_all = load_dataset(cfg["dataset"], "test", data_dir, image_size=cfg["image_size"])
    idx = eval_indices(len(y_all), n_samples, seed)
    setting = {
        **settings.setting(),
        "n_samples": n_samples,
        "decision": decision,
        "seed": seed,
        "head": cfg["head"],
        "head_sigma": cfg["head_sigma"] if ensemble.randomized else None,
        "head_samples": cfg["head_samples"] if ensemble.randomized else None,
        "checkpoint": ensemble.digest,
    }
    path = store.result_path("certify", run, setting)
    files: list[Path] = []
    if path.is_file() and not force:
        console.print(f"[yellow]{path} exists[/yellow]; nothing to do (--force recomputes)")
        df, _ = read_parquet(path)
    else:
        ensemble = ensemble.to(dev)
        x = to_float(x_all[idx]).to(dev)
        y = y_all[idx]
        console.print(
            f"{run}: certify {decision} of K={ensemble.num_members} ({cfg['head']} head"
            + (f", sigma_R={cfg['head_sigma']:g}" if ensemble.randomized else "")
            + f") on {n_samples} samples, sigma={sigma:g}, n0={n0}, n={n}, alpha={alpha:g}"
        )
        extra = {
            "dataset": cfg["dataset"],
            "members": ensemble.num_members,
            "trained_head": trained_head,
        }
        parts = pt.Parts.for_result(
            store,
            "certify",
            run,
            setting,
            idx.tolist(),
            part_size,
            extra,
            id_column="idx",
            columns=["label", "predict", "radius", "correct", "seconds", "smoothed_correct"],
            label=f"certify {decision} sigma={sigma:g}",
        )
        mine = parts.batches_of(shard_of)
        parts.prepare(force, mine)
        state = {"done": 0, "certified": 0, "correct": 0}
        with pt.exit_on_interrupt(), progress() as bar:
            task = bar.add_task("certify", total=parts.rows_of(mine), info="")

            def done(row: dict) -> None:
                bar.update(task, advance=1)

            def compute(b: int, start: int, stop: int) -> tuple[dict, dict]:
                part = ce.certify_samples(
                    ensemble, decision, x[start:stop], y[start:stop], idx[start:stop].tolist(),
                    settings, seed=seed, on_sample=done,
                )  # fmt: skip
                return {"part": part}, {}

            def on_batch(b: int, frames: dict) -> None:
                part = frames["part"]
                state["done"] += len(part)
                state["certified"] += int((part["predict"] != ce.ABSTAIN).sum())
                state["correct"] += int(part["correct"].sum())
                bar.update(
                    task,
                    completed=state["done"],
                    info=f"certified {state['certified']}, correct {state['correct']}",
                )

            pt.run_batches(parts, compute, shard=shard_of, on_batch=on_batch)
        written = finish_parts(store, parts, shard_of)
        if written is None:
            return
        files.append(written)
        df, _ = read_parquet(written)
    acc = ce.certified_accuracy(df, ce.REPORT_RADII)
    abstain = int((df["predict"] == ce.ABSTAIN).sum())
    smoothed = 100.0 * df["smoothed_correct"].mean()
    title = (
        f"{run}: certified accuracy (%), {decision}, {cfg['head']} head, sigma={sigma:g}, "
        f"n={n}; abstain {abstain}/{len(df)}, PREDICT acc {smoothed:.1f}%, "
        f"{df['seconds'].mean():.2f} s/sample; no radius above "
        f"{ce.max_certifiable_radius(sigma, n, alpha):.2f} is certifiable with n={n}"
    )
    rows = [(f"{r:g}", 100.0 * a) for r, a in zip(acc["radius"], acc["accuracy"], strict=True)]
    summary(title, ["radius", "certified accuracy"], rows, files)
