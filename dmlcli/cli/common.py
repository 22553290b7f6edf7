"""What every subcommand shares: option types, eps parsing, the console, progress, tables."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from dmlcli.errors import DmlError
from dmlcli.store import Store

console = Console(highlight=False)

ArtifactsOpt = Annotated[
    Path | None,
    typer.Option(
        "--artifacts", envvar="DML_ARTIFACTS", help="Artifacts directory (default ./artifacts)."
    ),
]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="Seed for data order, init and attack randomness.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Recompute even if the result exists.")]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
]
PartSizeOpt = Annotated[
    int,
    typer.Option("--part-size", help="Samples per part file (resume and --shard granularity)."),
]
ShardOpt = Annotated[
    str | None,
    typer.Option("--shard", help="Compute only shard i/n of the parts (default: torchrun's RANK)."),
]


def open_store(artifacts: Path | None) -> Store:
    return Store(artifacts)


def parse_eps(text: str) -> float:
    """``'8/255'``, ``'0.031'`` or ``'0.3'`` -> a pixel-unit epsilon in [0, 1]."""
    try:
        value = float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise DmlError(f"cannot read eps {text!r}; write e.g. 8/255 or 0.031") from None
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise DmlError(f"eps {text!r} is outside [0, 1] (eps is in pixel units)")
    return value


def format_eps(eps: float) -> str:
    """``0.0313...`` -> ``'8/255'`` where it is one, else a short decimal."""
    k = eps * 255
    if eps > 0 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:g}"


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DmlError(f"--device {name}: no CUDA device is available here")
    if not (name == "cpu" or name.startswith("cuda")):
        raise DmlError(f"unknown --device {name!r}; use cpu, cuda or cuda:N")
    return name


def progress() -> Progress:
    """The rich progress bar every long command shows."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def summary(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    files: Iterable[Path | str] = (),
) -> None:
    """Print the short closing table of a command and where its files are."""
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, justify="left" if col == columns[0] else "right")
    for row in rows:
        table.add_row(*[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)
    for path in files:
        console.print(f"[dim]wrote[/dim] {path}")


def finish_parts(store: Store, parts: Any, shard: Any) -> Path | None:
    """After the batches of ``parts`` ran: a shard says how to merge and returns ``None``;
    an unsharded run writes the final result (:func:`dmlcli.eval.parts.finalize`) and
    returns its path."""
    from dmlcli.eval.parts import finalize

    if shard is not None:
        console.print(parts.shard_note(shard, store), soft_wrap=True)
        return None
    return finalize(store, parts)[-1]
