"""ARC (Dbouk & Shanbhag, ICML 2022): member-by-member boundary steps on ensembles.

Dbouk & Shanbhag, "Adversarial Vulnerability of Randomized Ensembles", ICML 2022,
arXiv:2206.06737; reference code ``hsndbk4/ARC`` (``attack.py``: ``attack_ARC_linf`` and
``attack_ARC_l2``; ``eval_robustness_*_sweep.py``: 10 iterations, ``eta = 2/255`` at
``eps = 8/255``, no random start by default).

Gradient ascent on an ensemble's expected loss can be stuck where the members' gradients
cancel. ARC instead visits the members in order and, for each, takes a DeepFool step toward
that member's nearest (linearized) decision boundary, sized so that it does not undo the
steps taken for the members before it in the same iteration, and accepts a step only if the
defender's objective does not get better:

1. For member k at the current point, with logits ``f`` and top class ``m``, every other
   class ``j`` gives ``w_j = grad(f_m - f_j)`` and the distance
   ``zeta_j = |f_m - f_j| / ||w_j||_*`` (``*`` the dual norm: L1 for L-inf, L2 for L2);
   ``zeta, g`` belong to the nearest ``j``, ``g = -sign(w_j)`` (L-inf) or ``-w_j/||w_j||``
   (L2).
2. ``beta = eta`` (the local step size); for every member after the first, if ``zeta <
   eta``: ``beta = eta / (eta - zeta) * |zeta - <g_2, delta_local>| + rho``, ``g_2 =
   -w_j/||w_j||_*``, ``rho = 0.05 eps`` (the step crosses this member's boundary by a
   margin without undoing the local perturbation).
3. ``delta_hat = delta_local + beta g`` rescaled to norm ``eta``; the candidate
   ``delta_min + delta_hat`` is projected onto the eps-ball and [0, 1]; ``delta_local``
   becomes ``delta_hat`` if the defender's objective at the candidate is not higher.
4. After all members: ``delta_min + delta_local`` (projected) replaces ``delta_min`` under
   the same rule.

The defender's objective is the correctness of the objective's decision (the vote): 1 or 0,
or for a randomized head the fraction of ``eot`` head draws (:meth:`Objective.draws`) whose
decision is ``y`` (the reference's expected accuracy of a randomized ensemble, whose members
are sampled with probabilities ``alpha``). The members' logits are the mean over those draws.
Members are visited in their order (the reference sorts them by ``alpha``, all equal here).

Differences from the reference: success is the objective's decision, checked with
:meth:`Objective.success` at every accepted point, and a sample stops at its first fooling
point; the candidates and iterates are projected with the package's :func:`project`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from dmlcli.attacks.base import (
    AttackBase,
    CallProgress,
    Objective,
    check_budget,
    flat_norm,
    project,
    random_start,
)
from dmlcli.errors import DmlError

_TINY = 1e-10  # the reference's guard in ``zeta`` and the norms


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


@dataclass
class ARC(AttackBase):
    """Adversarial attack on (randomized) ensembles by member-wise boundary crossing (Dbouk &
    Shanbhag, ICML 2022, "Adversarial Vulnerability of Randomized Ensembles",
    arXiv:2206.06737). See the module docstring for the step rule.

    Args:
        eps: budget in pixel units, in ``norm`` (``linf``: in [0, 1]; ``l2``: >= 0).
        steps: outer iterations, each visiting every member once (the reference's 10).
        step_size: ``eta``, the norm of the local perturbation; None: ``eps / 4`` (the
            reference's ``2/255`` at ``eps = 8/255``).
        norm: ``linf`` or ``l2``.
        random_start: start from a random point of the eps-ball (the reference's
            ``--rand-init``, off by default).
        seed: fixes the random start (and a randomized head's draws).

    Returns, per sample, the first accepted point whose decision is wrong (confirmed by
    :meth:`Objective.success`), else the last accepted point (the one of lowest defender
    objective: accepted points never raise it).

    Shape:
        - x: ``[B, C, H, W]``, pixels in [0, 1].
        - y: ``[B]`` labels.
        - model: member logits ``[K, B, classes]`` (or ``[B, classes]``, K = 1).
        - returns: ``[B, C, H, W]`` in [0, 1], within ``eps`` of ``x`` in ``norm``.

    Examples:
        >>> attack = create_attack("arc", eps=8 / 255, steps=10)
        >>> x_adv = attack(Objective(ensemble, "sum", "vote"), x, y)
        >>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6)
        True
    """

    eps: float
    steps: int = 10
    step_size: float | None = None
    norm: str = "linf"
    random_start: bool = False
    seed: int = 0
    name: str = "arc"
    targeted = False

    def __post_init__(self) -> None:
        check_budget(self.norm, self.eps, self.name)
        if not isinstance(self.steps, int) or self.steps < 1:
            raise DmlError(f"{self.name}: steps must be an integer >= 1; got {self.steps}")
        if self.step_size is not None and not (
            math.isfinite(self.step_size) and self.step_size > 0
        ):
            raise DmlError(f"{self.name}: step size must be > 0; got {self.step_size}")

    def setting(self) -> dict[str, Any]:
        return {**super().setting(), "step_size": self.eta}

    @property
    def eta(self) -> float:
        """The local step size ``eta``."""
        return self.step_size if self.step_size is not None else self.eps / 4

    def forward(
        self,
        objective: Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        progress: CallProgress,
    ) -> torch.Tensor:
        out = x.clone()
        with torch.no_grad():
            logits = objective.logits(x)
        done = objective.success(x, logits, y, None)
        if self.eps == 0 or len(x) == 0:
            return out
        members = logits.shape[0]
        delta_min = torch.zeros_like(x)
        if self.random_start:
            delta_min = random_start(x, self.eps, self.norm) - x
            x0 = x + delta_min
            with torch.no_grad():
                hit = objective.success(x0, objective.logits(x0), y, None) & ~done
            out[hit], done = x0[hit], done | hit
        loss_min = self._defender(objective, x + delta_min, y)
        for step in range(self.steps):
            idx = (~done).nonzero().squeeze(1)
            if len(idx) == 0:
                break
            xs, ys, d_min = x[idx], y[idx], delta_min[idx]
            d_local = torch.zeros_like(xs)
            loss_local = loss_min[idx].clone()
            for k in range(members):
                zeta, g, g2 = self._nearest_boundary(objective, xs + d_min + d_local, k)
                beta = torch.full_like(zeta, self.eta)
                if k > 0:
                    dot = (g2 * d_local).flatten(1).sum(1)
                    corrected = self.eta / (self.eta - zeta + _TINY) * (zeta - dot).abs()
                    corrected = corrected + 0.05 * self.eps
                    beta = torch.where(zeta < self.eta, corrected, beta)
                hat = d_local + _view(beta, g) * g
                hat = self.eta * hat / _view(flat_norm(hat, self.norm) + _TINY, hat)
                cand = project(xs + d_min + hat, xs, self.eps, self.norm)
                new = self._defender(objective, cand, ys)
                accept = new <= loss_local
                d_local[accept] = hat[accept]
                loss_local = torch.minimum(loss_local, new)
            cand = project(xs + d_min + d_local, xs, self.eps, self.norm)
            new = self._defender(objective, cand, ys)
            accept = new <= loss_min[idx]
            delta_min[idx[accept]] = (cand - xs)[accept]
            loss_min[idx] = torch.minimum(loss_min[idx], new)
            x_acc = x[idx] + delta_min[idx]
            with torch.no_grad():
                fooled = objective.success(x_acc, objective.logits(x_acc), ys, None) & accept
            out[idx[fooled]] = x_acc[fooled]
            done[idx[fooled]] = True
            progress.steps(step + 1, self.steps, f"{self.name}: step {step + 1}/{self.steps}")
        rest = (~done).nonzero().squeeze(1)
        out[rest] = project(x[rest] + delta_min[rest], x[rest], self.eps, self.norm)
        return out

    @torch.no_grad()
    def _defender(self, objective: Objective, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The defender's objective ``[B]``: the fraction of head draws whose decision is
        ``y`` (1 or 0 for a deterministic model)."""
        draws = objective.draws(x)
        return torch.stack([(objective.decide(d) == y).float() for d in draws]).mean(0)

    def _nearest_boundary(
        self, objective: Objective, x: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Member ``k``'s nearest linearized boundary at ``x``: (distance ``zeta`` ``[B]``,
        unit step ``g`` toward it, ``g_2 = -w / ||w||_*``; both ``[B, C, H, W]``)."""
        x = x.detach().requires_grad_(True)
        b = torch.arange(len(x), device=x.device)
        with torch.enable_grad():
            f = objective.draws(x).mean(0)[k]  # [B, classes], mean over the head draws
            top = f.detach().argmax(1)
            (grad_top,) = torch.autograd.grad(f[b, top].sum(), x, retain_graph=True)
            zeta = torch.full((len(x),), float("inf"), device=x.device, dtype=x.dtype)
            w_best = torch.zeros_like(x)
            n_best = torch.ones_like(zeta)
            for j in range(f.shape[1]):
                last = j == f.shape[1] - 1
                (grad_j,) = torch.autograd.grad(f[:, j].sum(), x, retain_graph=not last)
                with torch.no_grad():
                    w = grad_top - grad_j  # grad(f_m - f_j)
                    n = flat_norm(w, "l2") if self.norm == "l2" else w.flatten(1).abs().sum(1)
                    z = (f[b, top] - f[:, j]).abs() / (n + _TINY)
                    z[top == j] = float("inf")
                    closer = z < zeta
                    zeta = torch.where(closer, z, zeta)
                    w_best[closer], n_best[closer] = w[closer], n[closer]
        g2 = -w_best / _view(n_best + _TINY, w_best)
        g = -w_best.sign() if self.norm == "linf" else g2
        return zeta.detach(), g, g2
