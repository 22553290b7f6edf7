"""APGD (Croce & Hein 2020, Algorithm 1): step-size-free PGD with momentum, on any surface.

This follows the reference implementation (``autoattack.autopgd_base.APGDAttack``): start
on the boundary of the eps-ball, step size ``2 eps``, momentum 0.75, checkpoints at
``p_j`` (first after 22% of the steps, then shrinking by 3% down to 6%) where the step size
halves and the iterate returns to the best point if fewer than 75% of the steps since the
last checkpoint increased the loss, or if the step was not halved last time and the best
loss did not improve. Unlike the reference, the loss is the objective's **surface** (sum,
members, ...), success is the objective's **decision** (the vote, not the argmax of the
attacked scores), gradients are averaged over the objective's EOT draws, and a sample
leaves the batch as soon as it is fooled (its trajectory is independent of the others).
With ``loss='ce'`` this is APGD-CE, with ``loss='dlr'`` APGD-DLR.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dmlcli.attacks.base import (
    AttackBase,
    CallProgress,
    Objective,
    check_budget,
    check_target_classes,
    normalize,
    project,
)
from dmlcli.attacks.losses import Loss, create_loss
from dmlcli.attacks.pgd import KEEP
from dmlcli.errors import DmlError


@dataclass
class APGD(AttackBase):
    """Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", Algorithm 1): APGD-CE / APGD-DLR against an
    :class:`~dmlcli.attacks.base.Objective` (differences from the reference: see the module
    docstring).

    Returns, per sample, the first iterate that fools the decision, else the iterate of
    highest loss (``keep='loss'``: always the highest-loss iterate, for transfer).

    Shape:
        - x: ``[B, C, H, W]``, pixels in [0, 1].
        - y: ``[B]`` labels.
        - target: ``[B]`` or None (targeted only; drawn with ``seed`` if None).
        - returns: ``[B, C, H, W]`` in [0, 1], within ``eps`` of ``x`` in ``norm``.

    Examples:
        >>> attack = create_attack("apgd-dlr", eps=8 / 255, steps=20, restarts=2)
        >>> x_adv = attack(Objective(ensemble, "members", "vote"), x, y)
        >>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6)
        True
    """

    eps: float
    steps: int = 100
    restarts: int = 1
    norm: str = "linf"
    loss: str = "ce"
    targeted: bool = False
    seed: int = 0
    rho: float = 0.75
    keep: str = "adversarial"
    target_classes: int = 0
    name: str = "apgd"

    def __post_init__(self) -> None:
        check_budget(self.norm, self.eps, self.name)
        create_loss(self.loss)
        if self.steps < 1 or self.restarts < 1:
            raise DmlError(f"{self.name}: steps and restarts must be at least 1")
        if self.keep not in KEEP:
            raise DmlError(f"{self.name}: keep must be one of {', '.join(KEEP)}")
        check_target_classes(self)

    def setting(self) -> dict[str, Any]:
        return {**super().setting(), "step_size": 2 * self.eps}

    def forward(
        self,
        objective: Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        progress: CallProgress,
    ) -> torch.Tensor:
        out = x.clone()
        out_loss = torch.full((len(x),), float("-inf"), device=x.device)
        done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        total = self.restarts * self.steps
        for r in range(self.restarts):
            idx = (~done).nonzero().squeeze(1)
            if len(idx) == 0:
                break
            ts = None if target is None else target[idx]

            def step_done(i: int, r: int = r) -> None:
                info = f"{self.name}: restart {r + 1}/{self.restarts}, step {i}/{self.steps}"
                progress.steps(r * self.steps + i, total, info)

            x_best, loss_best, hit, x_hit = self._run(objective, x[idx], y[idx], ts, step_done)
            better = loss_best > out_loss[idx]
            out[idx[better]] = x_best[better]
            out_loss[idx[better]] = loss_best[better]
            if self.keep == "adversarial":
                out[idx[hit]] = x_hit[hit]
                done[idx[hit]] = True
            progress((r + 1) / self.restarts, f"{self.name}: restart {r + 1}/{self.restarts} done")
        return out

    def _run(
        self,
        objective: Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor | None,
        step_done: Callable[[int], None],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One run: (highest-loss point, its loss, fooled flags, fooling point), all ``[B]``;
        ``step_done(i)`` after step ``i`` (1-based) of ``steps``."""
        n = self.steps
        loss_fn = create_loss(self.loss)
        res = _RunResults.empty(x)
        s, hit = self._start(objective, x, y, t, loss_fn)
        self._record_fooled(s, res, hit)
        k = max(int(0.22 * n), 1)
        size_decr, k_min = max(int(0.03 * n), 1), max(int(0.06 * n), 1)
        counter = 0
        for i in range(n):
            if len(s["idx"]) == 0:
                break
            x_adv = self._momentum_step(s, i)
            loss, grad, logits = objective.loss_grad(x_adv, s["y"], loss_fn, s.get("t"))
            _track_best(s, i, x_adv, loss, grad)
            self._record_fooled(s, res, objective.success(x_adv, logits, s["y"]))
            counter += 1
            if counter == k:
                self._checkpoint(s, i, k)
                k, counter = max(k - size_decr, k_min), 0
            step_done(i + 1)
        res.finish(s)
        return res.best, res.loss, res.hit, res.hit_x

    def _start(
        self,
        objective: Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        t: torch.Tensor | None,
        loss_fn: Loss,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """A random start on the boundary of the eps-ball around ``x`` ``[B, C, H, W]``,
        evaluated once: the state of the run and whether the start already fools the
        decision ``[B]``.

        The state holds, per sample still in the batch, its position ``idx`` in the run,
        ``x``, ``y`` (and target ``t``), the iterate ``x_adv`` and the previous one
        ``x_old``, the best point ``x_best``, the gradients ``grad`` and ``grad_best``, the
        best loss ``loss_best`` and its value at the last checkpoint ``best_last``, whether
        the step was halved then (``reduced``), the step size ``step`` ``[B]`` and the loss
        of every step ``history`` ``[steps, B]``."""
        n, eps, norm = self.steps, self.eps, self.norm
        b = len(x)
        noise = 2 * torch.rand_like(x) - 1 if norm == "linf" else torch.randn_like(x)
        x_adv = (x + eps * normalize(noise, norm)).clamp(0.0, 1.0)
        loss, grad, logits = objective.loss_grad(x_adv, y, loss_fn, t)
        s = {  # per-sample state of the samples still in the batch
            "idx": torch.arange(b, device=x.device),
            "x": x,
            "y": y,
            "x_adv": x_adv,
            "x_old": x_adv.clone(),
            "x_best": x_adv.clone(),
            "grad": grad,
            "grad_best": grad.clone(),
            "loss_best": loss.clone(),
            "best_last": loss.clone(),
            "reduced": torch.ones(b, dtype=torch.bool, device=x.device),
            "step": torch.full((b,), 2.0 * eps, device=x.device),
            "history": torch.zeros(n, b, device=x.device),
        }
        if t is not None:
            s["t"] = t
        return s, objective.success(x_adv, logits, y)

    def _momentum_step(self, s: dict[str, torch.Tensor], i: int) -> torch.Tensor:
        """Step ``i`` (0-based) from ``s['x_adv']`` ``[B, C, H, W]``: a signed (linf) or
        normalized (l2) gradient step of the per-sample step size, projected, then mixed with
        the previous move (momentum ``0.25``; none on the first step) and projected again.
        Sets ``s['x_old']`` to the current iterate and returns the new one."""
        eps, norm = self.eps, self.norm
        with torch.no_grad():
            x_adv, xs = s["x_adv"], s["x"]
            momentum = x_adv - s["x_old"]
            s["x_old"] = x_adv
            a = 0.75 if i > 0 else 1.0
            step = s["step"].view(-1, *([1] * (x_adv.dim() - 1)))
            direction = s["grad"].sign() if norm == "linf" else normalize(s["grad"], "l2")
            z = project(x_adv + step * direction, xs, eps, norm)
            return project(x_adv + (z - x_adv) * a + momentum * (1 - a), xs, eps, norm)

    def _record_fooled(
        self, s: dict[str, torch.Tensor], res: _RunResults, fooled: torch.Tensor
    ) -> None:
        """Note the samples of ``s`` fooled by ``s['x_adv']`` (``fooled`` ``[B]``); with
        ``keep='adversarial'`` they leave the batch with that iterate as their fooling point."""
        if not fooled.any():
            return
        if self.keep == "adversarial":
            res.leave(s, fooled)
        else:
            res.hit[s["idx"][fooled]] = True

    def _checkpoint(self, s: dict[str, torch.Tensor], i: int, k: int) -> None:
        """Checkpoint after step ``i`` (0-based), ``k`` steps after the last one: halve the
        step size and return to the best point where fewer than ``rho`` of the last ``k``
        steps increased the loss, or where the step was not halved last time and the best
        loss has not improved since."""
        h = s["history"]
        ups = sum((h[i - j] > h[i - j - 1]).float() for j in range(k))
        oscillating = ups <= k * self.rho
        stalled = ~s["reduced"] & (s["best_last"] >= s["loss_best"])
        halve = oscillating | stalled
        s["reduced"], s["best_last"] = halve, s["loss_best"].clone()
        s["step"][halve] /= 2.0
        s["x_adv"][halve] = s["x_best"][halve]
        s["grad"][halve] = s["grad_best"][halve]


def _track_best(
    s: dict[str, torch.Tensor],
    i: int,
    x_adv: torch.Tensor,
    loss: torch.Tensor,
    grad: torch.Tensor,
) -> None:
    """Take the iterate of step ``i`` (``x_adv`` and ``grad`` ``[B, C, H, W]``, ``loss``
    ``[B]``) as the current one, log its loss and keep it where it beats the best so far."""
    s["x_adv"], s["grad"] = x_adv, grad
    s["history"][i] = loss
    improved = loss > s["loss_best"]
    s["x_best"][improved] = x_adv[improved]
    s["grad_best"][improved] = grad[improved]
    s["loss_best"][improved] = loss[improved]


@dataclass
class _RunResults:
    """What one run returns for each of its ``B`` samples, written when a sample leaves the
    batch or at the end: the highest-loss point ``best`` ``[B, C, H, W]`` and its ``loss``
    ``[B]``, whether it was fooled ``hit`` ``[B]`` and the fooling point ``hit_x``."""

    best: torch.Tensor
    loss: torch.Tensor
    hit: torch.Tensor
    hit_x: torch.Tensor

    @classmethod
    def empty(cls, x: torch.Tensor) -> _RunResults:
        """Results for ``x`` ``[B, C, H, W]`` before any step: ``x`` itself, loss -inf."""
        b = len(x)
        return cls(
            best=x.clone(),
            loss=torch.full((b,), float("-inf"), device=x.device),
            hit=torch.zeros(b, dtype=torch.bool, device=x.device),
            hit_x=x.clone(),
        )

    def leave(self, s: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
        """Store the samples in ``mask`` ``[B']`` as fooled by ``s['x_adv']`` and drop them
        from the state ``s``."""
        i = s["idx"][mask]
        self.hit[i] = True
        self.hit_x[i] = s["x_adv"][mask]
        self.best[i] = s["x_best"][mask]
        self.loss[i] = s["loss_best"][mask]
        for key, v in s.items():
            s[key] = v[:, ~mask] if key == "history" else v[~mask]

    def finish(self, s: dict[str, torch.Tensor]) -> None:
        """Store the best point and loss of the samples still in the batch at the end."""
        i = s["idx"]
        self.best[i], self.loss[i] = s["x_best"], s["loss_best"]
