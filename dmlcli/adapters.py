"""Adapters out: a dml run (or a model spec) as the single classifier other libraries attack.

torchattacks, foolbox and pyautoattack take an ``nn.Module`` ``x -> [B, classes]``; the
adversarial-robustness-toolbox takes its ``PyTorchClassifier``. An ensemble has several
such views (a *surface*: the summed logits the paper attacks, the log of the mean softmax,
one member), and its decision (the majority vote) is not differentiable; the adapter makes
the choice explicit instead of leaving each user to write a wrapper.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dmlcli.attacks.surfaces import surface_scores
from dmlcli.data import dataset_info
from dmlcli.errors import DmlError
from dmlcli.models.aggregate import create_decision
from dmlcli.models.io import Run
from dmlcli.runs import open_run
from dmlcli.store import Store


class EnsembleClassifier(nn.Module):
    """``x`` ``[B, C, H, W]`` pixels in [0, 1] -> class scores ``[B, classes]`` of one surface
    of an ensemble (``sum``: the paper's summed logits; ``mean-softmax``: log of the mean
    member softmax; ``member:k``), differentiable. With ``decision`` (``vote``, ...) the
    output is instead the decision one-hot (for scoring only: it has no useful gradient)."""

    def __init__(self, run: Run, surface: str = "sum", decision: str | None = None) -> None:
        super().__init__()
        self.model = run.model
        self.run_name, self.checkpoint = run.name, run.checkpoint
        self.surface = surface
        self.num_classes = run.num_classes
        k = run.num_members
        surface_scores(surface, torch.zeros(k, 1, self.num_classes))  # one line if unknown
        self.decide = None
        if decision is not None:
            sets = getattr(run.model, "trainable_sets", None) or [[] for _ in range(k)]
            self.decide = create_decision(decision, sets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if self.decide is None:
            return surface_scores(self.surface, logits)
        pred = self.decide(logits)
        return nn.functional.one_hot(pred, self.num_classes).to(logits.dtype)


def _run(run: str | Path | Run, artifacts: str | Path | None, device: str) -> Run:
    return run if isinstance(run, Run) else open_run(run, Store(artifacts), device)


def as_classifier(
    run: str | Path | Run,
    surface: str = "sum",
    decision: str | None = None,
    artifacts: str | Path | None = None,
    device: str = "cpu",
) -> EnsembleClassifier:
    """A run name, run folder, checkpoint, model spec (``.toml``) or opened :class:`Run` as
    an ``nn.Module`` ``x -> [B, classes]`` in eval mode for torchattacks, foolbox or
    pyautoattack (pixels in [0, 1]; normalization is inside). ``surface``: ``sum`` (what the
    paper attacks), ``mean-softmax`` or ``member:k``; ``decision``: see
    :class:`EnsembleClassifier`. Note that attacking one surface is not attacking the vote
    (``dml attack --suite adaptive`` does that)."""
    return EnsembleClassifier(_run(run, artifacts, device), surface, decision).eval()


def as_art_classifier(
    run: str | Path | Run,
    surface: str = "sum",
    artifacts: str | Path | None = None,
    device: str = "cpu",
) -> Any:
    """:func:`as_classifier` wrapped in ART's ``PyTorchClassifier`` (needs the optional
    ``adversarial-robustness-toolbox``; ``pip install 'dmlcli[art]'``): clip values (0, 1),
    cross-entropy loss on the surface's scores, the dataset's input shape."""
    try:
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        raise DmlError(
            "as_art_classifier needs the adversarial-robustness-toolbox: pip install 'dmlcli[art]'"
        ) from None
    r = _run(run, artifacts, device)
    clf = as_classifier(r, surface)
    info = dataset_info(r.dataset)
    return PyTorchClassifier(
        model=clf,
        loss=nn.CrossEntropyLoss(),
        input_shape=(info.channels, info.image_size, info.image_size),
        nb_classes=r.num_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if str(device).startswith("cuda") else "cpu",
    )
