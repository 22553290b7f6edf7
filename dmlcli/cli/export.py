"""``dml export``: stored results in the formats other tools read."""

from __future__ import annotations

from dmlcli import api
from dmlcli.api.reporting import ExportOutcome, ExportSettings
from dmlcli.cli.common import command_of, summary

HELP = """Export the run's current results: per-sample CSV of any result, AutoAttack's text log
(RobustBench submissions), Cohen et al.'s certify TSV, or the stored adversarial images
as safetensors (x_adv, x, y, sample, adv_pred). Stale results are never exported."""


def show(out: ExportOutcome, s: ExportSettings) -> None:
    """One line per file written."""
    rows = [(r.kind, r.label, r.rows, r.path) for r in out.rows.itertuples()]
    summary(
        f"{out.run}: {len(out.rows)} file(s) as {s.format}",
        ["kind", "result", "rows", "file"],
        rows,
    )


command = command_of(api.export, show, help=HELP)
