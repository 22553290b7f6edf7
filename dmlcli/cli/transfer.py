"""``dml transfer``: attacks crafted on one member (or the ensemble) scored on all (Table 4);
``--cw-distortion``: the adaptive CW-L2 distortion per member and for the ensemble (Table 5)."""

from __future__ import annotations

from typing import Any

from dmlcli import api
from dmlcli.api.outcome import Outcome
from dmlcli.api.transfers import TransferSettings
from dmlcli.cli.common import command_of, console, summary
from dmlcli.results import cw_summary, first, transfer_matrix
from dmlcli.units import format_eps

HELP = "Transfer of adversarials between members (Table 4) or CW-L2 distortion (Table 5)."


def show(out: Outcome, s: TransferSettings) -> None:
    """The CW-L2 distortion table, or one transfer matrix per eps."""
    if s.cw_distortion:
        print_cw(out, s.cw_c, s.cw_steps, s.cw_lr, s.cw_search_steps)
    else:
        print_transfer(out, s.attack, s.steps)


command = command_of(api.transfer, show, help=HELP)


def _mode(rows: Any) -> str:
    return "targeted" if bool(first(rows, "targeted")) else "untargeted"


def print_cw(out: Outcome, c: float, steps: int, lr: float, search: int) -> None:
    """One row per attacked source and kappa: accuracy, mean L2 of the fooled, fooled %."""
    rows, run, mode = [], "", ""
    for r, part in out:
        acc, dist, fooled = cw_summary(part)
        shown = "-" if dist != dist else dist  # nan: nothing was fooled
        kappa = f"{float(first(part, 'kappa')):g}"
        rows.append([str(first(part, "source")), kappa, acc, shown, fooled, len(part), r.status])
        run, mode = r.run, _mode(part)
    searched = f", searched {search} rounds" if search else ""
    title = f"{run}: CW-L2 (c={c:g}{searched}, {steps} steps, lr {lr:g}), {mode}, n={len(part)}"
    columns = ["attacked", "kappa", "adv acc", "mean L2 (fooled)", "fooled %", "n", "status"]
    summary(title, columns, rows, [r.path for r in out.results])


def print_transfer(out: Outcome, attack: str, steps: int) -> None:
    """One matrix per eps: adversarial accuracy (%) per source (rows) and scored model."""
    df = out.rows
    label = attack if attack == "fgsm" else f"{attack}-{steps}"
    run = out.results[0].run
    members = set(df["scored"]) - {"ensemble"}
    cols = ["ensemble", *sorted(members, key=lambda s: int(s.split(":")[1]))]
    for e, part in df.groupby("eps", sort=False):
        matrix = transfer_matrix(part)
        benign = part.groupby("scored")["clean_correct"].mean() * 100.0
        rows = [["benign", *[float(benign[c]) for c in cols]]]
        rows += [[src, *[float(matrix.loc[src, c]) for c in cols]] for src in matrix.index]
        n = int(part["sample"].nunique())
        console.print()
        summary(
            f"{run}: {label} {_mode(part)} transfer, eps {format_eps(float(e))}, adversarial "
            f"accuracy (%) on {n} samples (rows: crafted on; columns: scored)",
            ["crafted on", *cols],
            rows,
        )
    for r in out.results:
        console.print(f"[dim]wrote[/dim] {r.path}")
