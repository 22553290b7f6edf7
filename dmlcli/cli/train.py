"""``dml train``: train a DML ensemble (Eq. 3) or the cross-entropy baseline."""

from __future__ import annotations

from dmlcli import api
from dmlcli.api.training import TrainOutcome, TrainSettings
from dmlcli.cli.common import command_of, console, summary
from dmlcli.runtime import world

HELP = """Train a K-member DML ensemble (or another --defense) and store it as safetensors."""


def show(out: TrainOutcome, s: TrainSettings) -> None:
    """The run's benign accuracy per decision and member (with ``--seeds``: one column per
    seed's run); on another torchrun rank nothing (rank 0 reports)."""
    if out.rank != 0:
        return
    if out.status == "exists":
        console.print(
            f"[yellow]{out.run} exists[/yellow]; nothing to do (--force retrains, --name picks "
            "another name)"
        )
    if out.seeds:  # one column per seed run
        keys = list(out.seeds[0].benign)
        rows = [(k, *(f"{o.benign.get(k, float('nan')):.2f}" for o in out.seeds)) for k in keys]
        columns = ["model / decision", *(o.run for o in out.seeds)]
        summary(f"{out.run}: benign test accuracy (%) per seed", columns, rows, out.files)
        return
    rows = list(out.benign.items())
    title = f"{out.run}: benign test accuracy (%)"
    summary(title, ["model / decision", "accuracy"], rows, out.files)


command = command_of(api.train, show, help=HELP, progress=lambda: world()[0] == 0)
