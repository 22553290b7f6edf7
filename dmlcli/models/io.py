"""Checkpoints: an ensemble as one safetensors file, and :class:`Run`, a loaded model with its
identity.

A checkpoint holds every member's tensors and, as JSON metadata, the run configuration
(:class:`~dmlcli.models.config.EnsembleConfig`), library versions, the benign accuracy and
the data folder it was trained on. Its SHA-256 (over the tensors) is checked on every load
and identifies the weights in every result computed from them; nothing is ever unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dmlcli.data import dataset_info
from dmlcli.errors import DmlError
from dmlcli.files import now, read_tensor_meta, read_tensors, save_tensors, versions
from dmlcli.models.config import EnsembleConfig
from dmlcli.models.ensemble import Ensemble


@dataclass
class Run:
    """A model to evaluate: its run name (results are stored under it), the module (pixels
    ``[B, C, H, W]`` in [0, 1] -> member logits ``[K, B, classes]``), the SHA-256 that
    identifies its weights, and its dataset."""

    name: str
    model: nn.Module
    checkpoint: str
    dataset: str
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def num_members(self) -> int:
        return int(getattr(self.model, "num_members", 1))

    @property
    def num_classes(self) -> int:
        return int(getattr(self.model, "num_classes", dataset_info(self.dataset).num_classes))

    @property
    def randomized(self) -> bool:
        return bool(getattr(self.model, "randomized", False))

    @property
    def image_size(self) -> int:
        config = getattr(self.model, "config", None)
        return (
            int(config.image_size) if config is not None else dataset_info(self.dataset).image_size
        )

    @property
    def data_dir(self) -> Path | None:
        """The ``--data-dir`` the run was trained with, when that folder still exists."""
        d = self.meta.get("data_dir")
        return Path(d) if d and Path(d).is_dir() else None


def save_ensemble(path: Path, ensemble: Ensemble, extra: dict[str, Any] | None = None) -> str:
    """Write ``ensemble`` (all members) with its config as metadata; returns the digest."""
    meta = {
        **(extra or {}),
        "config": ensemble.config.to_json(),
        "versions": versions(),
        "saved": now(),
    }
    return save_tensors(path, ensemble.state_dict(), meta)


def checkpoint_config(path: Path) -> tuple[EnsembleConfig, dict[str, Any]]:
    """(configuration, metadata) of a checkpoint without reading its tensors."""
    meta = read_tensor_meta(path)
    return EnsembleConfig.from_json(meta.get("config"), str(path)), meta


def load_ensemble(path: Path, device: str | torch.device = "cpu") -> Ensemble:
    """Rebuild an :class:`Ensemble` from its safetensors file alone (``digest`` and ``meta``
    attached); a file that does not match its configuration is one clear error."""
    tensors, meta, digest = read_tensors(path)
    config = EnsembleConfig.from_json(meta.get("config"), str(path))
    ensemble = Ensemble(config)
    expected = ensemble.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise DmlError(
            f"{path} does not match its configuration: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    for name, t in expected.items():
        if tensors[name].shape != t.shape or tensors[name].dtype != t.dtype:
            raise DmlError(
                f"{path}: {name} has shape {tuple(tensors[name].shape)}, "
                f"the configuration needs {tuple(t.shape)}"
            )
    ensemble.load_state_dict(tensors)
    ensemble.digest = digest
    ensemble.meta = meta
    return ensemble.eval().to(device)


def load_checkpoint(name: str, path: Path, device: str | torch.device = "cpu") -> Run:
    """The run ``name`` stored in the checkpoint file ``path``."""
    model = load_ensemble(path, device)
    return Run(name, model, model.digest, model.config.dataset, model.meta, path)
