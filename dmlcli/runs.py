"""Opening runs: a run name, run folder or checkpoint file -> a loaded :class:`Run`."""

from __future__ import annotations

from pathlib import Path

import torch

from dmlcli.models.io import Run, load_checkpoint
from dmlcli.store import Store


def open_run(ref: str | Path, store: Store | None = None, device: str = "cpu") -> Run:
    """The run ``ref`` names: a run of ``store``, a run folder or a ``.safetensors`` file.

    A bad reference or a corrupt checkpoint is one :class:`~dmlcli.errors.DmlError` line.
    """
    store = store or Store()
    name, path = store.resolve(ref)
    return load_checkpoint(name, path, device)


def load_run(
    name_or_path: str | Path, artifacts: str | Path | None = None, device: str = "cpu"
) -> torch.nn.Module:
    """Rebuild a trained ensemble from a run name, run folder or ``.safetensors`` path.

    Returns the module: pixels ``[B, C, H, W]`` in [0, 1] -> member logits ``[K, B, C]``.
    """
    return open_run(name_or_path, Store(artifacts), device).model
