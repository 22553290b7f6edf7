"""``dml geometry``: members' input-gradient alignment (A.7, Fig. 9-11) and loss surfaces
around samples (Fig. 2, 17)."""

from __future__ import annotations

import pandas as pd

from dmlcli import api
from dmlcli.api.evaluate import GeometrySettings
from dmlcli.api.outcome import Outcome, StoredResult
from dmlcli.cli.common import cached_note, command_of, summary
from dmlcli.results import pair_summary, surface_summary

HELP = "Gradient cosine per member pair and per-member loss surfaces (both if neither flag)."


def show(out: Outcome, s: GeometrySettings) -> None:
    """One table per result (gradient cosines, loss surfaces)."""
    print_summary(out, s.grid, s.direction, s.surface_samples)
    cached_note(out, s.artifacts)


command = command_of(api.geometry, show, help=HELP)


def print_summary(out: Outcome, grid: int, direction: str, samples: int) -> None:
    """The gradient cosines per member pair and the loss per model on the surface grid."""
    for r, rows in out:
        if r.kind == "gradients":
            print_gradients(r, rows)
        else:
            print_surface(r, rows, grid, direction, samples)


def print_gradients(r: StoredResult, rows: pd.DataFrame) -> None:
    """Mean and median cosine (and sign cosine) of each member pair's input gradients."""
    table = [
        (f"{int(p.member_a)}-{int(p.member_b)}", f"{p.cosine_mean:.4f}",
         f"{p.cosine_median:.4f}", f"{p.sign_cosine_mean:.4f}", int(p.samples))
        for p in pair_summary(rows).itertuples()
    ]  # fmt: skip
    summary(
        f"{r.run}: cosine of members' input gradients (CE)",
        ["pair", "mean cos", "median cos", "mean sign cos", "samples"],
        table,
        [r.path] if r.status == "new" else [],
    )


def print_surface(
    r: StoredResult, rows: pd.DataFrame, grid: int, direction: str, samples: int
) -> None:
    """The loss at each sample and the largest loss on the grid, per model."""
    table = [
        (s.model, f"{s.loss_at_x:.4f}", f"{s.loss_max:.4f}")
        for s in surface_summary(rows).itertuples()
    ]
    summary(
        f"{r.run}: loss on the {grid}x{grid} grid x + r*{direction}(grad) + theta*P "
        f"(mean over {samples} samples)",
        ["model", "loss at x", "max loss"],
        table,
        [r.path] if r.status == "new" else [],
    )
