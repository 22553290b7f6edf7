"""``dml certify``: randomized-smoothing certified accuracy (Cohen et al. 2019; A.9, Fig. 14-16)."""

from __future__ import annotations

from dmlcli import api
from dmlcli.api.evaluate import CertifySettings
from dmlcli.api.outcome import Outcome
from dmlcli.cli.common import cached_note, command_of, shard_note, summary
from dmlcli.eval.certify import max_certifiable_radius
from dmlcli.results import ABSTAIN, REPORT_RADII, certified_accuracy

HELP = """CERTIFY and PREDICT the smoothed ensemble; certified accuracy at radii 0..1.

Every '--part-size' samples are kept as a part file: after Ctrl-C or a kill the same
command computes only the missing ones; '--shard i/n' computes the i-th block only and
'dml merge' writes the result.
"""


def show(out: Outcome, s: CertifySettings) -> None:
    """Where the parts are (sharded), or the certified accuracy per radius."""
    if shard_note(out, s.artifacts):
        return
    print_summary(out, s.decision, s.sigma, s.n, s.alpha)
    cached_note(out, s.artifacts)


command = command_of(api.certify, show, help=HELP)


def print_summary(out: Outcome, decision: str, sigma: float, n: int, alpha: float) -> None:
    """Certified accuracy at the report's radii, PREDICT's accuracy and abstentions."""
    r, rows = next(iter(out))
    acc = certified_accuracy(rows, REPORT_RADII)
    abstain = int((rows["predict"] == ABSTAIN).sum())
    title = (
        f"{r.run}: certified accuracy (%), {decision}, {r.meta['setting']['head']} head, "
        f"sigma={sigma:g}, n={n}; abstain "
        f"{abstain}/{len(rows)}, PREDICT acc {100.0 * rows['smoothed_correct'].mean():.1f}%, "
        f"{rows['seconds'].mean():.2f} s/sample; no radius above "
        f"{max_certifiable_radius(sigma, n, alpha):.2f} is certifiable with n={n}"
    )
    table = [(f"{x:g}", 100.0 * a) for x, a in zip(acc["radius"], acc["accuracy"], strict=True)]
    summary(title, ["radius", "certified accuracy"], table, out.new_files)
