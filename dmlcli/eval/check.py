"""Sanity checks for gradient masking and failed attacks (``dml check``).

A robustness number is only as good as the attack behind it. The field's checklists say how
to tell a robust model from a model that only defeats the attack:

- Carlini et al. 2019, "On Evaluating Adversarial Robustness" (Section 5, the checklist):
  iterative attacks beat single-step ones; doubling iterations and restarts changes nothing;
  accuracy falls as the budget grows and reaches random guessing at a "high" distortion;
  white-box attacks beat black-box (gradient-free) and transfer attacks, compared per sample;
  randomized defenses need an ensemble over the randomness (EOT); the same attacks must
  break a similar undefended model.
- Croce & Hein 2020, AutoAttack's ``checks.py`` / ``flags_doc.md``: zero gradients, a
  randomized defense (outputs that change between passes, relative tolerance 1e-4), a
  black-box attack lowering the white-box robust accuracy.
- Pintor et al. 2022, "Indicators of Attack Failure": unavailable (zero) gradients,
  unconstrained attack failure (a huge budget that still fails), transfer failure, and two
  read off the attack's loss trace: silent success (an iterate fooled the decision, the
  returned point does not) and incomplete optimization (the loss still rising at the end).

:func:`evidence` runs one small attack set on a batch (FGSM; PGD; PGD with twice the steps and
restarts at the same step size; PGD over an eps sweep up to a large eps; RayS, a hard-label
attack that queries only the decision (Chen & Gu 2020; Square through AutoAttack judged its
success on the summed logits and could never fire on a vote); APGD-CE transferred from a
surrogate; FGSM and both PGDs on a baseline; PGD with ``keep='loss'`` and a loss
:class:`~dmlcli.attacks.base.Trace` for Pintor et al.'s indicators, :func:`indicators`)
and measures input gradients per surface and two forward passes, one value per sample.
:func:`summarize` turns those per-sample values into rows, one per check of :data:`CHECKS`
(each a function of the evidence and the settings, in row order; a new check is one function
there): ``status`` (``pass``, ``warn`` or ``fail``), the measured ``value``, the
``threshold`` above which the check stops passing and one sentence of ``detail``. Each
check's docstring says what it flags, why, and which :class:`Thresholds` decide it.
:func:`check_job` stores the rows as a ``check`` result (the per-sample values are kept as
part files while it runs, so an interrupted check resumes). Both work on any module mapping
pixels to member logits ``[K, B, C]`` or logits ``[B, C]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from dmlcli import results
from dmlcli.attacks import Objective, create_attack, create_loss
from dmlcli.attacks.base import Trace, flat_norm
from dmlcli.data import DatasetInfo, to_float
from dmlcli.errors import DmlError
from dmlcli.eval.jobs import Job, Tick, identity
from dmlcli.eval.robustness import batch_seed
from dmlcli.models.aggregate import list_decisions
from dmlcli.models.io import Run
from dmlcli.runtime import scoring_seed, seeded
from dmlcli.units import eps_text, parse_eps

STATUSES = ("pass", "warn", "fail")
ZERO_GRADIENT = 1e-12  # an input gradient below this L2 norm counts as zero
LARGE_EPS_FACTOR = 4.0  # default large eps: 4x the dataset's largest paper eps, at most 0.5
LARGE_EPS_CAP = 0.5  # at 0.5 every L-inf ball holds the all-gray image
SWEEP_AT_EPS = 2  # the position of eps itself in CheckSettings.sweep
_ROUNDING = 1e-9  # a value equal to its threshold up to float rounding passes


@dataclass(frozen=True)
class Thresholds:
    """Where each check stops passing (``pass`` at or below, ``warn`` above, ``fail`` above
    the ``*_fail`` value). Points and % are of the evaluation samples. ``incomplete_tolerance``
    and ``incomplete_window`` say when one sample's loss trace counts as still moving."""

    #: PGD robust accuracy may exceed FGSM's by this many points (sampling noise of the
    #: random start); more is a sign of masking (Carlini et al. 2019).
    iterative: float = 2.0
    iterative_fail: float = 10.0
    #: % of samples FGSM breaks but PGD does not.
    iterative_samples: float = 2.0
    #: Points of robust accuracy gained by doubling PGD's steps and restarts.
    budget: float = 2.0
    #: % robust accuracy PGD may leave at the large eps (fail above: the attack fails even
    #: unconstrained, Pintor et al.'s "unconstrained attack failure").
    large_eps: float = 5.0
    #: Points robust accuracy may rise from one eps of the sweep to the next (at least one
    #: sample, so a single noisy sample of a small n never warns).
    monotone: float = 2.0
    #: % of samples a black-box or transfer attack breaks but no white-box attack does
    #: (Carlini et al.: compare per sample): any fails, for an adversarial the gradient
    #: attacks missed within the same budget proves them wrong on that sample.
    blackbox: float = 0.0
    blackbox_fail: float = 0.0
    #: % of correctly classified samples with a zero input gradient (AutoAttack flags any).
    zero_gradient: float = 1.0
    zero_gradient_fail: float = 10.0
    #: L2 distance of two passes' normalized logits above which a model is randomized
    #: (AutoAttack's ``check_randomized`` tolerance); any such sample warns.
    randomness: float = 1e-4
    #: % robust accuracy FGSM and both PGDs together (per sample) may leave on the
    #: baseline: the same attacks must break a similar undefended model.
    baseline: float = 5.0
    #: % of samples whose traced PGD (``keep='loss'``) had an iterate with a wrong decision
    #: but returned a highest-loss point classified correctly (Pintor et al.'s silent
    #: success). Any warns: the stored attacks keep the first fooling iterate, so these
    #: samples do count as broken, but there the loss does not track the decision and an
    #: attack that returns its highest-loss point (a transfer, another tool) misses them.
    silent_success: float = 0.0
    #: % of samples the traced PGD never fooled while its best loss was still rising at the
    #: end (Pintor et al.'s incomplete optimization): more iterations may break them. As
    #: for "more budget": 2 points, at least one sample.
    incomplete: float = 2.0
    #: The rise of the running-best loss, as a fraction of the trace's loss range, over the
    #: last ``incomplete_window`` of the iterates above which a trace is still moving
    #: (Pintor et al.'s code: 0.05 of the rescaled loss over its last iterates).
    incomplete_tolerance: float = 0.05
    #: The last 10% of the iterates (at least two): the window of the tolerance above. A
    #: PGD at Madry's step (2.5 eps / steps) has every pixel at its bound by 80% of its
    #: steps on a monotone loss, so an honest run is flat there.
    incomplete_window: float = 0.1


@dataclass(frozen=True)
class CheckSettings:
    """The attack set of the checks: eps and large eps (pixels), the decision scored, the
    surface attacked, PGD's steps and restarts (the doubled run keeps PGD's step size),
    RayS's queries per sample, EOT draws on randomized heads, samples per block."""

    eps: float
    large_eps: float
    decision: str = "vote"
    surface: str = "sum"
    steps: int = 20
    restarts: int = 1
    queries: int = 1000
    eot: int = 10
    batch_size: int = 500
    thresholds: Thresholds = field(default_factory=Thresholds)

    def validate(self) -> CheckSettings:
        if not 0 < self.eps <= 1:
            raise DmlError(f"--eps must be above 0 (pixel units); got {self.eps}")
        if not self.eps < self.large_eps <= 1:
            raise DmlError(
                f"--large-eps must lie above --eps ({eps_text(self.eps)}) and at most 1; "
                f"got {eps_text(self.large_eps)}"
            )
        for key in ("steps", "restarts", "queries", "eot", "batch_size"):
            if getattr(self, key) < 1:
                raise DmlError(f"--{key.replace('_', '-')} must be at least 1")
        return self

    @property
    def step_size(self) -> float:
        """PGD's step at eps (Madry et al.'s 2.5 eps / steps), also that of the doubled run."""
        return 2.5 * self.eps / self.steps

    @property
    def sweep(self) -> tuple[float, ...]:
        """The eps of the accuracy-vs-eps curve: eps/4, eps/2, eps, halfway, the large eps."""
        e, big = self.eps, self.large_eps
        return tuple(round(v, 10) for v in (e / 4, e / 2, e, (e + big) / 2, big))

    def setting(self) -> dict[str, Any]:
        """The stored identity of these settings (thresholds included: they set the rows)."""
        out = asdict(self)
        out["sweep"] = list(self.sweep)
        return out


def default_large_eps(info: DatasetInfo, eps: float) -> float:
    """A budget at which any honest evaluation reaches ~0% robust accuracy: four times the
    dataset's largest paper eps, at most 0.5 (MNIST-like: 0.5; CIFAR-like: 0.124 ~ 32/255),
    and at least twice ``eps`` (at most 1)."""
    paper = max(parse_eps(e) for e in info.paper_eps)
    return min(1.0, max(min(LARGE_EPS_CAP, LARGE_EPS_FACTOR * paper), 2 * eps))


def surfaces_of(members: int) -> list[str]:
    """The surfaces whose input gradients are checked: sum, mean-softmax, members (K > 1)."""
    return ["sum", "mean-softmax", *(["members"] if members > 1 else [])]


def _column(surface: str) -> str:
    return surface.replace("-", "_")


# -- per-sample evidence ----------------------------------------------------------------------
def _robust(
    scorer: Objective,
    crafter: Objective,
    attack: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    correct: torch.Tensor,
    seed: int,
) -> torch.Tensor:
    """Robust flags ``[B]``: correct on ``x`` and on ``attack``'s adversarial (crafted on
    ``crafter``, scored on ``scorer``'s decision with a fresh draw); wrong samples are not
    attacked."""
    x_adv = x.clone()
    todo = correct.nonzero().squeeze(1)
    if len(todo):
        x_adv[todo] = attack(crafter, x[todo], y[todo])
    with seeded(scoring_seed(seed), x.device), torch.no_grad():
        adv = scorer.decide(scorer.logits(x_adv))
    return correct & (adv == y)


def _gradient_norms(objective: Objective, x: torch.Tensor, y: torch.Tensor, loss: str, seed: int):
    with seeded(seed, x.device):
        _, grad, _ = objective.loss_grad(x, y, create_loss(loss))
    return flat_norm(grad, "l2")


def _passes(objective: Objective, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, ...]:
    """Two forward passes (the clean one and a fresh draw): logits ``[K, B, C]`` each."""
    with torch.no_grad():
        with seeded(seed, x.device):
            first = objective.logits(x)
        with seeded(scoring_seed(seed), x.device):
            second = objective.logits(x)
    return first, second


def evidence(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: CheckSettings,
    *,
    seed: int = 0,
    baseline: nn.Module | None = None,
    surrogate: nn.Module | None = None,
    progress: Tick | None = None,
) -> dict[str, list]:
    """Per-sample measurements of every check on one batch: ``x`` float pixels
    ``[B, C, H, W]`` in [0, 1], labels ``y`` ``[B]``; ``seed`` fixes every random start and
    draw. Returns columns (lists of length B): ``clean_correct``, ``robust_<attack>`` for
    FGSM, PGD, the doubled PGD, each sweep eps (``robust_sweep_<i>``), RayS on the decision
    (``robust_blackbox``), the transfer
    (with ``surrogate``) and the baseline (``baseline_correct``, ``baseline_robust``);
    ``grad_<surface>`` / ``grad_dlr_<surface>`` (L2 norm of the CE / DLR input gradient);
    ``logit_change`` (distance of two passes' normalized logits) and ``decision_change``;
    ``robust_traced``, ``silent_success`` and ``loss_change`` (:func:`indicators`)."""
    s = settings
    tick = progress or (lambda fraction, info: None)
    objective = Objective(model, s.surface, s.decision, s.eot)
    k = objective.num_members
    first, second = _passes(objective, x, seed)
    correct = objective.decide(first) == y
    a = first.permute(1, 0, 2).flatten(1)
    b = second.permute(1, 0, 2).flatten(1)
    change = a / (a.norm(dim=1, keepdim=True) + 1e-10) - b / (b.norm(dim=1, keepdim=True) + 1e-10)
    out: dict[str, list] = {
        "label": y.tolist(),
        "clean_correct": correct.tolist(),
        "logit_change": change.norm(dim=1).tolist(),
        "decision_change": (objective.decide(first) != objective.decide(second)).tolist(),
    }
    for surface in surfaces_of(k):
        grad_obj = Objective(model, surface, s.decision, 1)
        out[f"grad_{_column(surface)}"] = _gradient_norms(grad_obj, x, y, "ce", seed).tolist()
        out[f"grad_dlr_{_column(surface)}"] = _gradient_norms(grad_obj, x, y, "dlr", seed).tolist()
    steps = [
        ("fgsm", create_attack("fgsm", eps=s.eps, seed=seed)),
        ("pgd", _pgd(s.eps, s.steps, s.restarts, seed)),
        ("pgd2", _pgd(s.eps, 2 * s.steps, 2 * s.restarts, seed, step_size=s.step_size)),
    ]
    steps += [(f"sweep_{i}", _pgd(e, s.steps, s.restarts, seed)) for i, e in enumerate(s.sweep)]
    # Black-box on the decision itself (hard-label RayS): a vote that is wrong only past the
    # summed logits, or gradients masked by a non-differentiable vote, cannot hide from it.
    steps.append(("blackbox", create_attack("rays", eps=s.eps, queries=s.queries, seed=seed)))
    total = len(steps) + 1 + (surrogate is not None) + (baseline is not None)
    done = 0
    for name, attack in steps:
        tick(done / total, f"check: {name}")
        if name == f"sweep_{SWEEP_AT_EPS}":  # PGD at eps itself: the same attack and seed
            robust = torch.tensor(out["robust_pgd"], device=x.device)
        else:
            robust = _robust(objective, objective, attack, x, y, correct, seed)
        out[f"robust_{name}"] = robust.tolist()
        done += 1
    tick(done / total, "check: indicators")
    traced = _pgd(s.eps, s.steps, s.restarts, seed, keep="loss")
    out.update(indicators(objective, traced, x, y, correct, seed, s.thresholds.incomplete_window))
    done += 1
    if surrogate is not None:
        tick(done / total, "check: transfer")
        crafter = Objective(surrogate, "sum", "vote", 1)
        apgd = create_attack(
            "apgd-ce", eps=s.eps, steps=s.steps, restarts=s.restarts, keep="loss", seed=seed
        )
        out["robust_transfer"] = _robust(objective, crafter, apgd, x, y, correct, seed).tolist()
        done += 1
    if baseline is not None:
        tick(done / total, "check: baseline")
        white = [attack for _, attack in steps[:3]]  # FGSM, PGD, doubled PGD
        out.update(_baseline_evidence(baseline, white, x, y, s.decision, seed))
    tick(1.0, "check: done")
    return out


def _baseline_evidence(
    baseline: nn.Module,
    attacks: list[Any],
    x: torch.Tensor,
    y: torch.Tensor,
    decision: str,
    seed: int,
) -> dict[str, list]:
    """The baseline's columns of :func:`evidence`: ``baseline_correct`` and
    ``baseline_robust`` (correct and robust to every one of ``attacks``, per sample)."""
    base = Objective(baseline, "sum", baseline_decision(decision, baseline), 1)
    with seeded(seed, x.device), torch.no_grad():
        base_correct = base.decide(base.logits(x)) == y
    robust = base_correct
    for attack in attacks:
        robust = robust & _robust(base, base, attack, x, y, robust, seed)
    return {"baseline_correct": base_correct.tolist(), "baseline_robust": robust.tolist()}


def _pgd(
    eps: float,
    steps: int,
    restarts: int,
    seed: int,
    step_size: float | None = None,
    keep: str = "adversarial",
) -> Any:
    return create_attack(
        "pgd", eps=eps, steps=steps, restarts=restarts, seed=seed, keep=keep,
        step_size=step_size if step_size is not None else 2.5 * eps / steps,
    )  # fmt: skip


def loss_change(losses: np.ndarray, window: float) -> float:
    """Pintor et al.'s incomplete-optimization measure of one trace of a maximized loss
    (``[S]`` iterates, NaN where the sample was not in the batch): the rise of its running
    maximum over the last ``window`` fraction of the iterates (at least two), as a fraction
    of the trace's range. 0 for a flat trace or one of fewer than two iterates."""
    v = np.asarray(losses, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return 0.0
    best = np.maximum.accumulate(v)
    span = best[-1] - v.min()
    if not span > 0:
        return 0.0
    k = min(max(math.ceil(window * len(v)), 2), len(v))
    return float((best[-1] - best[-k]) / span)


def indicators(
    objective: Objective,
    attack: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    correct: torch.Tensor,
    seed: int,
    window: float,
) -> dict[str, list]:
    """Pintor et al.'s per-sample indicators of a traceable ``attack`` (the check's: PGD
    with ``keep='loss'``) run, with a :class:`~dmlcli.attacks.base.Trace`, on the samples
    ``correct`` flags: ``robust_traced`` (as :func:`_robust` scores), ``silent_success``
    (an iterate's decision was wrong, the returned point's is right) and ``loss_change``
    (:func:`loss_change` of the restart of highest loss; NaN where not attacked).

    Why ``keep='loss'``: the stored attacks stop per sample at the first wrong decision
    and return that iterate, so with ``keep='adversarial'`` a silent success cannot
    happen. Kept by loss, the returned point is the iterate of highest surface loss; a
    sample whose path crossed the boundary but whose highest-loss point is classified
    correctly shows a loss that does not track the decision (e.g. the summed logits
    against a vote), which any attack returning its best-loss point would miss. On a
    deterministic model the first restart retraces the check's PGD path (same seed) up to
    its first wrong decision, so there a silent success is a sample that PGD breaks."""
    trace = Trace()
    robust = _robust(objective, objective, partial(attack, trace=trace), x, y, correct, seed)
    todo = correct.nonzero().squeeze(1).cpu()
    crossed = torch.zeros(len(y), dtype=torch.bool)
    change = torch.full((len(y),), float("nan"), dtype=torch.float64)
    if len(todo):
        runs = trace.restarts(len(todo))
        crossed[todo] = torch.stack([fooled.any(0) for _, fooled in runs]).any(0)
        peak = torch.stack([loss.nan_to_num(float("-inf")).amax(0) for loss, _ in runs])
        pick = peak.argmax(0).tolist()
        change[todo] = torch.tensor(
            [loss_change(runs[r][0][:, i].numpy(), window) for i, r in enumerate(pick)],
            dtype=torch.float64,
        )
    robust = robust.cpu()
    return {
        "robust_traced": robust.tolist(),
        "silent_success": (crossed & robust).tolist(),
        "loss_change": change.tolist(),
    }


def baseline_decision(decision: str, baseline: nn.Module) -> str:
    """The decision scored on the baseline: the run's, if the baseline has it, else vote."""
    members = int(getattr(baseline, "num_members", 1))
    return decision if decision in list_decisions(members) else "vote"


# -- from evidence to checks --------------------------------------------------------------------
def _grade(value: float, warn_above: float, fail_above: float | None = None) -> str:
    """``pass`` at or below ``warn_above`` (up to rounding), ``fail`` above ``fail_above``,
    else ``warn``; an unmeasurable value (no correct sample) warns."""
    if value is None or math.isnan(value):
        return "warn"
    if fail_above is not None and value > fail_above + _ROUNDING:
        return "fail"
    return "warn" if value > warn_above + _ROUNDING else "pass"


def _pct(mask: pd.Series | np.ndarray, n: int) -> float:
    return 100.0 * float(np.asarray(mask, dtype=bool).sum()) / n if n else math.nan


def _acc(ev: pd.DataFrame, column: str) -> float:
    return 100.0 * float(ev[column].astype(bool).mean()) if len(ev) else math.nan


def _samples(ev: pd.DataFrame, mask: Any) -> list[int]:
    return [int(v) for v in ev.loc[np.asarray(mask, dtype=bool), "sample"]]


def _pgd_name(s: CheckSettings) -> str:
    return f"PGD-{s.steps}" + (f"x{s.restarts}" if s.restarts > 1 else "")


def _pgd2_name(s: CheckSettings) -> str:
    return f"PGD-{2 * s.steps}x{2 * s.restarts}"


def _white(s: CheckSettings) -> str:
    """The white-box attacks of the per-sample comparisons, as the details name them."""
    return f"FGSM, {_pgd_name(s)} and {_pgd2_name(s)}"


def _one_sample(ev: pd.DataFrame) -> float:
    """One sample in points (100 / n): the least threshold of the checks that compare
    counts (iterative, budget, monotonicity, incomplete optimization), so that a single
    sample of a small evaluation never decides them."""
    return 100.0 / len(ev) if len(ev) else 0.0


def _flags(ev: pd.DataFrame, column: str) -> pd.Series:
    return ev[column].astype(bool)


def _traced(ev: pd.DataFrame) -> bool:
    """Whether the evidence has the indicators' columns (:func:`indicators`); parts of an
    older check do not, and then their checks have no rows."""
    return "silent_success" in ev.columns


def _sweep(ev: pd.DataFrame, s: CheckSettings) -> dict[str, list[float]]:
    """The accuracy-vs-eps curve (the metadata's ``sweep``): eps 0 (clean accuracy) and
    each eps of ``s.sweep``, with the % of the samples robust at each."""
    robust = [_acc(ev, "clean_correct")]
    robust += [_acc(ev, f"robust_sweep_{i}") for i in range(len(s.sweep))]
    return {"eps": [0.0, *s.sweep], "robust": robust}


@dataclass(frozen=True)
class Finding:
    """One row of a ``check`` result and the samples behind it, keyed as the result's
    metadata ``samples`` keeps them (empty for a check that names no samples)."""

    check: str
    status: str
    value: float
    threshold: float
    detail: str
    samples: dict[str, list[int]] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The row in the ``check`` schema's column order."""
        return {
            "check": self.check,
            "status": self.status,
            "value": self.value,
            "threshold": self.threshold,
            "detail": self.detail,
        }


#: A check: the evidence of every evaluation sample (with a ``sample`` column) and the
#: settings in, its rows out: none where the evidence lacks its columns, one per surface for
#: the zero-gradient check, else one.
Check = Callable[[pd.DataFrame, CheckSettings], list[Finding]]


# -- the checks, in the order of their rows ---------------------------------------------------
def _iterative(ev: pd.DataFrame, s: CheckSettings) -> list[Finding]:
    """Iterative beats single-step (Carlini et al. 2019): PGD's robust accuracy minus FGSM's,
    in points. Above ``iterative`` (at least one sample) warns, above ``iterative_fail``
    fails: PGD weaker than one step means masked gradients or a bad step size."""
    t = s.thresholds
    fgsm, pgd = _acc(ev, "robust_fgsm"), _acc(ev, "robust_pgd")
    limit = max(t.iterative, _one_sample(ev))
    status = _grade(pgd - fgsm, limit, max(t.iterative_fail, limit))
    detail = (
        f"{_pgd_name(s)} leaves {pgd:.1f}% robust, FGSM {fgsm:.1f}% at eps {eps_text(s.eps)}: "
        + (
            "PGD is weaker than one step (masked gradients or a bad step size)."
            if status != "pass"
            else "PGD is at least as strong as one step."
        )
    )
    return [Finding("iterative vs single-step", status, pgd - fgsm, limit, detail)]


def _iterative_per_sample(ev: pd.DataFrame, s: CheckSettings) -> list[Finding]:
    """Iterative beats single-step per sample (Carlini et al.: compare per sample): the % of
    samples FGSM breaks that PGD leaves robust (``fgsm_not_pgd``). Above
    ``iterative_samples`` (at least one sample) warns: PGD misses adversarials one step
    finds, which an overall accuracy can hide."""
    n = len(ev)
    only = ~_flags(ev, "robust_fgsm") & _flags(ev, "robust_pgd") & _flags(ev, "clean_correct")
    limit = max(s.thresholds.iterative_samples, _one_sample(ev))
    status = _grade(_pct(only, n), limit)
    detail = f"{int(only.sum())} of {n} samples broken by FGSM survive {_pgd_name(s)}" + (
        ": PGD misses adversarials one step finds." if status != "pass" else "."
    )
    check, samples = "iterative vs single-step, per sample", {"fgsm_not_pgd": _samples(ev, only)}
    return [Finding(check, status, _pct(only, n), limit, detail, samples)]


def _more_budget(ev: pd.DataFrame, s: CheckSettings) -> list[Finding]:
    """Doubling PGD's steps and restarts (same step size) changes little (Carlini et al.):
    the points of robust accuracy the doubled run gains. Above ``budget`` (at least one
    sample) warns: PGD has not converged, so its number overstates robustness."""
    pgd, pgd2 = _acc(ev, "robust_pgd"), _acc(ev, "robust_pgd2")
    limit = max(s.thresholds.budget, _one_sample(ev))
    status = _grade(pgd - pgd2, limit)
    detail = (
        f"{_pgd2_name(s)} (same step size) leaves {pgd2:.1f}% robust, {_pgd_name(s)} "
        f"{pgd:.1f}%: "
        + ("not converged; raise --steps and --restarts." if status != "pass" else "converged.")
    )
    return [Finding("more budget", status, pgd - pgd2, limit, detail)]


def _silent_success(ev: pd.DataFrame, s: CheckSettings) -> list[Finding]:
    """Pintor et al.'s silent success on the traced PGD (``keep='loss'``, :func:`indicators`):
    the % of samples with an iterate of wrong decision whose highest-loss point is classified
    correctly (``silent_success``). Any warns (``silent_success``): the stored attacks count
    them as broken, but there the loss does not track the decision and an attack returning
    its highest-loss point misses them. No row without the indicators' columns."""
    if not _traced(ev):
        return []
    n, limit = len(ev), s.thresholds.silent_success
    silent = _flags(ev, "silent_success")
    value = _pct(silent, n)
    status = _grade(value, limit)
    detail = (
        f"{int(silent.sum())} of {n} samples had a {_pgd_name(s)} iterate with a wrong "
        "decision but a highest-loss point (keep='loss') classified correctly"
        + (
            ": the loss does not track the decision there; an attack that returns its "
            "highest-loss point (a transfer) misses them (the stored attacks keep the first "
            "fooling iterate and count them as broken)."
            if status != "pass"
            else "."
        )
    )
    samples = {"silent_success": _samples(ev, silent)}
    return [Finding("silent success", status, value, limit, detail, samples)]


def _incomplete(ev: pd.DataFrame, s: CheckSettings) -> list[Finding]:
    """Pintor et al.'s incomplete optimization on the traced PGD: the % of samples it never
    fooled whose best loss still rose by over ``incomplete_tolerance`` of its range in the
    last ``incomplete_window`` of the steps (``incomplete``). Above ``incomplete`` (at least
    one sample) warns: more steps may break them. No row without the indicators' columns."""
    if not _traced(ev):
        return []
    t, n = s.thresholds, len(ev)
    failed = _flags(ev, "robust_traced") & ~_flags(ev, "silent_success")
    moving = failed & (ev["loss_change"].fillna(0.0) > t.incomplete_tolerance)
    limit = max(t.incomplete, _one_sample(ev))
    value = _pct(moving, n)
    status = _grade(value, limit)
    detail = (
        f"{int(moving.sum())} of the {int(failed.sum())} samples {_pgd_name(s)} never fools "
        f"have a best loss still rising by over {t.incomplete_tolerance:g} of its range in "
        f"the last {t.incomplete_window:.0%} of the steps"
        + (
            ": not converged; more steps at this step size (see 'more budget') or a "
            "step-size schedule (APGD) may break them."
            if status != "pass"
            else "."
        )
    )
    samples = {"incomplete": _samples(ev, moving)}
    return [Finding("incomplete optimization", status, value, limit, detail, samples)]


def _large_eps(ev: pd.DataFrame, s: CheckSettings) -> list[Finding]:
    """Accuracy reaches ~0 at a large eps (Carlini et al.): PGD's % robust at the large eps.
    Above ``large_eps`` fails (Pintor et al.'s unconstrained attack failure): an attack that
    fails even almost unconstrained is broken or facing masked gradients."""
    limit = s.thresholds.large_eps
    robust = _sweep(ev, s)["robust"][-1]
    status = _grade(robust, limit, limit)
    detail = f"{_pgd_name(s)} leaves {robust:.1f}% robust at eps {eps_text(s.large_eps)}: " + (
        "even a huge budget fails (masked gradients or a broken attack)."
        if status != "pass"
        else "an almost unconstrained attack succeeds."
    )
    return [Finding("large eps", status, robust, limit, detail)]


def _monotone(ev: pd.DataFrame, s: CheckSettings) -> list[Finding]:
    """Accuracy falls with eps (Carlini et al.): the largest rise of robust accuracy from one
    eps of the sweep to the next, in points (0 when none). Above ``monotone`` (at least one
    sample) warns: more budget must never help the model. A plateau also warns: two steps
    in a row where no sample falls while over ``large_eps`` % are left to break (one flat
    step is noise)."""
    t, n = s.thresholds, len(ev)
    sweep = _sweep(ev, s)
    eps_all, curve = sweep["eps"], sweep["robust"]
    rises = [b - a for a, b in zip(curve, curve[1:], strict=False)]
    at = int(np.nanargmax(rises)) if n else 0
    flat = [r >= 0 and a > t.large_eps for a, r in zip(curve, rises, strict=False)]
    stalls = [i for i in range(len(flat) - 1) if flat[i] and flat[i + 1]]
    limit = max(t.monotone, _one_sample(ev))
    status = _grade(rises[at], limit)
    names = "/".join(eps_text(v) if v else "0" for v in eps_all)
    if status != "pass":
        verdict = (
            f"; it rises from eps {eps_text(eps_all[at]) if at else '0'} to "
            f"{eps_text(eps_all[at + 1])}: more budget must never help the model."
        )
    elif stalls:
        status, i = "warn", stalls[0]
        verdict = (
            f"; no sample falls from eps {eps_text(eps_all[i]) if i else '0'} to "
            f"{eps_text(eps_all[i + 2])}: more budget must break more samples."
        )
    else:
        verdict = "; it falls with eps."
    detail = f"robust % at eps {names}: " + "/".join(f"{a:.1f}" for a in curve) + verdict
    return [Finding("monotone in eps", status, max(rises[at], 0.0), limit, detail)]


def _beats_white_box(
    ev: pd.DataFrame, s: CheckSettings, column: str, check: str, attack: str
) -> list[Finding]:
    """The row of an attack (robust flags in ``column``) that must never break a sample that
    FGSM and both PGDs leave robust: the % of such samples (``<column without robust_>_only``).
    Above ``blackbox`` warns, above ``blackbox_fail`` fails (both 0: any fails). No row
    without the column."""
    if column not in ev.columns:
        return []
    t, n = s.thresholds, len(ev)
    correct = _flags(ev, "clean_correct")
    white = _flags(ev, "robust_fgsm") & _flags(ev, "robust_pgd") & _flags(ev, "robust_pgd2")
    white_broken = correct & ~white
    only = correct & ~_flags(ev, column) & ~white_broken
    status = _grade(_pct(only, n), t.blackbox, t.blackbox_fail)
    detail = (
        f"{attack} breaks {int(only.sum())} of {n} samples that {_white(s)} leave robust "
        f"(fail above {t.blackbox_fail:g}%)"
        + (": the white-box attacks miss adversarials." if status != "pass" else ".")
    )
    samples = {column.removeprefix("robust_") + "_only": _samples(ev, only)}
    return [Finding(check, status, _pct(only, n), t.blackbox, detail, samples)]


def _blackbox(ev: pd.DataFrame, s: CheckSettings) -> list[Finding]:
    """White-box beats black-box, per sample (Carlini et al.; AutoAttack flags a black-box
    attack lowering the white-box robust accuracy): RayS on the decision itself
    (``blackbox_only``). An adversarial the gradient attacks missed within the same budget
    proves them wrong on that sample, so any fails (``blackbox``, ``blackbox_fail``)."""
    attack = f"RayS ({s.queries} queries, hard-label)"
    return _beats_white_box(ev, s, "robust_blackbox", "black-box vs white-box", attack)


def _transfer(ev: pd.DataFrame, s: CheckSettings) -> list[Finding]:
    """White-box beats transfer, per sample (Carlini et al.; Pintor et al.'s transfer
    failure): APGD-CE crafted on the surrogate (``transfer_only``); any fails, as for the
    black-box check (``blackbox``, ``blackbox_fail``). No row without a surrogate."""
    attack = "APGD-CE from the surrogate"
    return _beats_white_box(ev, s, "robust_transfer", "transfer vs white-box", attack)


def _zero_gradients(ev: pd.DataFrame, s: CheckSettings) -> list[Finding]:
    """Zero input gradients (AutoAttack flags any; Pintor et al.'s unavailable gradients), one
    row per surface measured: the % of correctly classified samples whose CE input gradient
    is below ``ZERO_GRADIENT`` (``zero_gradient_<surface>``). Above ``zero_gradient`` warns,
    above ``zero_gradient_fail`` fails; the detail tells no gradient at all (zero under DLR
    too) from a saturated cross-entropy."""
    t = s.thresholds
    correct = _flags(ev, "clean_correct")
    n_correct = int(correct.sum())
    out = []
    for col in [c for c in ev.columns if c.startswith("grad_") and not c.startswith("grad_dlr_")]:
        key = col.removeprefix("grad_")
        zero = correct & (ev[col] < ZERO_GRADIENT)
        zero_dlr = zero & (ev[f"grad_dlr_{key}"] < ZERO_GRADIENT)
        status = _grade(_pct(zero, n_correct), t.zero_gradient, t.zero_gradient_fail)
        cause = "."
        if status != "pass":
            cause = (
                ": no gradient reaches the input (non-differentiable parts; try BPDA or "
                "gradient-free attacks)."
                if int(zero_dlr.sum()) == int(zero.sum())
                else ": the cross-entropy saturates; use a margin loss (DLR, CW)."
            )
        detail = (
            f"{int(zero.sum())} of {n_correct} correct samples have a zero CE input gradient "
            f"({int(zero_dlr.sum())} also under DLR, fail above {t.zero_gradient_fail:g}%)" + cause
        )
        check = f"zero gradients: {key.replace('_', '-')}"
        samples = {f"zero_gradient_{key}": _samples(ev, zero)}
        out.append(Finding(check, status, _pct(zero, n_correct), t.zero_gradient, detail, samples))
    return out


def _randomness(ev: pd.DataFrame, s: CheckSettings) -> list[Finding]:
    """A randomized model (AutoAttack's ``check_randomized``): two passes whose normalized
    logits differ by more than ``randomness`` on any sample warn, for its attacks need EOT
    and its scores several draws. The value is the % of samples whose decision changed."""
    n = len(ev)
    moved = ev["logit_change"] > s.thresholds.randomness
    flips = _flags(ev, "decision_change")
    detail = (
        f"two passes differ on {int(moved.sum())} of {n} samples' logits and change "
        f"{int(flips.sum())} decisions: attack with EOT, score over several draws."
        if moved.any()
        else "two passes give the same logits: a deterministic model."
    )
    return [Finding("randomness", "warn" if moved.any() else "pass", _pct(flips, n), 0.0, detail)]


def _baseline(ev: pd.DataFrame, s: CheckSettings) -> list[Finding]:
    """The same attacks break a similar undefended model (Carlini et al.): the % of samples
    FGSM and both PGDs together leave robust on the baseline. Above ``baseline`` warns: an
    undefended model that looks robust means the attacks are broken. No row without a
    baseline."""
    if "baseline_robust" not in ev.columns:
        return []
    limit = s.thresholds.baseline
    value = _acc(ev, "baseline_robust")
    status = _grade(value, limit)
    detail = (
        f"{_white(s)} leave the baseline {value:.1f}% robust (clean "
        f"{_acc(ev, 'baseline_correct'):.1f}%): "
        + (
            "it looks robust, so the attacks may be broken."
            if status != "pass"
            else "the attacks break an undefended model."
        )
    )
    return [Finding("baseline broken", status, value, limit, detail)]


#: The checks in the order of their rows (key, function): a new check is one function here.
CHECKS: tuple[tuple[str, Check], ...] = (
    ("iterative", _iterative),
    ("iterative_samples", _iterative_per_sample),
    ("budget", _more_budget),
    ("silent_success", _silent_success),
    ("incomplete", _incomplete),
    ("large_eps", _large_eps),
    ("monotone", _monotone),
    ("blackbox", _blackbox),
    ("transfer", _transfer),
    ("zero_gradient", _zero_gradients),
    ("randomness", _randomness),
    ("baseline", _baseline),
)


def summarize(ev: pd.DataFrame, settings: CheckSettings) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per check of :data:`CHECKS`, in its order (``check``, ``status``, ``value``,
    ``threshold``, ``detail``), from the per-sample ``evidence`` of every evaluation sample
    (with a ``sample`` column), and the metadata: the samples behind each per-sample check
    (``samples``) and the accuracy-vs-eps curve (``sweep``). Values are points of robust
    accuracy or % of the samples."""
    findings = [found for _, check in CHECKS for found in check(ev, settings)]
    samples = {key: ids for found in findings for key, ids in found.samples.items()}
    rows = pd.DataFrame([found.row() for found in findings])
    return rows, {"samples": samples, "sweep": _sweep(ev, settings)}


def check_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: CheckSettings,
    *,
    seed: int = 0,
    baseline: nn.Module | None = None,
    surrogate: nn.Module | None = None,
) -> pd.DataFrame:
    """The check rows of ``model`` on float pixels ``x`` ``[B, C, H, W]`` and labels ``y``
    (one batch, samples numbered 0..B-1): :func:`evidence` then :func:`summarize`."""
    cols = evidence(model, x, y, settings, seed=seed, baseline=baseline, surrogate=surrogate)
    ev = pd.DataFrame({"sample": list(range(len(y))), **cols})
    return summarize(ev, settings)[0]


# -- the stored result ----------------------------------------------------------------------------
def check_setting(
    run: Run,
    settings: CheckSettings,
    n: int,
    seed: int,
    baseline: Run | None = None,
    surrogate: Run | None = None,
) -> dict[str, Any]:
    """The identity of a ``check`` result: the run and its checkpoint digest, samples, seed,
    the attack set and thresholds, and the baseline's and surrogate's runs and digests."""
    return {
        **identity(run, n, seed),
        "kind": "check",
        **settings.setting(),
        "baseline": None if baseline is None else [baseline.name, baseline.checkpoint],
        "surrogate": None if surrogate is None else [surrogate.name, surrogate.checkpoint],
    }


def check_job(
    run: Run,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    settings: CheckSettings,
    *,
    seed: int,
    baseline: Run | None = None,
    surrogate: Run | None = None,
    device: str | torch.device = "cpu",
) -> Job:
    """The sanity checks of ``run`` as one ``check`` result: per-sample evidence computed in
    blocks of ``settings.batch_size`` (kept as parts; block seed ``seed + start //
    batch_size``), then one row per check. ``images`` uint8 ``[N, C, H, W]`` (the test
    split), ``labels`` ``[N]``, ``indices`` ``[n]`` (the seeded evaluation subset)."""
    Objective(run.model, settings.surface, settings.decision, settings.eot)  # checks both
    n = len(indices)
    setting = check_setting(run, settings, n, seed, baseline, surrogate)

    def compute(start: int, stop: int, tick: Tick) -> tuple[dict, dict]:
        idx = indices[start:stop]
        x = to_float(images[idx]).to(device)
        y = labels[idx].to(device)
        cols = evidence(
            run.model, x, y, settings, seed=batch_seed(seed, start, settings.batch_size),
            baseline=baseline.model if baseline else None,
            surrogate=surrogate.model if surrogate else None, progress=tick,
        )  # fmt: skip
        return {"rows": pd.DataFrame({"sample": idx.tolist(), **cols})}, {}

    def finish(ev: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, dict]]:
        rows, meta = summarize(ev, settings)
        rows["run"], rows["checkpoint"], rows["dataset"] = run.name, run.checkpoint, run.dataset
        rows["n"], rows["seed"], rows["eps"] = n, seed, settings.eps
        rows["large_eps"], rows["decision"] = settings.large_eps, settings.decision
        rows["baseline"] = baseline.name if baseline else None
        rows["surrogate"] = surrogate.name if surrogate else None
        return {"check": (results.frame("check", rows), meta)}

    def info(ev: pd.DataFrame) -> str:
        return f"PGD robust {100.0 * ev['robust_pgd'].mean():.1f}%"

    return Job(
        kind="check",
        run=run.name,
        setting=setting,
        ids=indices.tolist(),
        compute=compute,
        size=settings.batch_size,
        label=f"sanity checks eps {eps_text(settings.eps)}",
        columns=["clean_correct", "robust_fgsm", "robust_pgd", "robust_pgd2", "logit_change"],
        info=info,
        finish=finish,
    )


def status_counts(rows: pd.DataFrame) -> dict[str, int]:
    """How many checks passed, warned and failed."""
    return {s: int((rows["status"] == s).sum()) for s in STATUSES}
