"""Adaptive attack on the ensemble's detectors (A.4 disagreement, A.5.1 uncertainty).

The detectors of the appendix flag an input when the members disagree (Eq. 8) or when the
variance of their outputs across members and R-DML draws is high. An attacker who knows this
does not attack the summed logits (which typically fools a few high-gain members and leaves
the others dissenting); it drives **every member to the same wrong class**: the target is the
runner-up of the summed logits (the highest-scoring class other than the label), and the loss
is the sum over members of each member's cross-entropy toward the target (or a per-member
margin loss). Against the uncertainty detector it also matches the variance across
members x draws of the adversarial input to that of its clean source (so the adversarial looks
exactly as (un)certain as a benign input), with the gradient averaged over ``eot`` draws of a
randomized head (expectation over transformation, Athalye et al. 2018).

Every function works on any module mapping pixels ``[B, C, H, W]`` in [0, 1] to member logits
``[K, B, classes]``; for :class:`~dmlcli.models.ensemble.Ensemble` the backbone runs once per
step and only the (random) head is drawn ``eot`` times.

:class:`AgreementPGD` shares :class:`~dmlcli.attacks.base.AttackBase`'s call (objective, detach,
output checks, progress) but keeps its own randomness: its random starts come from its own
generator (``seed + i`` for target ``i``) and a randomized head draws from the caller's RNG
(detection seeds every batch), so it does not re-seed torch's global RNG; and a ``target``
replaces the runner-up although the attack is not "targeted" in the registry's sense.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dmlcli.attacks.base import AttackBase, CallProgress, Objective, ranked_wrong
from dmlcli.errors import DmlError

LOSSES = ("ce", "margin")
_VAR_FLOOR = 1e-10  # inside log(var): finite for deterministic, unanimous outputs


def member_draws(model: nn.Module, x: torch.Tensor, draws: int = 1) -> torch.Tensor:
    """Member logits of ``draws`` forward passes: ``x`` ``[B, C, H, W]`` -> ``[T, K, B, classes]``.

    For an ensemble with a randomized head (R-DML Eq. 5, AUG-DML A.8) every draw is a fresh
    sample of the head's noise; the deterministic backbone runs once.
    """
    if draws < 1:
        raise DmlError(f"draws must be at least 1; got {draws}")
    if draws == 1:
        return model(x)[None]
    if hasattr(model, "features") and hasattr(model, "head"):
        z = model.features(x)
        return torch.stack([model.head(z) for _ in range(draws)])
    return torch.stack([model(x) for _ in range(draws)])


def softmax_variance(draw_logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of A.5.1: ``[T, K, B, C]`` -> ``[B]``.

    The variance of the softmax outputs across the ``T x K`` members x draws (population
    variance), averaged over the classes. Zero when ``T x K = 1``.
    """
    t, k, b, c = draw_logits.shape
    probs = draw_logits.softmax(-1).reshape(t * k, b, c)
    return probs.var(0, unbiased=False).mean(-1)


def runner_up(draw_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The wrong class with the largest summed logit: ``[T, K, B, C]``, ``[B]`` -> ``[B]``."""
    return ranked_wrong(draw_logits, y, 1)[0]


def agreement_loss(
    draw_logits: torch.Tensor, target: torch.Tensor, loss: str = "ce", kappa: float = 1.0
) -> torch.Tensor:
    """Per-sample loss to minimize, ``[T, K, B, C]`` -> ``[B]``: every member toward ``target``.

    ``ce``: sum over members of CE(member, target); ``margin``: sum over members of
    ``max(max_{j != t} z_kj - z_kt, -kappa)``. Both averaged over the draws.
    """
    t, k, b, c = draw_logits.shape
    if loss == "ce":
        flat = draw_logits.reshape(t * k * b, c)
        per = F.cross_entropy(flat, target.repeat(t * k), reduction="none").view(t, k, b)
    elif loss == "margin":
        onehot = F.one_hot(target, c).bool()[None, None]
        own = draw_logits.gather(-1, target[None, None, :, None].expand(t, k, b, 1))[..., 0]
        other = draw_logits.masked_fill(onehot, float("-inf")).max(-1).values
        per = (other - own).clamp(min=-kappa)
    else:
        raise DmlError(f"unknown adaptive loss {loss!r}; choose one of {', '.join(LOSSES)}")
    return per.sum(1).mean(0)


def _unit(g: torch.Tensor) -> torch.Tensor:
    """Each sample's gradient scaled to unit L2 norm (zero stays zero)."""
    return g / g.flatten(1).norm(dim=1).clamp_min(1e-20).view(-1, *[1] * (g.dim() - 1))


def _project(x: torch.Tensor, x0: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.min(torch.max(x, x0 - eps), x0 + eps).clamp(0.0, 1.0)


def _random_start(x0: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = (torch.rand(x0.shape, generator=gen) * 2 - 1) * eps
    return _project(x0 + noise.to(x0.device, x0.dtype), x0, eps)


def _check_common(eps: float, steps: int, step_size: float | None) -> None:
    if not (math.isfinite(eps) and 0 <= eps <= 1):
        raise DmlError(f"eps must be in [0, 1] (pixel units); got {eps}")
    if steps < 1:
        raise DmlError(f"--steps must be at least 1; got {steps}")
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise DmlError(f"--step-size must be > 0; got {step_size}")


@dataclass
class AgreementPGD(AttackBase):
    """L-inf PGD that makes all members agree on one wrong class (adaptive, A.4 / A.5.1).

    The adaptive attack of the paper's appendix on its detectors: PGD (Madry et al. 2018)
    with sign steps on the loss of :func:`agreement_loss` (every member toward one target,
    the runner-up of the summed logits), optionally matching the softmax variance of A.5.1,
    with gradients averaged over ``eot`` head draws (expectation over transformation,
    Athalye et al. 2018) for a randomized head.

    Args:
        eps: L-inf budget in pixel units.
        steps: PGD iterations; ``step_size`` defaults to ``2.5 * eps / steps``.
        loss: ``ce`` or ``margin`` (see :func:`agreement_loss`); ``kappa`` caps the margin.
        var_weight: 0 attacks the vote detector only. Above 0 the step also follows the
            gradient of ``(log u(x_adv) - log u(x))^2``, ``u`` the softmax variance across
            members x draws (:func:`softmax_variance`): both gradients are scaled to unit
            L2 norm per sample and summed with this weight on the variance term, for the
            samples whose vote is already wrong (the others follow the agreement loss alone).
        eot: head draws per step (expectation over transformation for randomized heads).
        random_start: start uniformly inside the eps-ball (seeded by ``seed``).
        targets: how many target classes to try, in the order of the clean summed logits
            (runner-up first), each a full run from its own random start (``seed + i``);
            per sample the best iterate over all of them is kept (as APGD-T restarts over
            targets). 1: the runner-up only.

    It follows the protocol of :mod:`dmlcli.attacks`: ``attack(model, x [B,C,H,W], y [B],
    target=None) -> x_adv``; ``target`` overrides the runner-up; ``model`` may be an
    :class:`~dmlcli.attacks.base.Objective` (its model is used; the surface here is every
    member; its decision is what counts as fooled). The iterate kept per sample is one whose
    decision is wrong if any is, first; then, with ``var_weight = 0``, the one where most
    members vote the target (ties: lower loss); with ``var_weight > 0``, among those where
    the decision is wrong, the one whose uncertainty is closest to the clean input's.

    Shape:
        - x: ``[B, C, H, W]``, pixels in [0, 1].
        - y: ``[B]`` labels.
        - target: ``[B]`` or None (None: the runner-up, or the ``targets`` best wrong classes).
        - returns: ``[B, C, H, W]`` in [0, 1], within ``eps`` of ``x`` (L-inf).

    Examples:
        >>> attack = AgreementPGD(eps=8 / 255, steps=5, var_weight=1.0, eot=2)
        >>> x_adv = attack(ensemble, x, y)
        >>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6)
        True
    """

    eps: float
    steps: int = 40
    step_size: float | None = None
    loss: str = "ce"
    kappa: float = 1.0
    var_weight: float = 0.0
    eot: int = 1
    random_start: bool = True
    seed: int = 0
    targets: int = 1
    name: str = "adaptive"
    norm = "linf"
    targeted = False
    reseed = False  # own generator for random starts; head draws on the caller's RNG

    def __post_init__(self) -> None:
        _check_common(self.eps, self.steps, self.step_size)
        if self.loss not in LOSSES:
            raise DmlError(
                f"unknown adaptive loss {self.loss!r}; choose one of {', '.join(LOSSES)}"
            )
        if self.eot < 1:
            raise DmlError(f"--eot must be at least 1; got {self.eot}")
        if not (math.isfinite(self.var_weight) and self.var_weight >= 0):
            raise DmlError(f"--var-weight must be >= 0; got {self.var_weight}")
        if self.targets < 1:
            raise DmlError(f"--adaptive-targets must be at least 1; got {self.targets}")

    def setting(self) -> dict[str, Any]:
        return {**super().setting(), "norm": self.norm}

    def resolve_target(
        self,
        objective: Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """A given ``target`` replaces the runner-up (None: ranked from the clean logits)."""
        return target

    def forward(
        self,
        objective: Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        progress: CallProgress,
    ) -> torch.Tensor:
        model = objective.model  # every member is attacked, whatever the objective's surface
        x0 = x
        if self.eps == 0:
            return x0.clone()
        with torch.no_grad():
            clean = member_draws(model, x0, self.eot)
            log_u0 = torch.log(softmax_variance(clean) + _VAR_FLOOR)
        if target is not None:
            order = target[None]
        else:
            order = ranked_wrong(clean, y, self.targets)
        best = x0.clone()
        best_key = torch.full((len(x0),), -1, device=x0.device)
        best_value = torch.full((len(x0),), float("inf"), device=x0.device)
        for i, t in enumerate(order):

            def step_done(step: int, i: int = i) -> None:
                info = f"{self.name}: target {i + 1}/{len(order)}, step {step}/{self.steps}"
                progress.steps(i * self.steps + step, len(order) * self.steps, info)

            adv, key, value = self._run(
                model, objective.decide, x0, y, t, log_u0, self.seed + i, step_done
            )
            better = (key > best_key) | ((key == best_key) & (value < best_value))
            best[better] = adv[better]
            best_key = torch.where(better, key, best_key)
            best_value = torch.where(better, value, best_value)
            progress((i + 1) / len(order), f"{self.name}: target {i + 1}/{len(order)} done")
        return best

    def _run(
        self,
        model: nn.Module,
        decide: Callable[[torch.Tensor], torch.Tensor],
        x0: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor,
        log_u0: torch.Tensor,
        seed: int,
        step_done: Callable[[int], None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One run toward ``target`` ``[B]``: the kept iterate and its (key, value) per sample
        (higher key wins, then lower value; see the class docstring); ``decide`` maps member
        logits ``[K, B, C]`` to the decision ``[B]`` (the objective's). ``step_done(i)`` after
        step ``i`` (1-based) of ``steps``."""
        alpha = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        match = self.var_weight > 0
        adv = _random_start(x0, self.eps, seed) if self.random_start else x0.clone()
        best = adv.clone()
        best_key = torch.full((len(x0),), -1, device=x0.device)
        best_value = torch.full((len(x0),), float("inf"), device=x0.device)
        for step in range(self.steps + 1):
            adv.requires_grad_(True)
            draws = member_draws(model, adv, self.eot)
            loss = agreement_loss(draws, target, self.loss, self.kappa)
            gap = (torch.log(softmax_variance(draws) + _VAR_FLOOR) - log_u0).pow(2)
            with torch.no_grad():
                mean = draws.mean(0)
                wrong = (decide(mean) != y).long()
                if match:  # decision fooled first, then the closest variance to the clean's
                    key = wrong
                    value = torch.where(key.bool(), gap, loss)
                else:  # decision fooled first, then most members on the target, lowest loss
                    key = wrong * (len(mean) + 1) + (mean.argmax(-1) == target).sum(0)
                    value = loss
                better = (key > best_key) | ((key == best_key) & (value < best_value))
                best[better] = adv.detach()[better]
                best_key = torch.where(better, key, best_key)
                best_value = torch.where(better, value.detach(), best_value)
            if step == self.steps:
                break
            if match:
                (g_loss,) = torch.autograd.grad(loss.sum(), adv, retain_graph=True)
                (g_gap,) = torch.autograd.grad(gap.sum(), adv)
                fooled = key.view(-1, *[1] * (adv.dim() - 1)).to(adv.dtype)
                grad = _unit(g_loss) + self.var_weight * fooled * _unit(g_gap)
            else:
                (grad,) = torch.autograd.grad(loss.sum(), adv)
            with torch.no_grad():
                adv = _project(adv.detach() - alpha * grad.sign(), x0, self.eps)
            if step_done is not None:
                step_done(step + 1)
        return best.detach(), best_key, best_value.detach()
