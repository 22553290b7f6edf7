"""Per-sample attack losses on class scores ``z`` ``[B, C]``; every attack *maximizes* them.

Untargeted (``target is None``), pushing the label ``y`` down:

- ``ce``: cross-entropy ``-log softmax(z)_y`` (Madry et al. 2018).
- ``cw``: margin ``max_{j != y} z_j - z_y`` (Carlini & Wagner 2017, f_6), unclipped.
- ``dlr``: difference of logits ratio ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)``
  (Croce & Hein 2020, Eq. 6): shift- and scale-invariant.
- ``logit``: ``-z_y``.

Targeted (``target`` ``[B]`` given), pulling ``target`` up: ``-ce(z, target)``,
``z_t - max_{j != t} z_j``, the targeted DLR ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2)``,
and ``z_t``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from dmlcli.errors import DmlError

Loss = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
_TINY = 1e-12


def _other_max(z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """``max_{j != label} z_j`` per row: ``[B, C]``, ``[B]`` -> ``[B]``."""
    mask = F.one_hot(label, z.shape[-1]).bool()
    return z.masked_fill(mask, float("-inf")).max(-1).values


def _pick(z: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return z.gather(-1, label[:, None]).squeeze(-1)


def ce_loss(z: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of ``y`` (untargeted) or minus that of ``target``: ``[B]``."""
    if target is None:
        return F.cross_entropy(z, y, reduction="none")
    return -F.cross_entropy(z, target, reduction="none")


def cw_loss(z: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """CW margin: positive exactly when the label lost (or the target won): ``[B]``."""
    if target is None:
        return _other_max(z, y) - _pick(z, y)
    return _pick(z, target) - _other_max(z, target)


def dlr_loss(z: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """DLR (untargeted) or targeted DLR of Croce & Hein (2020): ``[B]``; needs >= 4 classes."""
    top = z.sort(-1, descending=True).values
    if target is None:
        return -(_pick(z, y) - _other_max(z, y)) / (top[:, 0] - top[:, 2] + _TINY)
    scale = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3])
    return -(_pick(z, y) - _pick(z, target)) / (scale + _TINY)


def logit_loss(
    z: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
) -> torch.Tensor:
    """``-z_y`` (untargeted) or ``z_target``: ``[B]``."""
    if target is None:
        return -_pick(z, y)
    return _pick(z, target)


LOSSES: dict[str, Loss] = {"ce": ce_loss, "cw": cw_loss, "dlr": dlr_loss, "logit": logit_loss}


def list_losses() -> list[str]:
    """Names accepted by :func:`create_loss`."""
    return list(LOSSES)


def create_loss(name: str) -> Loss:
    """The loss ``name``: ``(z [B, C], y [B], target [B] | None) -> [B]`` to maximize."""
    if name not in LOSSES:
        raise DmlError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name]
