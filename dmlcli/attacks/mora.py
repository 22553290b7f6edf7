"""MORA (Yu, Gao & Xu, NeurIPS 2022): a model-reweighing attack on ensembles, L-inf.

Yu, Gao & Xu, "MORA: Improving Ensemble Robustness Evaluation with Model-Reweighing
Attack", NeurIPS 2022, arXiv:2211.08008; reference code ``lafeat/mora``
(``mora_attack.py``: ``MORAAttack`` and ``MORAAttack_targeted``; ``mora.py``: the
``standard-t-pre`` schedule; ``scripts/evaluation.sh``: cosine decay, 100 iterations,
``float_dis`` 0.8 for a voting ensemble).

A summed-logit (or averaged-softmax) surface lets one confident member hide the others: its
huge margin saturates the loss and fixes the gradient direction, while the vote could be
flipped by moving the members that are close to their boundary. MORA ascends, per step, the
cross-entropy of a blend of

(a) the ensemble's class scores divided by their own top-2 gap (scale-free), and
(b) a weighted average of the members that still predict ``y``, each member's logits
    divided by a common per-sample factor (the largest member top-2 gap over 10, when above
    10, so that no member's margin blows up the average), with weights recomputed every step
    from the members' softmax ``p_k`` (temperature ``temperature``) and the members'
    averaged softmax ``q``: ``w_k = p_k[r] (p_k[y] / q[y] + (1 - p_k[r]) / q[r])``, ``r``
    the runner-up of ``q``. A member that leans to the runner-up gets a large weight; a
    saturated confident member gets none.

``logits = (1 - s) * (a) + s * (b)``, swept over the blend weights ``s`` in ``blends``
(the reference's ``mora-ce-5, -0.0, -2.5, -7.5, -10``), each a run of ``steps`` sign steps
from a random start on the eps-ball's boundary, step size ``2 eps (1 + cos(pi i / n)) / 2``
and momentum 0.75 (APGD's rule without its checkpoints). Then, as ``mora_ce_t``, a targeted
run per class among the ``targets`` wrong classes ranked by the clean ensemble scores, on the
plain targeted CE of the ensemble scores (the reference builds the blend and then overwrites
it with the ensemble output before the targeted loss; we keep that behaviour).

Differences from the reference: success is the objective's decision (the vote), checked
after every step, not the argmax of the ensemble scores; every run only attacks the samples
that are still robust (as the reference's ``run_standard_evaluation`` does between its
attacks), and when those are few the next runs go in one batch of stacked copies
(:data:`~dmlcli.attacks.base.TARGET_BATCH_ROWS`; each copy keeps its full budget); the
ensemble scores are the objective's surface (``sum`` or ``mean-softmax``; the
summed logits for a surface without class scores); and two slips are fixed (see
:func:`mora_logits`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dmlcli.attacks.base import (
    AttackBase,
    CallProgress,
    Objective,
    check_budget,
    per_call,
    project,
)
from dmlcli.attacks.surfaces import surface_scores
from dmlcli.errors import DmlError

#: The reference's sweep (``mora.py``, ``standard-t-pre``: ``mora-ce-5, -0.0, -2.5, -7.5, -10``).
BLENDS = (0.5, 0.0, 0.25, 0.75, 1.0)
_GAP_FLOOR = 1e-12


def ensemble_scores(objective: Objective, logits: torch.Tensor) -> torch.Tensor:
    """Class scores ``[B, C]`` of member logits ``[K, B, C]``: the objective's surface when
    it has class scores (``sum``, ``mean-softmax``, ``member:k``), else the summed logits."""
    try:
        return surface_scores(objective.surface, logits)
    except DmlError:
        return logits.sum(0)


def _top2_gap(z: torch.Tensor) -> torch.Tensor:
    """``top1 - top2`` along the last axis (0 for a single class)."""
    if z.shape[-1] < 2:
        return torch.zeros(z.shape[:-1], device=z.device, dtype=z.dtype)
    top = z.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def _runner_up(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The top class of ``scores`` ``[B, C]`` if it is not ``y``, else the second: ``[B]``."""
    return scores.scatter(1, y[:, None], float("-inf")).argmax(1)


def mora_logits(
    members: torch.Tensor,
    scores: torch.Tensor,
    y: torch.Tensor,
    blend: float | torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """MORA's blended logits ``[B, C]`` from member logits ``[K, B, C]`` and the ensemble's
    class scores ``[B, C]`` (both differentiable); the scales, masks and weights are detached.
    ``blend`` is one weight or one per sample ``[B]``.

    Two slips of the reference are not copied. Its averaged member softmax ``q``
    (``outputs_after_scale``) sums ``range(sub_output - 1)`` entries and divides by
    ``sub_output``, one more than it summed (counting ``sub_output`` as the members: the
    mean of M - 1 members divided by M); ``q`` here is the mean over the K members. And its
    ``get_probablity_weight`` takes ``p_k[r]`` as ``top * (1 - ind) - second * ind``, which
    is ``-p_k[second]`` whenever the ensemble still ranks ``y`` first; here ``p_k[r]`` is
    the member's probability of the runner-up, as the paper's weight intends. The member
    term also averages the K members only (the reference's loop includes its ensemble
    output as one more "member").
    """
    gap = _top2_gap(scores.detach()).clamp_min(_GAP_FLOOR)
    part_a = scores / gap[:, None]
    with torch.no_grad():
        member_gap = _top2_gap(members).amax(0)  # [B]: the largest member top-2 gap
        scale = torch.where(member_gap > 10.0, member_gap / 10.0, torch.ones_like(member_gap))
    scaled = members / scale[None, :, None]  # [K, B, C]
    with torch.no_grad():
        correct = (scaled.argmax(-1) == y[None]).to(members.dtype)  # [K, B]
        # Not the reference's count: it sums sub_output - 1 softmaxes and divides by
        # sub_output. This is the mean over all K members.
        q = scaled.softmax(-1).mean(0)  # [B, C]
        r = _runner_up(q, y)
        p = (temperature * members).softmax(-1)  # [K, B, C]
        k = len(members)
        p_r = p.gather(-1, r[None, :, None].expand(k, -1, 1))[..., 0]  # [K, B]
        p_y = p.gather(-1, y[None, :, None].expand(k, -1, 1))[..., 0]
        q_r = q.gather(1, r[:, None])[:, 0].clamp_min(_GAP_FLOOR)
        q_y = q.gather(1, y[:, None])[:, 0].clamp_min(_GAP_FLOOR)
        weight = p_r * (p_y / q_y + (1 - p_r) / q_r) * correct  # [K, B]
        total = weight.sum(0) + 1e-8  # the reference's guard
    part_b = (weight[..., None] * scaled).sum(0) / total[:, None]
    if isinstance(blend, torch.Tensor):
        blend = blend[:, None]
    return (1 - blend) * part_a + blend * part_b


@dataclass
class MORA(AttackBase):
    """Model-reweighing attack (Yu, Gao & Xu, NeurIPS 2022, "MORA: Improving Ensemble
    Robustness Evaluation with Model-Reweighing Attack", arXiv:2211.08008), L-inf.

    One untargeted run per blend weight in ``blends`` (the loss of :func:`mora_logits`),
    then one targeted run per wrong class among the ``targets`` best of the clean ensemble
    scores (plain targeted CE on the ensemble scores, as the reference); each run attacks
    only the samples no earlier run fooled. See the module docstring for the step rule and
    the differences from the reference.

    Args:
        eps: L-inf budget in pixel units (pixels in [0, 1]).
        steps: iterations per run (the reference's ``n_iter = 100``).
        blends: blend weights ``s`` of the member term, each in [0, 1], in the order they
            run (the reference's ``0.5, 0, 0.25, 0.75, 1``).
        targets: wrong classes attacked by the targeted runs (the reference's 9); 0: none.
        temperature: the members' softmax temperature in the weights (the reference's
            ``float_dis``: 0.8 for a voting ensemble).
        seed: fixes the random starts (and a randomized head's draws).

    Returns, per sample, the first iterate (over every run) whose decision is wrong,
    confirmed by :meth:`Objective.success`; where none is, the iterate with the fewest
    members predicting ``y``, ties broken by the smallest ensemble margin
    ``s_y - max_{j != y} s_j``.

    Shape:
        - x: ``[B, C, H, W]``, pixels in [0, 1].
        - y: ``[B]`` labels.
        - model: member logits ``[K, B, classes]`` (or ``[B, classes]``, K = 1).
        - returns: ``[B, C, H, W]`` in [0, 1], within ``eps`` of ``x`` (L-inf).

    Examples:
        >>> attack = create_attack("mora", eps=8 / 255, steps=20, targets=3)
        >>> x_adv = attack(Objective(ensemble, "sum", "vote"), x, y)
        >>> bool((x_adv - x).abs().max() <= 8 / 255 + 1e-6)
        True
    """

    eps: float
    steps: int = 100
    blends: tuple[float, ...] = BLENDS
    targets: int = 9
    temperature: float = 0.8
    seed: int = 0
    name: str = "mora"
    norm = "linf"
    targeted = False

    def __post_init__(self) -> None:
        check_budget(self.norm, self.eps, self.name)
        if not isinstance(self.steps, int) or self.steps < 1:
            raise DmlError(f"{self.name}: steps must be an integer >= 1; got {self.steps}")
        try:
            self.blends = tuple(float(s) for s in self.blends)
        except (TypeError, ValueError):
            raise DmlError(f"{self.name}: blends must be numbers in [0, 1]") from None
        if not self.blends or not all(0.0 <= s <= 1.0 for s in self.blends):
            raise DmlError(f"{self.name}: blends must be one or more numbers in [0, 1]")
        if not isinstance(self.targets, int) or self.targets < 0:
            raise DmlError(f"{self.name}: targets must be a count >= 0; got {self.targets}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise DmlError(f"{self.name}: temperature must be >= 0; got {self.temperature}")

    def setting(self) -> dict[str, Any]:
        return {**super().setting(), "norm": self.norm, "step_size": 2 * self.eps}

    def forward(
        self,
        objective: Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        progress: CallProgress,
    ) -> torch.Tensor:
        best = x.clone()
        with torch.no_grad():
            logits = objective.logits(x)
            done = objective.success(x, logits, y, None)
            scores = ensemble_scores(objective, logits)
            ranked = scores.scatter(1, y[:, None], float("-inf"))
            n_wrong = min(self.targets, scores.shape[1] - 1)
            order = ranked.topk(n_wrong, dim=1).indices.t()  # [targets, B], best first
        if self.eps == 0:
            return best
        best_votes, best_margin = self._criterion(objective, logits, y)
        # A run is (blend, target [B]): blend NaN for a targeted run, target -1 for a blend.
        nan, none = float("nan"), torch.full_like(y, -1)
        runs = [(s, none) for s in self.blends] + [(nan, t) for t in order]
        n = 0
        while n < len(runs):
            idx = (~done).nonzero().squeeze(1)
            if len(idx) == 0:
                break
            b = len(idx)
            c = per_call(len(runs) - n, b)  # runs batched in this call
            chunk = runs[n : n + c]

            def step_done(i: int, n: int = n, c: int = c) -> None:
                info = f"{self.name}: runs {n + 1}-{n + c}/{len(runs)}, step {i}/{self.steps}"
                progress.steps(n * self.steps + i * c, len(runs) * self.steps, info)

            blend = torch.tensor([s for s, _ in chunk], device=x.device).repeat_interleave(b)
            ts = torch.cat([t[idx] for _, t in chunk])
            reps = [1] * (x.dim() - 1)
            out = self._run(
                objective, x[idx].repeat(c, *reps), y[idx].repeat(c), blend, ts, step_done
            )
            for j in range(c):  # in run order, as if the runs had run one after another
                x_run, hit, votes, margin = (v[j * b : (j + 1) * b] for v in out)
                better = hit | (votes < best_votes[idx])
                better |= (votes == best_votes[idx]) & (margin < best_margin[idx])
                better &= ~done[idx]
                best[idx[better]] = x_run[better]
                best_votes[idx[better]], best_margin[idx[better]] = votes[better], margin[better]
                done[idx[hit]] = True
            n += c
        return best

    def _criterion(
        self, objective: Objective, logits: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(members predicting ``y``, ensemble margin ``s_y - max_{j != y} s_j``), ``[B]``."""
        votes = (logits.argmax(-1) == y[None]).sum(0)
        scores = ensemble_scores(objective, logits)
        own = scores.gather(1, y[:, None])[:, 0]
        margin = own - scores.scatter(1, y[:, None], float("-inf")).amax(1)
        return votes, margin

    def _loss(
        self,
        objective: Objective,
        x_adv: torch.Tensor,
        y: torch.Tensor,
        blend: torch.Tensor,
        t: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(gradient of each row's run loss, summed over EOT draws, ``[B, C, H, W]``; mean
        member logits ``[K, B, C]`` of the draws). Row b ascends MORA's blended CE with
        weight ``blend[b]``, or where ``t[b] >= 0`` descends the targeted CE toward ``t[b]``."""
        x_adv = x_adv.detach().requires_grad_(True)
        targeted = t >= 0
        with torch.enable_grad():
            draws = objective.draws(x_adv)  # [T, K, B, C]
            total = x_adv.new_zeros(())
            for members in draws:
                scores = ensemble_scores(objective, members)
                z = mora_logits(members, scores, y, blend.nan_to_num(0.0), self.temperature)
                ascend = F.cross_entropy(z, y, reduction="none")
                toward = -F.cross_entropy(scores, t.clamp_min(0), reduction="none")
                total = total + torch.where(targeted, toward, ascend).sum()
            (grad,) = torch.autograd.grad(total, x_adv)
        return grad.detach(), draws.detach().mean(0)

    def _run(
        self,
        objective: Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        blend: torch.Tensor,
        t: torch.Tensor,
        step_done: Callable[[int], None],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One run per row (blend ``[B]``, target ``[B]``: see :meth:`_loss`): (kept iterate,
        fooled flags, its member votes for ``y``, its margin), all ``[B]``-indexed. Each
        iterate is checked on the logits of the gradient pass that starts the next step (one
        forward+backward per step), the last one on a forward of its own."""
        eps, n = self.eps, self.steps
        noise = 2 * torch.rand_like(x) - 1
        peak = noise.flatten(1).abs().amax(1).clamp_min(_GAP_FLOOR)
        x_adv = (x + eps * noise / peak.view(-1, *[1] * (x.dim() - 1))).clamp(0.0, 1.0)
        x_old = x_adv.clone()
        kept = x_adv.clone()
        hit = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        votes = torch.full((len(x),), torch.iinfo(torch.int64).max, device=x.device)
        margin = torch.full((len(x),), float("inf"), device=x.device)
        active = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for i in range(n + 1):
            idx = active.nonzero().squeeze(1)
            if len(idx) == 0:
                break
            cur = x_adv[idx]
            if i < n:
                grad, logits = self._loss(objective, cur, y[idx], blend[idx], t[idx])
            else:
                with torch.no_grad():
                    logits = objective.logits(cur)
            fooled = objective.success(cur, logits, y[idx], None)
            v, m = self._criterion(objective, logits, y[idx])
            better = fooled | (v < votes[idx]) | ((v == votes[idx]) & (m < margin[idx]))
            kept[idx[better]] = cur[better]
            votes[idx[better]], margin[idx[better]] = v[better], m[better]
            hit[idx[fooled]] = True
            active[idx[fooled]] = False
            if i == n:
                break
            idx, cur, grad = idx[~fooled], cur[~fooled], grad[~fooled]
            with torch.no_grad():
                step = 2 * eps * (1 + math.cos(math.pi * i / n)) / 2
                a = 0.75 if i > 0 else 1.0
                xs = x[idx]
                z = project(cur + step * grad.sign(), xs, eps, "linf")
                new = project(cur + a * (z - cur) + (1 - a) * (cur - x_old[idx]), xs, eps, "linf")
                x_old[idx] = cur
                x_adv[idx] = new
            step_done(i + 1)
        return kept, hit, votes, margin
