"""Models: backbones, DML heads, the batched :class:`Ensemble`, decision rules, checkpoints."""

from __future__ import annotations

from torch import nn

from dmlcli.data import dataset_info
from dmlcli.models.backbones import create_backbone


def resnet20_ensemble(
    members: int = 3,
    dataset: str = "cifar10",
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> list[nn.Module]:
    """``members`` ResNet-20s (DVERGE/TRS/GAL/ADP's CIFAR-10 member), each ``Normalize`` ->
    ResNet-20: pixels ``[B, 3, 32, 32]`` in [0, 1] -> logits ``[B, classes]``. A model-spec
    builder (``builder = "dmlcli.models:resnet20_ensemble"``): DVERGE's one-file
    (``model_0``...) and TRS's file-per-member checkpoints load into it. ``mean``/``std``:
    the normalization the checkpoint was trained with (default the dataset's; a DVERGE
    checkpoint carries its own, which are loaded)."""
    info = dataset_info(dataset)
    return [
        create_backbone(
            "resnet20",
            info.channels,
            info.num_classes,
            info.image_size,
            mean or info.mean,
            std or info.std,
        )  # fmt: skip
        for _ in range(members)
    ]
