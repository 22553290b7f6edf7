"""Dataset registry: every dataset loads once into memory as uint8 tensors.

``load_dataset(name, split)`` returns ``x`` uint8 ``[N, C, H, W]`` and ``y`` int64 ``[N]``.
File formats live in :mod:`dmlcli.readers`; this module knows where each dataset is, its
shape, its default backbone, and the batched augmentation used for training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dmlcli.errors import DmlError


@dataclass(frozen=True)
class TrainDefaults:
    """``dml train`` settings of a dataset when its flags are not given (Table 1 and A.2)."""

    epochs: int
    batch_size: int
    optimizer: str
    lr: float


@dataclass(frozen=True)
class DatasetInfo:
    """Everything the rest of the tool needs to know about a dataset, in one place."""

    name: str
    title: str  # as the report names it
    channels: int
    image_size: int
    num_classes: int
    backbone: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str  # "none" or "crop-flip"
    train: TrainDefaults
    paper_eps: tuple[str, ...]  # dml attack's default --eps (the paper's Tables 2-3)
    transfer_eps: str  # dml transfer's default --eps (Table 4)
    default_dirs: tuple[str, ...] = field(default=())


_MNIST_EPS = ("0.2", "0.3")
_CIFAR_EPS = ("0.015", "0.031")
DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo(
            "digits",
            "Digits (scikit-learn 8x8, offline stand-in for MNIST)",
            1,
            8,
            10,
            "small-cnn",
            (0.5,),
            (0.5,),
            "none",
            TrainDefaults(12, 64, "adam", 2e-3),
            _MNIST_EPS,
            "0.2",
        ),
        DatasetInfo(
            "mnist",
            "MNIST",
            1,
            28,
            10,
            "lenet5",
            (0.1307,),
            (0.3081,),
            "none",
            TrainDefaults(10, 128, "adam", 2e-3),
            _MNIST_EPS,
            "0.2",
        ),
        DatasetInfo(
            "fashion-mnist",
            "Fashion-MNIST (MNIST protocol)",
            1,
            28,
            10,
            "lenet5",
            (0.2860,),
            (0.3530,),
            "none",
            TrainDefaults(10, 128, "adam", 2e-3),
            _MNIST_EPS,
            "0.2",
            ("/usr/share/datasets/fashion-mnist",),
        ),
        DatasetInfo(
            "cifar10",
            "CIFAR-10",
            3,
            32,
            10,
            "resnet18",
            (0.4914, 0.4822, 0.4465),
            (0.2470, 0.2435, 0.2616),
            "crop-flip",
            TrainDefaults(100, 128, "sgd", 0.1),
            _CIFAR_EPS,
            "0.015",
        ),
        DatasetInfo(
            "resisc45",
            "RESISC-45",
            3,
            64,
            45,
            "resnet18",
            (0.3680, 0.3810, 0.3436),
            (0.2035, 0.1854, 0.1849),
            "crop-flip",
            TrainDefaults(60, 64, "sgd", 0.05),
            _CIFAR_EPS,
            "0.015",
        ),
    ]
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """Registry entry of ``name``; a clear error naming the valid choices otherwise."""
    if name not in DATASETS:
        raise DmlError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def _cache_dir(name: str) -> Path:
    return Path(os.environ.get("DML_DATA", Path.home() / ".cache" / "dmlcli")) / name


def _load_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.from_numpy((bunch.images * (255.0 / 16.0)).round()).to(torch.uint8)[:, None]
    y = torch.from_numpy(bunch.target).long()
    idx_train, idx_test = train_test_split(
        list(range(len(y))), test_size=0.25, stratify=bunch.target, random_state=0
    )
    idx = torch.tensor(sorted(idx_train if split == "train" else idx_test))
    return x[idx], y[idx]


def _torchvision_download(name: str, root: Path) -> None:
    import torchvision

    cls = {
        "mnist": torchvision.datasets.MNIST,
        "fashion-mnist": torchvision.datasets.FashionMNIST,
        "cifar10": torchvision.datasets.CIFAR10,
    }[name]
    try:
        cls(str(root), train=False, download=True)
        cls(str(root), train=True, download=True)
    except Exception as exc:  # network errors come in many types
        raise DmlError(
            f"{name}: download failed ({type(exc).__name__}); put the files under {root} "
            f"or pass --data-dir"
        ) from None


def load_dataset(
    name: str,
    split: str = "test",
    data_dir: str | Path | None = None,
    download: bool = True,
    image_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load ``split`` (``train`` or ``test``) of dataset ``name`` into memory.

    Returns ``x`` uint8 ``[N, C, H, W]`` and ``y`` int64 ``[N]``. ``data_dir`` may hold IDX
    files (MNIST-like), CIFAR-10 batches or an ImageFolder tree (RESISC-45); without it the
    dataset's usual places and ``$DML_DATA`` are searched, and torchvision downloads when
    ``download`` is true and the network allows.
    """
    from dmlcli import readers

    info = dataset_info(name)
    if split not in ("train", "test"):
        raise DmlError(f"unknown split {split!r}; choose train or test")
    if name == "digits":
        return _load_digits(split)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DmlError(f"--data-dir {data_dir} is not a directory")
    candidates = [Path(data_dir)] if data_dir else [Path(d) for d in info.default_dirs]
    candidates = candidates or [_cache_dir(name)]
    if not data_dir:
        candidates.append(_cache_dir(name))
    if name == "resisc45":
        if not data_dir:
            raise DmlError("resisc45: pass --data-dir pointing at the NWPU-RESISC45 folder tree")
        x, y, _ = readers.read_image_folder(
            Path(data_dir), split, image_size or info.image_size, seed=0, dataset=name
        )
        return x, y

    def read(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
        if name == "cifar10":
            return readers.read_cifar10(root, split)
        return readers.read_idx_dir(root, split, dataset=name)

    errors: list[DmlError] = []
    for root in dict.fromkeys(candidates):
        try:
            return read(root)
        except DmlError as exc:
            errors.append(exc)
    if download and not data_dir:
        _torchvision_download(name, _cache_dir(name))
        return read(_cache_dir(name))
    raise errors[0]


def eval_set(
    name: str,
    n: int,
    seed: int,
    data_dir: str | Path | None = None,
    image_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The test split of ``name`` and its seeded evaluation subset: (x uint8 ``[N, C, H, W]``,
    y ``[N]``, indices ``[n]``). The indices are the same for every model and attack."""
    x, y = load_dataset(name, "test", data_dir, image_size=image_size)
    return x, y, eval_indices(len(y), n, seed)


def eval_indices(num_test: int, n: int, seed: int) -> torch.Tensor:
    """A seeded subset of ``n`` test indices, sorted: the same for every model and attack."""
    if n < 1:
        raise DmlError(f"--n must be at least 1; got {n}")
    if n > num_test:
        raise DmlError(f"--n {n} is larger than the test set ({num_test} samples)")
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(num_test, generator=gen)[:n].sort().values


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, C, H, W]`` -> float32 pixels in [0, 1]."""
    return x.float().div_(255.0)


def augment_batch(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Batched augmentation of float pixels ``[B, C, H, W]``.

    ``crop-flip``: random 4-pixel-padded crop and horizontal flip per sample (the usual
    CIFAR recipe), done with one gather for the whole batch.
    """
    if kind == "none":
        return x
    b, c, h, w = x.shape
    pad = 4
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[
        torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols
    ]
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)
