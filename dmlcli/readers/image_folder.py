"""ImageFolder trees (one folder per class, e.g. RESISC-45), decoded with PIL."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dmlcli.errors import DmlError
from dmlcli.readers._common import IMAGE_EXTENSIONS, check_split, missing_files_message


def _class_dirs(root: Path) -> list[Path]:
    return sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(
        p
        for p in class_dir.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )


def _stratified_split(
    per_class: list[list[Path]], split: str, seed: int, test_fraction: float
) -> list[list[Path]]:
    """Per class, a seeded random ``test_fraction`` of the files is test, the rest train."""
    rng = np.random.default_rng(seed)
    chosen = []
    for files in per_class:
        order = rng.permutation(len(files))
        n_test = round(len(files) * test_fraction)
        if len(files) >= 2:
            n_test = min(max(n_test, 1), len(files) - 1)
        indices = order[:n_test] if split == "test" else order[n_test:]
        chosen.append([files[i] for i in sorted(indices)])
    return chosen


def _load_image(file: Path, size: int) -> np.ndarray:
    """Decode ``file`` with PIL -> RGB -> bilinear resize to ``size``; uint8 [size, size, 3]."""
    try:
        with Image.open(file) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        message = " ".join(str(error).split())
        raise DmlError(f"{file}: cannot decode image ({message})") from None


def read_image_folder(
    path: Path,
    split: str,
    image_size: int,
    seed: int = 0,
    test_fraction: float = 0.2,
    *,
    dataset: str = "image folder",
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Read an ImageFolder tree (one folder per class, e.g. RESISC-45) into memory.

    If ``path/train`` and ``path/test`` exist they are the splits; otherwise the images in
    ``path/<class>/`` are split per class, a seeded random ``test_fraction`` going to test
    (the same ``seed`` always gives the same split). Images are decoded with PIL, converted
    to RGB and resized (bilinear) to ``image_size`` x ``image_size``.

    Returns ``x`` uint8 ``[N, 3, S, S]``, ``y`` int64 ``[N]`` and ``classes``, the class
    folder names sorted by name (``y`` indexes them).
    """
    check_split(split)
    if not isinstance(image_size, int) or image_size <= 0:
        raise DmlError(f"image size must be a positive integer, got {image_size!r}")
    if not 0.0 < test_fraction < 1.0:
        raise DmlError(f"test fraction must be between 0 and 1, got {test_fraction}")
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DmlError(missing_files_message(dataset, path))

    if (path / "train").is_dir() and (path / "test").is_dir():
        classes = [d.name for d in _class_dirs(path / "train")]
        split_root = path / split
        extra = sorted({d.name for d in _class_dirs(split_root)} - set(classes))
        if extra:
            raise DmlError(
                f"{dataset}: class folder {split_root / extra[0]} has no counterpart in "
                f"{path / 'train'}; train/ and test/ must have the same class folders"
            )
        per_class = [
            _image_files(split_root / c) if (split_root / c).is_dir() else [] for c in classes
        ]
    else:
        classes = [d.name for d in _class_dirs(path)]
        all_files = [_image_files(path / c) for c in classes]
        per_class = _stratified_split(all_files, split, seed, test_fraction)

    files = [file for class_files in per_class for file in class_files]
    if not files:
        raise DmlError(missing_files_message(dataset, path))
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(f) for f in per_class])

    images = np.empty((len(files), image_size, image_size, 3), dtype=np.uint8)
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes without the GIL
        for i, image in enumerate(pool.map(lambda f: _load_image(f, image_size), files)):
            images[i] = image
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(labels), classes
