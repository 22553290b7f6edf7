"""IDX files (MNIST, Fashion-MNIST), gzipped or not, in torchvision's layouts or bare."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import torch

from dmlcli.errors import DmlError
from dmlcli.readers._common import (
    IDX_FILES,
    check_split,
    missing_files_message,
    normalize_name,
    read_bytes,
)

# Where an IDX dataset may sit under --data-dir: the directory itself, torchvision's layouts.
_IDX_SUBDIRS = {
    "mnist": (".", "MNIST/raw", "raw"),
    "fashionmnist": (".", "FashionMNIST/raw", "raw"),
    None: (".", "MNIST/raw", "FashionMNIST/raw", "raw"),
}


def _find_file(directory: Path, name: str) -> Path | None:
    """``directory/name`` or ``directory/name.gz``, whichever exists (plain first)."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(file: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file with ``ndim`` dimensions; returns uint8 with that shape."""
    raw = read_bytes(file)
    if len(raw) < 4:
        raise DmlError(f"{file}: empty or truncated ({len(raw)} bytes); not an IDX file")
    magic = int.from_bytes(raw[:4], "big")
    if magic != 0x0800 + ndim:
        raise DmlError(
            f"{file}: not an IDX file of {ndim}-d unsigned bytes "
            f"(magic number 0x{magic:08x}, expected 0x{0x0800 + ndim:08x})"
        )
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DmlError(f"{file}: truncated IDX header ({len(raw)} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected = math.prod(dims)
    actual = len(raw) - header_size
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing bytes"
        raise DmlError(
            f"{file}: {problem}: {actual} data bytes, expected {expected} for shape "
            f"{'x'.join(map(str, dims))}"
        )
    return np.frombuffer(raw, dtype=np.uint8, count=expected, offset=header_size).reshape(dims)


def read_idx_dir(
    path: Path, split: str, *, dataset: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read the MNIST-style IDX image and label files of ``split`` from a directory.

    Looks in ``path`` itself and in torchvision's layouts ``path/MNIST/raw``,
    ``path/FashionMNIST/raw`` and ``path/raw`` for ``train-images-idx3-ubyte`` and
    ``train-labels-idx1-ubyte`` (``split="train"``) or ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte`` (``split="test"``), each plain or ``.gz``. ``dataset``
    (``"mnist"`` or ``"fashion-mnist"``) restricts the torchvision layout searched and
    names the dataset in error messages.

    Returns ``x`` uint8 ``[N, 1, H, W]`` (``H = W = 28`` for MNIST) and ``y`` int64 ``[N]``.
    """
    check_split(split)
    path = Path(path).expanduser()
    name = dataset or "IDX dataset"
    normalized = normalize_name(dataset) if dataset else None
    subdirs = _IDX_SUBDIRS.get(normalized, _IDX_SUBDIRS[None])
    images_name, labels_name = IDX_FILES[split]
    for subdir in subdirs:
        directory = path / subdir
        images_file = _find_file(directory, images_name)
        labels_file = _find_file(directory, labels_name)
        if images_file and labels_file:
            break
        if images_file or labels_file:
            found, wanted = (
                (images_file, labels_name) if images_file else (labels_file, images_name)
            )
            raise DmlError(
                f"{name}: found {found} but not {wanted}(.gz) beside it; put it in "
                f"{directory.resolve()}"
            )
    else:
        raise DmlError(missing_files_message(name, path, split))

    images = _read_idx(images_file, 3)
    labels = _read_idx(labels_file, 1)
    if len(images) != len(labels):
        raise DmlError(
            f"{name}: {images_file} has {len(images)} images but {labels_file} has "
            f"{len(labels)} labels; the files do not belong together"
        )
    n, height, width = images.shape
    x = torch.from_numpy(images.reshape(n, 1, height, width).copy())
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y
