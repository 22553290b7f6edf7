"""``dml geometry``: members' input-gradient alignment (A.7, Fig. 9-11) and loss surfaces
around samples (Fig. 2, 17)."""

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
    open_store,
    progress,
    resolve_device,
    summary,
)
from dmlcli.errors import DmlError


def geometry_command(
    checkpoint: Annotated[str, typer.Argument(help="Run name, run folder or .safetensors file.")],
    gradients: Annotated[
        bool, typer.Option("--gradients", help="Cosine of members' input gradients (A.7).")
    ] = False,
    surface: Annotated[
        bool, typer.Option("--surface", help="Loss surfaces around samples (Fig. 2).")
    ] = False,
    n: Annotated[int, typer.Option("--n", help="Samples for --gradients (eval_indices).")] = 1000,
    surface_samples: Annotated[
        int, typer.Option(help="Samples for --surface (eval_indices of this size).")
    ] = 3,
    grid: Annotated[int, typer.Option(help="Grid points per axis of the surface.")] = 21,
    r_max: Annotated[float, typer.Option(help="Largest step r along the gradient.")] = 0.1,
    theta_max: Annotated[float, typer.Option(help="Largest |theta| along the noise P.")] = 0.1,
    noise_std: Annotated[float, typer.Option(help="Std of the noise direction P.")] = 0.05,
    direction: Annotated[
        str, typer.Option(help="sign or normalized gradient of the ensemble's CE.")
    ] = "sign",
    batch_size: Annotated[int, typer.Option(help="Samples / grid points per pass.")] = 256,
    data_dir: Annotated[Path | None, typer.Option(help="Folder with the dataset's files.")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Gradient cosine per member pair and per-member loss surfaces (both if neither flag)."""
    import torch

    from dmlcli.data import eval_indices, load_dataset, to_float
    from dmlcli.eval import geometry as geo
    from dmlcli.store import load_ensemble, read_parquet

    if not gradients and not surface:
        gradients = surface = True
    settings = geo.SurfaceSettings(grid, r_max, theta_max, noise_std, direction).validate()
    if batch_size < 1:
        raise DmlError(f"--batch-size must be at least 1; got {batch_size}")
    if surface and surface_samples < 1:
        raise DmlError(f"--surface-samples must be at least 1; got {surface_samples}")
    dev = resolve_device(device)
    store = open_store(artifacts)
    ckpt = store.resolve_checkpoint(checkpoint)
    run = store.run_name_of(ckpt)
    ensemble = load_ensemble(ckpt)
    cfg = ensemble.config
    x_all, y_all = load_dataset(cfg["dataset"], "test", data_dir, image_size=cfg["image_size"])
    common = {"seed": seed, "checkpoint": ensemble.digest}
    jobs = {}
    if gradients:
        jobs["gradients"] = (eval_indices(len(y_all), n, seed), {"n": n, **common})
    if surface:
        if surface_samples > len(y_all):
            raise DmlError(
                f"--surface-samples {surface_samples} is larger than the test set "
                f"({len(y_all)} samples)"
            )
        idx = eval_indices(len(y_all), surface_samples, seed)
        jobs["surface"] = (idx, {"n": surface_samples, **settings.setting(), **common})
    if ensemble.randomized:
        console.print("[yellow]randomized head: gradients and losses are single draws[/yellow]")
    for p in ensemble.parameters():
        p.requires_grad_(False)
    ensemble = ensemble.to(dev)
    extra = {"dataset": cfg["dataset"], "members": ensemble.num_members, "head": cfg["head"]}
    files: list[Path] = []
    frames = {}
    with progress() as bar:
        for kind, (idx, setting) in jobs.items():
            path = store.result_path(kind, run, setting)
            if path.is_file() and not force:
                console.print(f"[yellow]{path} exists[/yellow]; nothing to do (--force recomputes)")
                frames[kind], _ = read_parquet(path)
                continue
            torch.manual_seed(seed)
            x = to_float(x_all[idx]).to(dev)
            y = y_all[idx].to(dev)
            task = bar.add_task(kind, total=len(idx), info="")

            def advance(count: int, task: int = task) -> None:
                bar.update(task, advance=count)

            if kind == "gradients":
                df = geo.gradient_cosines(ensemble, x, y, idx.tolist(), batch_size, advance)
            else:
                df = geo.loss_surface(
                    ensemble, x, y, idx.tolist(), settings, seed, batch_size, advance
                )
            files.append(store.write_result(kind, run, setting, df, extra))
            frames[kind] = df
    if "gradients" in frames:
        pairs = geo.pair_summary(frames["gradients"])
        rows = [
            (
                f"{int(r.member_a)}-{int(r.member_b)}",
                f"{r.cosine_mean:.4f}",
                f"{r.cosine_median:.4f}",
                f"{r.sign_cosine_mean:.4f}",
                int(r.samples),
            )
            for r in pairs.itertuples()
        ]
        summary(
            f"{run}: cosine of members' input gradients (CE), gamma={cfg.get('gamma')}",
            ["pair", "mean cos", "median cos", "mean sign cos", "samples"],
            rows,
            [f for f in files if "gradients-" in f.name],
        )
    if "surface" in frames:
        surf = geo.surface_summary(frames["surface"])
        rows = [(r.model, f"{r.loss_at_x:.4f}", f"{r.loss_max:.4f}") for r in surf.itertuples()]
        summary(
            f"{run}: loss on the {grid}x{grid} grid x + r*{direction}(grad) + theta*P "
            f"(mean over {surface_samples} samples)",
            ["model", "loss at x", "max loss"],
            rows,
            [f for f in files if "surface-" in f.name],
        )
