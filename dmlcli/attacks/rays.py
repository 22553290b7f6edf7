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

For speed on few samples, the next trial directions and up to :data:`BISECT_AHEAD` levels of
a bisection are asked in one batch; the search reads the answers in order and stops where one
trial at a time would have stopped, so its path, its counted queries and its point are those
of the sequential search. The answers past that point are dropped unread and not counted: the
model may see more points than ``queries``, the search uses at most ``queries`` answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dmlcli.attacks import base
from dmlcli.attacks.base import AttackBase, CallProgress, Objective, check_budget
from dmlcli.errors import DmlError

#: The most levels of a binary search asked at once (``2^levels - 1`` midpoints per sample
#: for ``levels`` queries). Measured on a 5-member LeNet-5 ensemble, 4 robust samples, 2,000
#: queries each, one CPU core: one level at a time 7.6 s, 2 levels 6.3 s, 3 levels 6.1 s, 4
#: levels 8.7 s (the answers off the path cost more than the calls they save).
BISECT_AHEAD = 3


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

        def answer(points: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            """The decision's answers (wrong: True) at ``points`` for the samples ``rows``."""
            return objective.success(points, objective.logits(points), y[rows], None)

        def ray(rows: torch.Tensor, signs: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            """``clip(x + r * s)`` for the samples ``rows``, signs ``[len(rows), D]``."""
            step = r.view(-1, *[1] * (x.dim() - 1)) * signs.view(len(rows), *x.shape[1:])
            return (x[rows] + step).clamp(0.0, 1.0)

        used += 1  # the first query: x itself (already wrong: radius 0)
        done = answer(x, torch.arange(b, device=x.device))
        best_r = torch.where(done, 0.0, float("inf")).to(x.dtype)
        best_s = torch.ones_like(x).flatten(1)
        position = [(0, 0)] * b  # (level, block) each sample tries next
        while True:
            rows = ((best_r > self.eps) & (used < self.queries)).nonzero().squeeze(1)
            if len(rows) == 0:
                break
            ahead = -(-base.TARGET_BATCH_ROWS // len(rows))
            trial, hit = self._trials(rows, ahead, best_r, best_s, used, position, answer, ray)
            if trial is not None:
                self._bisect(rows, trial, hit, best_r, best_s, used, answer, ray, tol)
            left = (best_r > self.eps) & (used < self.queries)
            share = torch.where(left, used.float() / self.queries, 1.0).mean()
            progress(float(share), f"{self.name}: {int(left.sum())}/{b} samples searching")
        found = best_r <= self.eps
        out = x.clone()
        rows = found.nonzero().squeeze(1)
        out[rows] = ray(rows, best_s[rows], best_r[rows])
        return out

    def _trials(
        self,
        rows: torch.Tensor,
        ahead: int,
        best_r: torch.Tensor,
        best_s: torch.Tensor,
        used: torch.Tensor,
        position: list[tuple[int, int]],
        answer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        ray: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The next trial direction of each sample in ``rows``: ``s_t`` with its next block
        flipped, queried at ``r_t``. Up to ``ahead`` next blocks are asked at once (few
        samples fill a batch); a sample keeps the first that is adversarial and counts the
        queries up to it, so the search, its queries and its result are those of one trial
        at a time (the later answers are dropped unread: ``s_t`` and ``r_t`` change there).
        Returns (trial signs ``[len(rows), D]``, adversarial at ``r_t`` ``[len(rows)]``), or
        (None, None) when no sample found one (their positions advanced)."""
        dim = best_s.shape[1]
        owners, flips, spans = [], [], []
        for j, row in enumerate(rows.tolist()):
            level, block = position[row]
            for _ in range(min(ahead, self.queries - int(used[row]))):
                size = math.ceil(dim / 2**level)
                start, end = block * size, min(dim, (block + 1) * size)
                owners.append(j)
                spans.append((start, end))
                block += 1
                if block == 2**level or end == dim:
                    level, block = level + 1, 0
                flips.append((level, block))
        device = best_s.device
        owner = torch.tensor(owners, device=device)
        trial = best_s[rows[owner]].clone()
        for i, (start, end) in enumerate(spans):
            trial[i, start:end] *= -1
        r_cur = best_r[rows[owner]].clamp(max=1.0)  # beyond 1 every pixel is clipped
        answers = answer(ray(rows[owner], trial, r_cur), rows[owner]).tolist()
        first_hit = [None] * len(rows)
        counted = [0] * len(rows)
        for i, j in enumerate(owners):
            if first_hit[j] is None:
                counted[j] += 1
                position[int(rows[j])] = flips[i]
                if answers[i]:
                    first_hit[j] = i
        used[rows] += torch.tensor(counted, device=device)
        hit = torch.tensor([h is not None for h in first_hit], device=device)
        if not hit.any():
            return None, None
        pick = torch.tensor([0 if h is None else h for h in first_hit], device=device)
        return trial[pick], hit

    def _bisect(
        self,
        rows: torch.Tensor,
        trial: torch.Tensor,
        hit: torch.Tensor,
        best_r: torch.Tensor,
        best_s: torch.Tensor,
        used: torch.Tensor,
        answer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        ray: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        tol: float,
    ) -> None:
        """Binary search of the boundary along ``trial`` ``[len(rows), D]`` for the
        samples ``rows`` whose trial was adversarial at ``r_t`` (``hit``); updates
        ``best_r`` and ``best_s`` in place where it is closer.

        Few samples fill a batch by asking the next ``depth`` levels of the search at once:
        every midpoint the search could visit there (``2^depth - 1`` per sample, computed
        by the same halvings). Walking the answers gives the very path, queries and radius
        of one midpoint at a time; the answers off the path are dropped unread."""
        r_cur = best_r[rows].clamp(max=1.0)
        lo = torch.zeros_like(r_cur)
        hi = r_cur.clone()
        while True:
            live = hit & (hi - lo > tol) & (used[rows] < self.queries)
            if not live.any():
                break
            i = live.nonzero().squeeze(1)
            depth = min(BISECT_AHEAD, max(1, int(math.log2(base.TARGET_BATCH_ROWS / len(i) + 1))))
            tree_lo, tree_hi, mids = lo[i][:, None], hi[i][:, None], []
            for _ in range(depth):  # level l: 2^l nodes per sample, left to right
                mid = (tree_lo + tree_hi) / 2
                mids.append(mid)
                tree_lo = torch.stack([tree_lo, mid], 2).flatten(1)
                tree_hi = torch.stack([mid, tree_hi], 2).flatten(1)
            points = torch.cat(mids, 1)  # [len(i), 2^depth - 1]
            per = points.shape[1]
            owner = rows[i].repeat_interleave(per)
            signs = trial[i].repeat_interleave(per, 0)
            ok_all = answer(ray(owner, signs, points.flatten()), owner).view(len(i), per)
            node = torch.zeros(len(i), dtype=torch.long, device=lo.device)
            for level, mid in enumerate(mids):
                go = (hi[i] - lo[i] > tol) & (used[rows[i]] < self.queries)
                if not go.any():
                    break
                at = mid.gather(1, node[:, None])[:, 0]
                ok = ok_all[:, 2**level - 1 :].gather(1, node[:, None])[:, 0]
                used[rows[i[go]]] += 1
                hi[i[go & ok]] = at[go & ok]
                lo[i[go & ~ok]] = at[go & ~ok]
                node = 2 * node + (~ok).long()
        closer = hit & (hi < best_r[rows])
        best_r[rows[closer]] = hi[closer]
        best_s[rows[closer]] = trial[closer].flatten(1)
