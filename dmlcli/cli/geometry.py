"""``dml geometry``: members' input-gradient alignment (A.7, Fig. 9-11) and loss surfaces
around samples (Fig. 2, 17)."""

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
    cached_note,
    defaults,
    flag,
    reporter,
    results_of,
    summary,
)
from dmlcli.results import pair_summary, surface_summary

D = defaults(api.geometry)


def command(
    run: RunArg,
    gradients: Annotated[
        bool, flag("Cosine of members' input gradients (A.7).", "--gradients")
    ] = D["gradients"],
    surface: Annotated[bool, flag("Loss surfaces around samples (Fig. 2).", "--surface")] = D[
        "surface"
    ],
    n: Annotated[int, typer.Option("--n", help="Samples for --gradients (a seeded subset).")] = D[
        "n"
    ],
    surface_samples: Annotated[
        int, typer.Option(help="Samples for --surface (a seeded subset of this size).")
    ] = D["surface_samples"],
    grid: Annotated[int, typer.Option(help="Grid points per axis of the surface.")] = D["grid"],
    r_max: Annotated[float, typer.Option(help="Largest step r along the gradient.")] = D["r_max"],
    theta_max: Annotated[float, typer.Option(help="Largest |theta| along the noise P.")] = D[
        "theta_max"
    ],
    noise_std: Annotated[float, typer.Option(help="Std of the noise direction P.")] = D[
        "noise_std"
    ],
    direction: Annotated[
        str, typer.Option(help="sign or normalized gradient of the ensemble's CE.")
    ] = D["direction"],
    batch_size: Annotated[int, typer.Option(help="Samples / grid points per pass.")] = D[
        "batch_size"
    ],
    data_dir: DataDirOpt = D["data_dir"],
    seed: SeedOpt = D["seed"],
    device: DeviceOpt = D["device"],
    force: ForceOpt = D["force"],
    artifacts: ArtifactsOpt = D["artifacts"],
) -> None:
    """Gradient cosine per member pair and per-member loss surfaces (both if neither flag)."""
    options = dict(locals())
    with reporter() as progress:
        df = api.geometry(**options, progress=progress)
    print_summary(df, grid, direction, surface_samples)
    cached_note(df, artifacts)


def print_summary(df: Any, grid: int, direction: str, samples: int) -> None:
    for r, rows in results_of(df):
        files = [r["path"]] if r["status"] == "new" else []
        if r["kind"] == "gradients":
            table = [
                (
                    f"{int(p.member_a)}-{int(p.member_b)}",
                    f"{p.cosine_mean:.4f}",
                    f"{p.cosine_median:.4f}",
                    f"{p.sign_cosine_mean:.4f}",
                    int(p.samples),
                )  # fmt: skip
                for p in pair_summary(rows).itertuples()
            ]
            summary(
                f"{r['run']}: cosine of members' input gradients (CE)",
                ["pair", "mean cos", "median cos", "mean sign cos", "samples"],
                table,
                files,
            )
        else:
            table = [
                (s.model, f"{s.loss_at_x:.4f}", f"{s.loss_max:.4f}")
                for s in surface_summary(rows).itertuples()
            ]
            summary(
                f"{r['run']}: loss on the {grid}x{grid} grid x + r*{direction}(grad) + theta*P "
                f"(mean over {samples} samples)",
                ["model", "loss at x", "max loss"],
                table,
                files,
            )
