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
from dmlcli.attacks.losses import create_loss
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
        n, eps, norm = self.steps, self.eps, self.norm
        loss_fn = create_loss(self.loss)
        early = self.keep == "adversarial"
        b = len(x)
        # Results for every sample of the run, written when it leaves or at the end.
        res_best, res_hit_x = x.clone(), x.clone()
        res_loss = torch.full((b,), float("-inf"), device=x.device)
        res_hit = torch.zeros(b, dtype=torch.bool, device=x.device)

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
        hit = objective.success(x_adv, logits, y)

        def leave(mask: torch.Tensor) -> None:
            """Store the samples in ``mask`` as fooled by ``s['x_adv']`` and drop them."""
            i = s["idx"][mask]
            res_hit[i] = True
            res_hit_x[i] = s["x_adv"][mask]
            res_best[i] = s["x_best"][mask]
            res_loss[i] = s["loss_best"][mask]
            for key, v in s.items():
                s[key] = v[:, ~mask] if key == "history" else v[~mask]

        if early and hit.any():
            leave(hit)
        elif hit.any():
            res_hit[hit] = True
        k = max(int(0.22 * n), 1)
        size_decr, k_min = max(int(0.03 * n), 1), max(int(0.06 * n), 1)
        counter = 0
        for i in range(n):
            if len(s["idx"]) == 0:
                break
            with torch.no_grad():
                x_adv, xs = s["x_adv"], s["x"]
                momentum = x_adv - s["x_old"]
                s["x_old"] = x_adv
                a = 0.75 if i > 0 else 1.0
                step = s["step"].view(-1, *([1] * (x.dim() - 1)))
                direction = s["grad"].sign() if norm == "linf" else normalize(s["grad"], "l2")
                z = project(x_adv + step * direction, xs, eps, norm)
                x_adv = project(x_adv + (z - x_adv) * a + momentum * (1 - a), xs, eps, norm)
            loss, grad, logits = objective.loss_grad(x_adv, s["y"], loss_fn, s.get("t"))
            s["x_adv"], s["grad"] = x_adv, grad
            s["history"][i] = loss
            improved = loss > s["loss_best"]
            s["x_best"][improved] = x_adv[improved]
            s["grad_best"][improved] = grad[improved]
            s["loss_best"][improved] = loss[improved]
            fooled = objective.success(x_adv, logits, s["y"])
            if early and fooled.any():
                leave(fooled)  # the fooling point is the iterate just evaluated
            elif fooled.any():
                res_hit[s["idx"][fooled]] = True
            counter += 1
            if counter == k:
                h = s["history"]
                ups = sum((h[i - j] > h[i - j - 1]).float() for j in range(k))
                oscillating = ups <= k * self.rho
                stalled = ~s["reduced"] & (s["best_last"] >= s["loss_best"])
                halve = oscillating | stalled
                s["reduced"], s["best_last"] = halve, s["loss_best"].clone()
                s["step"][halve] /= 2.0
                s["x_adv"][halve] = s["x_best"][halve]
                s["grad"][halve] = s["grad_best"][halve]
                k, counter = max(k - size_decr, k_min), 0
            step_done(i + 1)
        i = s["idx"]
        res_best[i], res_loss[i] = s["x_best"], s["loss_best"]
        return res_best, res_loss, res_hit, res_hit_x
