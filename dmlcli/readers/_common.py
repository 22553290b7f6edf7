"""What the readers share: the split check, gunzipping reads and the missing-files message."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from dmlcli.errors import DmlError

SPLITS = ("train", "test")

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm")


def normalize_name(dataset: str) -> str:
    """``"Fashion-MNIST"`` -> ``"fashionmnist"``: lower case, no ``-``, ``_`` or spaces."""
    return dataset.lower().replace("-", "").replace("_", "").replace(" ", "")


def _dataset_kind(dataset: str) -> str:
    name = normalize_name(dataset)
    if name in ("mnist", "fashionmnist") or name.startswith("idx"):
        return "idx"
    if name.startswith("cifar"):
        return "cifar10"
    return "folder"


def missing_files_message(dataset: str, path: Path, split: str | None = None) -> str:
    """One line saying that ``dataset``'s files are not in ``path`` and what to put there.

    ``dataset`` is a name like ``"fashion-mnist"``, ``"mnist"``, ``"cifar10"`` or ``"resisc45"``
    (anything else is treated as an ImageFolder dataset); ``split`` narrows the IDX file list.
    """
    path = Path(path)
    where = str(path) if path.is_dir() else f"{path} (no such directory)"
    kind = _dataset_kind(dataset)
    if kind == "idx":
        splits = [split] if split in IDX_FILES else list(SPLITS)
        names = ", ".join(f"{name}.gz" for s in splits for name in IDX_FILES[s])
        return (
            f"{dataset}: no IDX files in {where}; put {names} there (gzipped or not) "
            "or pass --data-dir"
        )
    if kind == "cifar10":
        return (
            f"{dataset}: no CIFAR-10 batches in {where}; put cifar-10-batches-py/ "
            "(data_batch_1..5, test_batch from cifar-10-python.tar.gz) or cifar-10-batches-bin/ "
            "(data_batch_1.bin..5.bin, test_batch.bin) there or pass --data-dir"
        )
    return (
        f"{dataset}: no images in {where}; put one folder per class of images "
        f"({', '.join(IMAGE_EXTENSIONS)}) there, optionally under train/ and test/, "
        "or pass --data-dir"
    )


def check_split(split: str) -> None:
    """Raise :class:`DmlError` unless ``split`` is ``"train"`` or ``"test"``."""
    if split not in SPLITS:
        raise DmlError(f"unknown split {split!r}; use 'train' or 'test'")


def read_bytes(file: Path) -> bytes:
    """The bytes of ``file``, gunzipped if it is gzip data (whatever its name)."""
    try:
        raw = file.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DmlError(f"{file}: cannot read ({error}); the file is truncated or corrupt") from None
    return raw
