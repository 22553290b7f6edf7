"""``dml export``: stored results in the formats other tools read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dmlcli import api
from dmlcli.cli.common import ArtifactsOpt, defaults, summary

D = defaults(api.export)


def command(
    run: Annotated[
        str, typer.Argument(help="Run name, run folder, checkpoint or model spec (.toml).")
    ],
    format: Annotated[  # noqa: A002 - the flag is --format
        str,
        typer.Option("--format", "-f", help="csv, autoattack-log, cohen-tsv or adversarials."),
    ] = D["format"],
    kind: Annotated[
        str | None, typer.Option(help="csv: only results of this kind (attack, certify, ...).")
    ] = D["kind"],
    attack: Annotated[
        str | None, typer.Option(help="Only results of this attack label (e.g. pgd-10).")
    ] = D["attack"],
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default ARTIFACTS/exports/RUN).")
    ] = D["out"],
    artifacts: ArtifactsOpt = D["artifacts"],
) -> None:
    """Export the run's current results: per-sample CSV of any result, AutoAttack's text log
    (RobustBench submissions), Cohen et al.'s certify TSV, or the stored adversarial images
    as safetensors (x_adv, x, y, sample, adv_pred). Stale results are never exported."""
    df = api.export(run, format=format, kind=kind, attack=attack, out=out, artifacts=artifacts)
    rows = [(r.kind, r.label, r.rows, r.path) for r in df.itertuples()]
    summary(
        f"{df.attrs['run']}: {len(df)} file(s) as {format}",
        ["kind", "result", "rows", "file"],
        rows,
    )
