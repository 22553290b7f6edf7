"""Benign evaluation: member logits over a dataset and the accuracy of every decision rule."""

from __future__ import annotations

import torch
from torch import nn

from dmlcli.data import to_float
from dmlcli.models.aggregate import create_decision


@torch.no_grad()
def member_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits ``[K, N, C]`` of every member for uint8 (or float [0,1]) images ``[N, C, H, W]``."""
    device = next(model.parameters()).device
    outs = []
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size].to(device)
        batch = to_float(batch) if batch.dtype == torch.uint8 else batch
        outs.append(model(batch).cpu())
    return torch.cat(outs, dim=1)


def accuracies(
    logits: torch.Tensor, y: torch.Tensor, trainable_sets: list[list[int]]
) -> dict[str, float]:
    """Accuracy (%) of each member (``member:k``, 1-based) and of every aggregation.

    ``logits``: ``[K, N, C]``; ``y``: ``[N]``.
    """
    out = {}
    for name in ("vote", "meta-vote", "sum", "mean-softmax"):
        pred = create_decision(name, trainable_sets)(logits)
        out[name] = 100.0 * (pred == y).float().mean().item()
    for k in range(logits.shape[0]):
        out[f"member:{k + 1}"] = 100.0 * (logits[k].argmax(-1) == y).float().mean().item()
    return out
