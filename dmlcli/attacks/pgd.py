"""PGD (Madry et al. 2018) and BIM (Kurakin et al. 2017): iterated projected ascent steps.

``PGD``: random start in the eps-ball, ``steps`` steps of size ``step_size`` (default
``2.5 * eps / steps``, Madry et al.), best of ``restarts``. ``BIM``: the same without the
random start. The paper's columns: BIM-10 and PGD-10 (Tables 2-3), PGD-20/PGD-40 with 5
restarts (Tables 6, 9).

Per sample the attack returns the first iterate the objective's decision gets wrong
(``keep='adversarial'``; a fooled sample leaves the batch, later restarts only attack the
survivors), otherwise the iterate of highest loss. ``keep='loss'`` always returns the
highest-loss iterate over every step and restart (what a transfer attack should carry to
another model: its success on the source says nothing about the target).

Both record every evaluated iterate (each step's and the last one of each restart) into a
:class:`~dmlcli.attacks.base.Trace` when the call is given one (``trace=``): its loss and
success flags, computed anyway. With ``keep='adversarial'`` a fooled sample leaves the
batch, so its trace stops at the first success; with ``keep='loss'`` every sample runs
every step, which is what Pintor et al.'s silent-success indicator needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dmlcli.attacks.base import (
    AttackBase,
    CallProgress,
    Objective,
    Trace,
    ascent_step,
    check_budget,
    check_target_classes,
    project,
    random_start,
)
from dmlcli.attacks.losses import create_loss
from dmlcli.errors import DmlError

KEEP = ("adversarial", "loss")


@dataclass
class PGD(AttackBase):
    """Projected gradient descent (Madry, Makelov, Schmidt, Tsipras & Vladu 2018, "Towards
    deep learning models resistant to adversarial attacks", Section 2.1:
    ``x_{t+1} = Proj_{x + S}(x_t + alpha * sign(grad_x L(theta, x_t, y)))``).

    Projected gradient ascent of the objective's surface loss from a random start in the
    eps-ball (L2: ``alpha`` along the unit gradient), best of ``restarts``; what is kept per
    sample: see the module docstring. Targeted: ascends the targeted loss.

    Shape:
        - x: ``[B, C, H, W]``, pixels in [0, 1].
        - y: ``[B]`` labels.
        - target: ``[B]`` or None (targeted only; drawn with ``seed`` if None).
        - returns: ``[B, C, H, W]`` in [0, 1], within ``eps`` of ``x`` in ``norm``.

    Examples:
        >>> attack = create_attack("pgd", eps=8 / 255, steps=10)
        >>> x_adv = attack(Objective(ensemble, "sum", "vote"), x, y)
        >>> x_adv.shape == x.shape
        True
        >>> fractions = []
        >>> x_adv = attack(ensemble, x, y, progress=lambda f, info: fractions.append(f))
        >>> fractions[-1]
        1.0
    """

    eps: float
    steps: int = 10
    step_size: float | None = None
    restarts: int = 1
    norm: str = "linf"
    loss: str = "ce"
    targeted: bool = False
    seed: int = 0
    keep: str = "adversarial"
    target_classes: int = 0
    random_start: bool = True
    name: str = "pgd"
    traceable: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_budget(self.norm, self.eps, self.name)
        create_loss(self.loss)
        if self.steps < 1 or self.restarts < 1:
            raise DmlError(f"{self.name}: steps and restarts must be at least 1")
        if self.keep not in KEEP:
            raise DmlError(f"{self.name}: keep must be one of {', '.join(KEEP)}")
        check_target_classes(self)
        if self.step_size is None:
            self.step_size = 2.5 * self.eps / self.steps
        if self.step_size < 0:
            raise DmlError(f"{self.name}: step size must be >= 0")

    def forward(
        self,
        objective: Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        progress: CallProgress,
        trace: Trace | None = None,
    ) -> torch.Tensor:
        loss_fn = create_loss(self.loss)
        early = self.keep == "adversarial"
        best = x.clone()
        best_loss = torch.full((len(x),), float("-inf"), device=x.device)
        done = torch.zeros(len(x), dtype=torch.bool, device=x.device)

        def record(idx: torch.Tensor, xa: torch.Tensor, value: torch.Tensor, hit: torch.Tensor):
            # Masked selects (torch.where) rather than boolean indexing: the same values,
            # without a device sync per step.
            better = (value > best_loss[idx]) & ~done[idx]
            best_loss[idx] = torch.where(better, value, best_loss[idx])
            take = better
            if early:
                fresh = hit & ~done[idx]
                take = better | fresh
                done[idx] = done[idx] | fresh
            best[idx] = torch.where(take.view(-1, *[1] * (xa.dim() - 1)), xa, best[idx])

        total = self.restarts * self.steps
        for r in range(self.restarts):
            idx = (~done).nonzero().squeeze(1)
            if len(idx) == 0:
                break
            xs, ys = x[idx], y[idx]
            ts = None if target is None else target[idx]
            xa = random_start(xs, self.eps, self.norm) if self.random_start else xs.clone()
            for step in range(self.steps):
                value, grad, logits = objective.loss_grad(xa, ys, loss_fn, ts)
                hit = objective.success(xa, logits, ys)
                record(idx, xa, value, hit)
                if trace is not None:
                    trace.record(r, idx, value, hit)
                if early and hit.any():
                    keep = ~hit
                    idx, xs, ys, xa, grad = idx[keep], xs[keep], ys[keep], xa[keep], grad[keep]
                    ts = None if ts is None else ts[keep]
                    if len(idx) == 0:
                        break
                xa = project(
                    ascent_step(xa, grad, self.step_size, self.norm), xs, self.eps, self.norm
                )
                progress.steps(
                    r * self.steps + step + 1,
                    total,
                    f"{self.name}: restart {r + 1}/{self.restarts}, step {step + 1}/{self.steps}",
                )
            if len(idx):
                with torch.no_grad():
                    value, logits = objective.loss(xa, ys, loss_fn, ts)
                hit = objective.success(xa, logits, ys)
                record(idx, xa, value, hit)
                if trace is not None:
                    trace.record(r, idx, value, hit)
            progress((r + 1) / self.restarts, f"{self.name}: restart {r + 1}/{self.restarts} done")
        return best


@dataclass
class BIM(PGD):
    """Basic iterative method (Kurakin, Goodfellow & Bengio 2017, "Adversarial examples in
    the physical world", Section 2.2: ``X_{N+1} = Clip_{X, eps}(X_N + alpha *
    sign(grad_X J(X_N, y)))``): PGD without the random start (BIM-n: ``steps = n``).

    Shape:
        - x: ``[B, C, H, W]``, pixels in [0, 1].
        - y: ``[B]`` labels.
        - target: ``[B]`` or None (targeted only; drawn with ``seed`` if None).
        - returns: ``[B, C, H, W]`` in [0, 1], within ``eps`` of ``x`` in ``norm``.

    Examples:
        >>> attack = create_attack("bim", eps=8 / 255, steps=10)
        >>> x_adv = attack(Objective(ensemble, "sum", "vote"), x, y)
        >>> torch.equal(x_adv, attack(Objective(ensemble, "sum", "vote"), x, y))
        True
    """

    random_start: bool = False
    name: str = "bim"
