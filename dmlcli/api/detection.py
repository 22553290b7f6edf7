"""``dml detect``: adversary detection by member disagreement or uncertainty (A.4, A.5)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dmlcli import results
from dmlcli.api._common import RunContext, as_list, check_head_swap, eval_subset, with_head
from dmlcli.api.outcome import Outcome
from dmlcli.api.settings import (
    DATA_DIR_HELP,
    N_HELP,
    RUN_HELP,
    SHARD_HELP,
    Common,
    argument,
    entry_point,
    option,
)
from dmlcli.errors import DmlError
from dmlcli.eval import detect as det
from dmlcli.models.io import Run
from dmlcli.runner import Outcome as JobOutcome
from dmlcli.runner import Reporter, run_jobs
from dmlcli.runs import open_run
from dmlcli.runtime import parse_shard
from dmlcli.units import parse_eps

DETECT_ATTACKS = ("fgsm", "pgd", "adaptive")
RANDOM_DRAWS = 10  # forward passes per input of a randomized head when --draws is not given


@dataclass(kw_only=True)
class DetectSettings(Common):
    """The options of ``dml detect`` / :func:`detect` (each field is one option)."""

    run: str = argument(RUN_HELP)
    method: str = option("vote", "vote (Eq. 8, A.4/A.5) or uncertainty (A.5.1).")
    attack: list[str] | None = option(
        None, "fgsm, pgd or adaptive; repeat for several (default all)."
    )
    fit_attack: list[str] | None = option(
        None,
        "Uncertainty: standard attack(s) the detector is fit on once, then frozen: fgsm or "
        "pgd, repeatable (default both; crafted even if not an --attack).",
    )
    eps: str | float = option("0.3", "L-inf budget in pixels, e.g. 0.3 or 8/255.")
    n: int = option(1000, N_HELP)
    nu: int | None = option(None, "Threshold for the headline rates (default K//2+1).")
    draws: int | None = option(
        None, f"Forward passes per input (randomized heads: {RANDOM_DRAWS})."
    )
    noise_sigma: float = option(0.1, "Std of the noisy negatives.")
    steps: int = option(40, "PGD / adaptive iterations.")
    step_size: str | float | None = option(None, "PGD step (default 2.5*eps/steps).")
    adaptive_loss: str = option("ce", "Adaptive attack loss: ce or margin.")
    adaptive_targets: int = option(3, "Adaptive: target classes tried per sample, best kept.")
    fpr: float = option(
        0.05, "Uncertainty: also report the regression at this benign FPR (set on the fit half)."
    )
    var_weight: float = option(1.0, "Adaptive vs uncertainty: weight of the variance match.")
    eot: int | None = option(None, "Adaptive: head draws per step (default --draws).")
    head: str | None = option(None, "Swap the DML head at detection time: dml, rdml, augdml.")
    head_sigma: float | None = option(None, "Noise std of the swapped head.")
    head_samples: int | None = option(None, "Monte-Carlo draws inside the swapped head.")
    batch_size: int = option(500, "Attack / inference batch size.")
    shard: str | None = option(None, SHARD_HELP)
    data_dir: str | Path | None = option(None, DATA_DIR_HELP)

    def check(self) -> None:
        if parse_shard(self.shard) is not None:
            raise DmlError(
                "dml detect cannot be sharded: its detector is fit on every sample; run it in "
                "one process (unset WORLD_SIZE under torchrun); an interrupted run resumes its "
                "batches"
            )
        self.attacks()
        self.fit_attacks()
        results.check_fpr(self.fpr)
        parse_eps(self.eps)
        if self.step_size is not None:
            parse_eps(self.step_size)
        check_head_swap(self.head, self.head_sigma, self.head_samples)
        self.positive("n", "draws")

    def attacks(self) -> list[str]:
        """The attacks evaluated (default every one of :data:`DETECT_ATTACKS`), checked."""
        return det.check_attacks(as_list(self.attack) or list(DETECT_ATTACKS))

    def fit_attacks(self) -> list[str]:
        """The attacks the uncertainty regression is fit on (default fgsm and pgd), checked."""
        return det.check_fit_attacks(as_list(self.fit_attack) or list(det.FIT_ATTACKS))


@dataclass
class DetectOutcome(Outcome):
    """:func:`detect`'s rows (the ``detect`` result: one row per sample, kind and attack) and
    what the command's tables need: the operating points ``nu`` (threshold of the vote
    detector; :func:`~dmlcli.results.detect_nu_table`) and ``fpr`` (benign false-positive
    rate of the regression; :func:`~dmlcli.results.detector_table`), and the settings the
    result was computed with."""

    method: str = "vote"  # vote or uncertainty
    eps: float = 0.0  # the L-inf budget in pixels
    nu: int = 1  # the vote threshold of the headline rates (default K//2+1)
    fpr: float = 0.05  # the benign FPR the regression's threshold is set at
    attacks: list[str] = field(default_factory=list)  # the attacks evaluated
    fit_attacks: list[str] = field(default_factory=list)  # fit on (uncertainty only; else [])
    aucs: dict[str, float] = field(default_factory=dict)  # attack -> ROC AUC


@entry_point(DetectSettings)
def detect(s: DetectSettings, progress: Reporter | None = None) -> DetectOutcome:
    """Adversary detection by member disagreement (``vote``, Eq. 8) or uncertainty and a
    logistic regression (A.5.1), against FGSM, PGD and an adaptive attack that knows the
    detector. The regression is fit once on the fit half (benign + noisy vs the adversarials
    of ``fit_attack``, default fgsm and pgd, crafted even when not in ``attack``), frozen, and
    every attack (the adaptive one included) is scored against it on the eval half. One
    ``detect`` result holds the rows of every attack, one ``detect-roc`` result their ROC
    points. Options: :class:`DetectSettings`.

    Returns a :class:`DetectOutcome`: the rows of the ``detect`` result; ``nu`` and ``fpr``,
    the operating points the command prints (``results.detect_nu_table`` and
    ``results.detector_table``); ``aucs``, the AUC per attack; ``method``, ``eps``,
    ``attacks`` and ``fit_attacks``."""
    ctx = RunContext.of(s, progress)
    r = with_head(open_run(s.run, ctx.store), s.head, s.head_sigma, s.head_samples)
    k = r.num_members
    nu = det.check_nu(s.nu if s.nu is not None else det.default_nu(k), k)
    det.check_method(s.method, k, r.randomized)
    detector = _detector_settings(s, r, ctx.progress)
    outcomes = _run_detection(s, r, detector, ctx)
    fit = list(detector.fit_attacks) if s.method == "uncertainty" else []
    return DetectOutcome.of(
        outcomes, method=s.method, eps=detector.eps, nu=nu, fpr=s.fpr,
        attacks=list(detector.attacks), fit_attacks=fit,
        aucs=dict(outcomes[0].meta.get("aucs", {})),
    )  # fmt: skip


def _draws(s: DetectSettings, r: Run) -> tuple[int, list[str]]:
    """The forward passes per input (1 on a deterministic head, else ``draws`` or
    :data:`RANDOM_DRAWS`) and the notes on options that do nothing here."""
    notes = []
    if s.method != "uncertainty" and s.fit_attack is not None:
        notes.append("--fit-attack applies to --method uncertainty only; the vote fits nothing")
    if r.randomized:
        return s.draws or RANDOM_DRAWS, notes
    if s.draws not in (None, 1):
        notes.append("deterministic head: every draw is the same; --draws 1")
    return 1, notes


def _detector_settings(s: DetectSettings, r: Run, progress: Reporter | None) -> det.DetectSettings:
    """The checked settings of the detection result
    (:class:`dmlcli.eval.detect.DetectSettings`); the notes of :func:`_draws` are shown once
    they are valid."""
    draws, notes = _draws(s, r)
    detector = det.DetectSettings(
        method=s.method, eps=parse_eps(s.eps), draws=draws, noise_sigma=s.noise_sigma,
        seed=s.seed, steps=s.steps,
        step_size=parse_eps(s.step_size) if s.step_size is not None else None,
        adaptive_loss=s.adaptive_loss, adaptive_targets=s.adaptive_targets,
        var_weight=s.var_weight, eot=s.eot if s.eot is not None else draws,
        batch_size=s.batch_size, attacks=tuple(s.attacks()), fit_attacks=tuple(s.fit_attacks()),
    )  # fmt: skip
    detector.validate()
    for note in notes:
        (progress or Reporter()).note(note)
    return detector


def _run_detection(
    s: DetectSettings, r: Run, detector: det.DetectSettings, ctx: RunContext
) -> Sequence[JobOutcome]:
    """The detection job's outcome: read back when stored (and not ``force``), else the
    benign samples are observed and the job computes every attack."""
    cached = ctx.store.result_path("detect", r.name, det.detect_setting(r, detector, s.n))
    if not ctx.force and cached.is_file():
        job = det.detect_job(r, det.Benign.empty(), detector, s.n)
        return run_jobs(ctx.store, [job], progress=ctx.progress)
    images, labels, indices = eval_subset(r, s.n, s.seed, s.data_dir)
    r.model.to(ctx.device)
    x = images[indices].float().div_(255.0)
    data = det.prepare(r.model, x, labels[indices], indices.numpy(), detector)
    job = det.detect_job(r, data, detector, s.n)
    return run_jobs(ctx.store, [job], force=ctx.force, progress=ctx.progress)
