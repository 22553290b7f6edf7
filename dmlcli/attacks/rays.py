"""RayS (Chen & Gu, KDD 2020): a hard-label ray search, L-inf, no gradients.

Chen & Gu, "RayS: A Ray Searching Method for Hard-label Adversarial Attack", KDD 2020,
arXiv:2006.12792; reference code ``uclaml/RayS`` (``RayS.py``: ``attack_hard_label``,
``binary_search``, ``search_succ``; ``attack_robust.py``: 10,000 queries by default).

RayS looks for the L-inf decision boundary along rays ``x + r * s`` with sign directions
``s`` in ``{-1, +1}^D``, so ``r`` is the L-inf length of the step before clipping to
[0, 1]. It keeps the best direction ``s_t`` and its boundary radius ``r_t`` (inf until one
is found) and tries, in a fixed hierarchical order, the direction with one block of
``s_t``'s signs flipped: the whole vector, then its halves, its quarters, ... down to single
coordinates, and again from the halves. A trial direction costs one query at ``r_t`` (is it
adversarial as close as the best one?) and, if it is, a binary search between 0 and ``r_t``
that keeps the last adversarial radius; the direction replaces ``s_t`` when its radius is
smaller. It starts from ``s = (1, ..., 1)``, ``r_t = inf`` (the first trial query is the
corner ``clip(x + s)``).

Only decision labels are queried: a query is one call of :meth:`Objective.success` on one
sample (the decision != ``y``; on a randomized head confirmed by the majority of fresh
draws, the label a defender's repeated answers give), under ``torch.no_grad()``. Every
sample is given at most ``queries`` queries (its clean check included), and stops as soon
as its radius is within ``eps`` (the reference keeps shrinking it until the budget is
spent: it measures the boundary distance, we only need a point within the budget).

The binary search stops at the reference's tolerance ``1e-3`` along the L2-unit ray, that is
``1e-3 / sqrt(D)`` in L-inf radius.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dmlcli.attacks.base import AttackBase, CallProgress, Objective, check_budget
from dmlcli.errors import DmlError


@dataclass
class RayS(AttackBase):
    """Ray searching hard-label attack (Chen & Gu, KDD 2020, "RayS: A Ray Searching Method
    for Hard-label Adversarial Attack", arXiv:2006.12792), L-inf, untargeted.
    See the module docstring for the search; it takes no gradients.

    Args:
        eps: L-inf budget in pixel units (pixels in [0, 1]).
        queries: the most decision queries per sample (the reference's 10,000), >= 1.
        seed: fixes a randomized head's draws (the search itself is deterministic).

    Returns, per sample, ``clip(x + r_t * s_t)`` if the search found a boundary radius
    ``r_t <= eps`` (a point the decision gets wrong, within ``eps``) before the budget ran
    out; otherwise ``x`` itself.

    Shape:
        - x: ``[B, C, H, W]``, pixels in [0, 1].
        - y: ``[B]`` labels.
        - model: member logits ``[K, B, classes]`` (or ``[B, classes]``), only its decision
          labels are read.
        - returns: ``[B, C, H, W]`` in [0, 1], within ``eps`` of ``x`` (L-inf).

    Examples:
        >>> attack = create_attack("rays", eps=8 / 255, queries=1000)
        >>> x_adv = attack(Objective(ensemble, "sum", "vote"), x, y)
        >>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6)
        True
    """

    eps: float
    queries: int = 10_000
    seed: int = 0
    name: str = "rays"
    norm = "linf"
    targeted = False

    def __post_init__(self) -> None:
        check_budget(self.norm, self.eps, self.name)
        q = self.queries
        if isinstance(q, bool) or not isinstance(q, int) or q < 1:
            raise DmlError(f"{self.name}: queries must be an integer >= 1; got {q!r}")

    def setting(self) -> dict[str, Any]:
        return {**super().setting(), "norm": self.norm}

    @torch.no_grad()
    def forward(
        self,
        objective: Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        progress: CallProgress,
    ) -> torch.Tensor:
        b = len(x)
        if b == 0:
            return x.clone()
        dim = x[0].numel()
        tol = 1e-3 / math.sqrt(dim)
        used = torch.zeros(b, dtype=torch.long, device=x.device)

        def fooled(points: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            """One query for each sample in ``rows`` at ``points`` ``[len(rows), ...]``."""
            used[rows] += 1
            return objective.success(points, objective.logits(points), y[rows], None)

        def ray(rows: torch.Tensor, signs: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            return (x[rows] + r.view(-1, *[1] * (x.dim() - 1)) * signs).clamp(0.0, 1.0)

        all_rows = torch.arange(b, device=x.device)
        done = fooled(x, all_rows)  # already wrong: x itself, radius 0
        best_r = torch.where(done, 0.0, float("inf")).to(x.dtype)
        best_s = torch.ones_like(x).flatten(1)
        level, block = 0, 0
        while True:
            rows = ((best_r > self.eps) & (used < self.queries)).nonzero().squeeze(1)
            if len(rows) == 0:
                break
            size = math.ceil(dim / 2**level)
            start, end = block * size, min(dim, (block + 1) * size)
            trial = best_s[rows].clone()
            trial[:, start:end] *= -1
            trial = trial.view(-1, *x.shape[1:])
            self._search(rows, trial, best_r, best_s, used, fooled, ray, tol)
            block += 1
            if block == 2**level or end == dim:
                level, block = level + 1, 0
            left = (best_r > self.eps) & (used < self.queries)
            share = torch.where(left, used.float() / self.queries, 1.0).mean()
            progress(float(share), f"{self.name}: {int(left.sum())}/{b} samples searching")
        found = best_r <= self.eps
        out = x.clone()
        rows = found.nonzero().squeeze(1)
        signs = best_s[rows].view(-1, *x.shape[1:])
        out[rows] = ray(rows, signs, best_r[rows])
        return out

    def _search(
        self,
        rows: torch.Tensor,
        trial: torch.Tensor,
        best_r: torch.Tensor,
        best_s: torch.Tensor,
        used: torch.Tensor,
        fooled: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        ray: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        tol: float,
    ) -> None:
        """Binary search of the boundary along ``trial`` ``[len(rows), C, H, W]`` for the
        samples ``rows``; updates ``best_r`` and ``best_s`` in place where it is closer."""
        r_cur = best_r[rows].clamp(max=1.0)  # beyond 1 every pixel is clipped: the corner
        hit = fooled(ray(rows, trial, r_cur), rows)
        lo = torch.zeros_like(r_cur)
        hi = r_cur.clone()
        search = hit.clone()  # only directions adversarial at the current best radius
        while True:
            live = search & (hi - lo > tol) & (used[rows] < self.queries)
            if not live.any():
                break
            i = live.nonzero().squeeze(1)
            mid = (lo[i] + hi[i]) / 2
            ok = fooled(ray(rows[i], trial[i], mid), rows[i])
            hi[i[ok]] = mid[ok]
            lo[i[~ok]] = mid[~ok]
        closer = hit & (hi < best_r[rows])
        best_r[rows[closer]] = hi[closer]
        best_s[rows[closer]] = trial[closer].flatten(1)
