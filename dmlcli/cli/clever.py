"""``dml clever``: CLEVER scores of the ensemble (Fig. 1, 7, 8) and the DML head's Lipschitz
bound (Lemma 1, A.1)."""

from __future__ import annotations

import pandas as pd

from dmlcli import api
from dmlcli.api.evaluate import CleverSettings
from dmlcli.api.outcome import Outcome, StoredResult
from dmlcli.cli.common import cached_note, command_of, console, shard_note, summary
from dmlcli.results import score_quantiles

HELP = """Untargeted CLEVER scores (Weng et al. 2018) per sample, and the head's Lipschitz bound.

Every '--part-size' samples are kept as a part file: after Ctrl-C or a kill the same
command computes only the missing ones; '--shard i/n' computes the i-th block only and
'dml merge' writes the result.
"""


def show(out: Outcome, s: CleverSettings) -> None:
    """Where the parts are (sharded), or the bounds and the scores' quantiles."""
    if shard_note(out, s.artifacts):
        return
    print_summary(out, s.target, s.norm, s.radius)
    cached_note(out, s.artifacts)


command = command_of(api.clever, show, help=HELP)


def print_summary(out: Outcome, target: str, norm: str, radius: float) -> None:
    """The Lipschitz bounds of the DML head and the quantiles of the scores."""
    r, rows = next(iter(out))
    print_bounds(r)
    print_scores(r, rows, target, norm, radius)
    for path in out.new_files:
        console.print(f"[dim]wrote[/dim] {path}")


def print_bounds(r: StoredResult) -> None:
    """The DML head's Lipschitz bounds per member (Lemma 1), kept in the result's metadata."""
    bounds = r.meta.get("head_lipschitz")
    if not bounds:
        console.print("head Lipschitz bound (Lemma 1): n/a (linear head)")
        return
    table = [
        (f"member:{b['member']}", b["p_spectral"], b["lemma1"], b["alpha_m"], b["beta_m"],
         b["paper_diag_upper"])
        for b in bounds
    ]  # fmt: skip
    columns = ["member", "||P||_2", "sqrt2||P||_2 (Lemma 1)", "max M_ii", "min M_ii"]
    summary(f"{r.run}: DML head Lipschitz bounds", [*columns, "max M_ii^1/4"], table)


def print_scores(
    r: StoredResult, rows: pd.DataFrame, target: str, norm: str, radius: float
) -> None:
    """Quantiles of ``score`` and ``score_label``, the counts of Fig. 1, 7 and 8, and the
    fits whose location hit its cap."""
    keys = ["q10", "q50", "q90", "mean"]
    table = []
    for col in ("score", "score_label"):
        q = score_quantiles(rows, col)
        counts = [q["score_label>0"], q["score_label>0.2"], q["capped"]]
        counts = counts if col == q["counted"] else ["", "", ""]  # counted on score_label
        table.append((col, *[f"{q[k]:.4f}" for k in keys], *counts, q["n"]))
    statuses = rows["fit_status"].explode()
    statuses = statuses[statuses != ""].value_counts().to_dict()
    fits = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
    summary(
        f"{r.run}: CLEVER of {target}, L{norm} R={radius:g} (fits: {fits})",
        ["", "10%", "median", "90%", "mean", "> 0", "> 0.2", "capped", "n"],
        table,
    )
    cap = r.meta.get("setting", {}).get("max_offset", 1.0)
    console.print(
        "> 0, > 0.2: samples whose score_label (the score where the prediction is right, 0 "
        "where it is wrong) is above 0 (the paper's non-zero count, Fig. 1) or 0.2 (Fig. 7, "
        f"8). capped: samples with a Weibull fit whose location hit its cap (max + {cap:g} x "
        f"range of the batch maxima; {q['capped_fits']} of {q['fits']} fits): the fit wanted "
        "a larger gradient norm, so their score may be too high."
    )
