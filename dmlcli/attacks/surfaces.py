"""Attack surfaces: what an attack takes gradients of, given member logits ``[K, B, C]``.

The paper crafts every white-box attack on the **sum of member logits** (Section 5) and
scores it on the majority vote; the surface and the decision rule are separate choices here.

- ``sum``: the loss of the summed logits ``sum_k z_k`` (the paper's protocol).
- ``mean-softmax``: the loss of ``log mean_k softmax(z_k)`` (log of the averaged
  probabilities, so ``ce`` is ``-log p_y`` of the averaged prediction).
- ``members``: ``sum_k l(z_k)``, each member's loss on its own logits, and a member's term
  stops giving gradient once that member is fooled (its value is frozen). This aims at the
  vote: effort goes to the members that still vote for the label, and a single high-gain
  member cannot dominate the direction when the loss saturates (``ce``) or is scale-free
  (``dlr``), unlike the summed logits.
- ``member:k``: the loss of member k alone (1-based); transfer sources and Table 5.
- ``agree`` (targeted only): ``sum_k l(z_k, t)``, every member's targeted loss toward one
  wrong class ``t``, a member's term frozen once it votes ``t``. The vote is fooled when the
  members agree on a wrong class; pushing each member away from ``y`` on its own (the
  ``members`` surface) lets shuffled-center members land on different wrong classes and
  ``y`` keep the plurality.
- ``agree:nu`` (targeted only): the same over the ``nu`` members closest to voting ``t``
  (largest targeted loss), the ones a threshold-nu decision (Eq. 8) or a majority needs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dmlcli.attacks.losses import Loss
from dmlcli.errors import DmlError
from dmlcli.models.aggregate import parse_member

SURFACES = ("sum", "mean-softmax", "members", "member:k", "agree", "agree:nu")
Surface = Callable[[torch.Tensor, torch.Tensor, Loss, "torch.Tensor | None"], torch.Tensor]


def list_surfaces(members: int | None = None) -> list[str]:
    """Names accepted by :func:`create_surface` (``member:k`` spelled out when K is known)."""
    names = ["sum", "mean-softmax", "members"]
    if members is None:
        return [*names, "member:k", "agree", "agree:nu"]
    per = [f"member:{k}" for k in range(1, members + 1)]
    return names + per + ["agree"] + [f"agree:{nu}" for nu in range(1, members + 1)]


def needs_target(name: str) -> bool:
    """True for the surfaces that pull members toward a target class (``agree``)."""
    return name == "agree" or name.startswith("agree:")


def surface_scores(name: str, logits: torch.Tensor) -> torch.Tensor:
    """Class scores ``[B, C]`` of a logit-like surface (every surface but ``members``)."""
    if name == "sum":
        return logits.sum(0)
    if name == "mean-softmax":
        return logits.softmax(-1).mean(0).clamp_min(1e-30).log()
    if name.startswith("member:"):
        return logits[parse_member(name, logits.shape[0])]
    raise DmlError(f"surface {name!r} has no class scores; choose sum, mean-softmax or member:k")


def _members(
    logits: torch.Tensor, y: torch.Tensor, loss: Loss, target: torch.Tensor | None
) -> torch.Tensor:
    total = torch.zeros(logits.shape[1], device=logits.device, dtype=logits.dtype)
    for z in logits:
        pred = z.argmax(-1)
        fooled = pred != y if target is None else pred == target
        term = loss(z, y, target)
        total = total + torch.where(fooled, term.detach(), term)
    return total


def _agree(
    logits: torch.Tensor, y: torch.Tensor, loss: Loss, target: torch.Tensor | None, nu: int
) -> torch.Tensor:
    if target is None:
        raise DmlError("the agree surfaces pull members toward a target class: use a targeted "
                       "attack or target classes (--target-classes)")  # fmt: skip
    terms = []
    for z in logits:
        term = loss(z, y, target)
        terms.append(torch.where(z.argmax(-1) == target, term.detach(), term))
    stacked = torch.stack(terms)  # [K, B]
    if nu >= len(stacked):
        return stacked.sum(0)
    chosen = stacked.detach().topk(nu, dim=0).indices  # the nu members closest to t
    return stacked.gather(0, chosen).sum(0)


def create_surface(name: str, members: int) -> Surface:
    """Surface ``name`` for a K-member model: ``(logits [K,B,C], y, loss, target) -> [B]``."""
    if name == "members":
        return _members
    if name in ("sum", "mean-softmax"):
        return lambda logits, y, loss, target: loss(surface_scores(name, logits), y, target)
    if name.startswith("member:"):
        k = parse_member(name, members)
        return lambda logits, y, loss, target: loss(logits[k], y, target)
    if name == "agree":
        return lambda logits, y, loss, target: _agree(logits, y, loss, target, members)
    if name.startswith("agree:"):
        try:
            nu = int(name.split(":", 1)[1])
        except ValueError:
            nu = 0
        if not 1 <= nu <= members:
            raise DmlError(f"{name!r}: nu must be an integer in 1..{members}")
        return lambda logits, y, loss, target: _agree(logits, y, loss, target, nu)
    raise DmlError(f"unknown surface {name!r}; choose one of {', '.join(list_surfaces(members))}")
