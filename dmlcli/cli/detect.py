"""``dml detect``: adversary detection by member disagreement or uncertainty (A.4, A.5, A.5.1)."""

from __future__ import annotations

from typing import Any

from dmlcli import api, results
from dmlcli.api.detection import DetectOutcome, DetectSettings
from dmlcli.cli.common import cached_note, command_of, summary
from dmlcli.units import format_eps

HELP = """Detect adversarials by disagreement (threshold-nu vote) or uncertainty; ROC/AUC.

The uncertainty regression is fit once on half of the samples (benign + noisy vs the
--fit-attack adversarials), frozen, and every --attack (adaptive included) is scored
against that same detector on the other half. One result holds every attack's rows.
Every crafted batch of adversarials is kept as a part file, so after Ctrl-C or a kill
the same command crafts only the missing batches. '--shard' is refused (also under
torchrun): the logistic regression and the ROC need every sample, so detection runs
in one process.
"""


def show(out: DetectOutcome, s: DetectSettings) -> None:
    """The threshold-nu table and the detector table."""
    print_nu_table(out)
    print_detector_table(out)
    cached_note(out, s.artifacts)


command = command_of(api.detect, show, help=HELP)

_NU_COLS = {
    "benign_acc": "benign acc %",
    "fpr": "FPR %",
    "fpr_noisy": "FPR noisy %",
    "detected": "det %",
    "undetected_wrong": "undet+wrong %",
}


def _cells(row: Any, columns: list[str]) -> list[Any]:
    """A table row's cells; missing numbers (NaN) print empty."""
    return ["" if isinstance(row[c], float) and row[c] != row[c] else row[c] for c in columns]


def print_nu_table(out: DetectOutcome) -> None:
    """The threshold-nu table (every nu, per attack, and the per-sample worst case),
    computed by :func:`dmlcli.results.detect_nu_table`; ``out.nu`` is starred."""
    nu_rows = results.detect_nu_table(out.rows)
    nu_rows["nu"] = [f"{v} *" if v == out.nu else v for v in nu_rows["nu"]]
    cols = ["nu", "attack", *_NU_COLS]
    rows = [_cells(r, cols) for _, r in nu_rows.iterrows()]
    title = f"{out.results[0].run}: threshold-nu vote detector (Eq. 8), eps {format_eps(out.eps)}"
    summary(title, ["nu", "attack", *_NU_COLS.values()], rows)


def print_detector_table(out: DetectOutcome) -> None:
    """The detector table (AUC and the operating points ``out.nu`` and ``out.fpr``),
    computed by :func:`dmlcli.results.detector_table`."""
    nu, fpr = out.nu, out.fpr
    table = results.detector_table(out.rows, nu, fpr, out.aucs)
    at = f"@{100 * fpr:g}%"
    if out.method == "uncertainty":
        head = ["attack", "AUC", "LR FPR %", "LR det %", "LR u+w %"]
        head += [f"FPR {at}", f"det {at}", f"u+w {at}"]
        fit = ", ".join(out.fit_attacks)
        what = (
            f"uncertainty + LR fit once on {fit} (fit half), frozen; eval half; "
            f"threshold {at} = {results.fpr_threshold(out.rows, fpr):.4g}"
        )
    else:
        head = ["attack", "AUC", f"det % nu={nu}", f"u+w % nu={nu}", "adv vote acc %"]
        what = "dissent (K - top votes)"
    table["auc"] = [f"{v:.4f}" if v == v else "" for v in table["auc"]]
    rows = [_cells(r, list(table.columns)) for _, r in table.iterrows()]
    title = (
        f"{out.results[0].run}: detection by {what}, eps {format_eps(out.eps)} (u+w: "
        "undetected and wrong; worst case: per sample, any attack, same detector)"
    )
    summary(title, head, rows, out.new_files)
