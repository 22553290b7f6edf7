"""File-format readers: IDX (MNIST, Fashion-MNIST), CIFAR-10 batches, ImageFolder trees.

Every reader returns in-memory tensors: images as uint8 ``[N, C, H, W]``, labels as int64
``[N]``. Nothing here touches the network, and nothing is ever unpickled: CIFAR-10's python
batches are read by a small data-only parser of the pickle opcode stream (``_SafeUnpickler``)
that knows exactly the opcodes such a batch uses and refuses everything else.

A missing, truncated or corrupt file raises :class:`~dmlcli.errors.DmlError` with one line
that names the file and says what to do.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dmlcli.errors import DmlError

__all__ = [
    "IMAGE_EXTENSIONS",
    "missing_files_message",
    "read_cifar10",
    "read_idx_dir",
    "read_image_folder",
]

SPLITS = ("train", "test")

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Where an IDX dataset may sit under --data-dir: the directory itself, torchvision's layouts.
_IDX_SUBDIRS = {
    "mnist": (".", "MNIST/raw", "raw"),
    "fashionmnist": (".", "FashionMNIST/raw", "raw"),
    None: (".", "MNIST/raw", "FashionMNIST/raw", "raw"),
}

CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)
_CIFAR10_PIXELS = 3 * 32 * 32

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm")


# --------------------------------------------------------------------------- messages


def _normalize_name(dataset: str) -> str:
    return dataset.lower().replace("-", "").replace("_", "").replace(" ", "")


def _dataset_kind(dataset: str) -> str:
    name = _normalize_name(dataset)
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


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DmlError(f"unknown split {split!r}; use 'train' or 'test'")


def _read_bytes(file: Path) -> bytes:
    """The bytes of ``file``, gunzipped if it is gzip data (whatever its name)."""
    try:
        raw = file.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DmlError(f"{file}: cannot read ({error}); the file is truncated or corrupt") from None
    return raw


# --------------------------------------------------------------------------- IDX


def _find_file(directory: Path, name: str) -> Path | None:
    """``directory/name`` or ``directory/name.gz``, whichever exists (plain first)."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(file: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file with ``ndim`` dimensions; returns uint8 with that shape."""
    raw = _read_bytes(file)
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
    _check_split(split)
    path = Path(path).expanduser()
    name = dataset or "IDX dataset"
    normalized = _normalize_name(dataset) if dataset else None
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


# --------------------------------------------------------------------------- safe pickle


class _Global:
    """A reference to one of the few allowed globals; never resolved to the real object."""

    def __init__(self, module: str, name: str) -> None:
        self.qualname = f"{module}.{name}"


class _ArrayStub:
    """``numpy.core.multiarray._reconstruct(ndarray, ...)``: an array waiting for BUILD."""

    def __init__(self) -> None:
        self.value: np.ndarray | None = None


class _DtypeStub:
    """``numpy.dtype(typestr, ...)``: a numeric dtype whose byte order BUILD may set."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype


_RECONSTRUCT = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct")
_ALLOWED_GLOBALS = frozenset(
    (
        *_RECONSTRUCT,
        "numpy.ndarray",
        "numpy.dtype",
        "_codecs.encode",  # how protocol 2 writes bytes from Python 3
        "builtins.bytes",  # ... and empty bytes
        "__builtin__.bytes",
    )
)
_NUMERIC_KINDS = "biufc"  # bool, int, unsigned, float, complex: never object, never structured


class _SafeUnpickler:
    """A data-only reader of the pickle opcodes used by CIFAR-10 python batches.

    Understands protocols 2-4 (PROTO, FRAME), None/bools/ints/floats, str and bytes
    (including Python 2 strings, read as bytes), tuples, lists, dicts, the memo, and numpy
    arrays pickled through ``_reconstruct``/``ndarray``/``dtype`` with REDUCE and BUILD,
    which are interpreted as data: an array is built from its (shape, dtype, raw bytes)
    state with ``np.frombuffer``. Any other global or opcode is refused with a DmlError
    before anything is called; nothing outside this class is ever executed.
    """

    def __init__(self, data: bytes, source: Path) -> None:
        self.data = data
        self.source = source
        self.pos = 0
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}

    # ---- helpers

    def _fail(self, what: str) -> DmlError:
        return DmlError(f"{self.source}: {what}; not a plain CIFAR-10 python batch")

    def _read(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self._fail("pickle data ends early (truncated file)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def _uint(self, n: int) -> int:
        return int.from_bytes(self._read(n), "little")

    def _readline(self) -> str:
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            raise self._fail("pickle data ends early (truncated file)")
        line = self.data[self.pos : end]
        self.pos = end + 1
        return line.decode("utf-8")

    def _pop_mark(self) -> list[Any]:
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def _get(self, index: int) -> Any:
        value = self.memo[index]
        if isinstance(value, _ArrayStub) and value.value is not None:
            return value.value
        return value

    def _global(self, module: str, name: str) -> _Global:
        ref = _Global(module, name)
        if ref.qualname not in _ALLOWED_GLOBALS:
            raise self._fail(f"refusing pickle global {ref.qualname}")
        return ref

    # ---- REDUCE and BUILD, interpreted as data

    def _reduce(self, func: Any, args: Any) -> Any:
        name = func.qualname if isinstance(func, _Global) else type(func).__name__
        if not isinstance(args, tuple):
            raise self._fail(f"malformed call to {name}")
        if name in _RECONSTRUCT:
            if not args or not (
                isinstance(args[0], _Global) and args[0].qualname == "numpy.ndarray"
            ):
                raise self._fail("refusing _reconstruct of anything but numpy.ndarray")
            return _ArrayStub()
        if name == "numpy.dtype":
            typestr = args[0] if args else None
            if isinstance(typestr, bytes):
                typestr = typestr.decode("ascii")
            try:
                dtype = np.dtype(typestr) if isinstance(typestr, str) else None
            except TypeError:
                dtype = None
            if dtype is None or dtype.kind not in _NUMERIC_KINDS or dtype.fields:
                raise self._fail(f"refusing numpy dtype {typestr!r}")
            return _DtypeStub(dtype)
        if name == "_codecs.encode":
            if len(args) not in (1, 2) or not isinstance(args[0], str):
                raise self._fail("malformed bytes")
            if len(args) == 2 and args[1] not in ("latin1", "latin-1"):
                raise self._fail(f"refusing text encoding {args[1]!r}")
            return args[0].encode("latin-1")
        if name in ("builtins.bytes", "__builtin__.bytes") and args == ():
            return b""
        raise self._fail(f"refusing to call {name}")

    def _build(self, obj: Any, state: Any) -> Any:
        if isinstance(obj, _DtypeStub):
            byteorder = state[1] if isinstance(state, tuple) and len(state) > 1 else None
            if isinstance(byteorder, bytes):
                byteorder = byteorder.decode("ascii")
            if byteorder in ("<", ">"):
                obj.dtype = obj.dtype.newbyteorder(byteorder)
            return obj
        if isinstance(obj, _ArrayStub):
            obj.value = self._array(state)
            return obj.value
        raise self._fail(f"refusing BUILD on {type(obj).__name__}")

    def _array(self, state: Any) -> np.ndarray:
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # drop the version number
        if not (isinstance(state, tuple) and len(state) == 4):
            raise self._fail("malformed numpy array state")
        shape, dtype, fortran_order, raw = state
        if not isinstance(dtype, _DtypeStub):
            raise self._fail("numpy array without a numeric dtype")
        if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise self._fail(f"malformed numpy array shape {shape!r}")
        if not isinstance(raw, (bytes, bytearray)):
            raise self._fail("numpy array data is not raw bytes")
        expected = math.prod(shape) * dtype.dtype.itemsize
        if len(raw) != expected:
            raise self._fail(f"numpy array has {len(raw)} data bytes, expected {expected}")
        array = np.frombuffer(raw, dtype=dtype.dtype)
        return array.reshape(shape, order="F" if fortran_order else "C")

    # ---- the opcode loop

    def load(self) -> Any:
        """Interpret the opcode stream; return the top-level object (a dict for CIFAR-10)."""
        try:
            return self._run()
        except (IndexError, KeyError, TypeError, ValueError, UnicodeDecodeError, struct.error):
            raise self._fail("malformed pickle data") from None

    def _run(self) -> Any:
        """One branch per opcode: the clearest form for a reader that must stay auditable."""
        stack = self.stack
        while True:
            if self.pos >= len(self.data):
                raise self._fail("pickle data ends early (truncated file)")
            at = self.pos
            op = self.data[at : at + 1]
            self.pos += 1
            if op == b"\x80":  # PROTO
                if self._uint(1) > 4:
                    raise self._fail("pickle protocol 5 or later is not supported")
            elif op == b"\x95":  # FRAME: a length prefix; the frame's contents follow inline
                self._read(8)
            elif op == b".":  # STOP
                return self.stack.pop()
            elif op == b"(":  # MARK
                self.metastack.append(self.stack)
                self.stack = stack = []
            elif op == b"N":  # NONE
                stack.append(None)
            elif op == b"\x88":  # NEWTRUE
                stack.append(True)
            elif op == b"\x89":  # NEWFALSE
                stack.append(False)
            elif op == b"K":  # BININT1
                stack.append(self._uint(1))
            elif op == b"M":  # BININT2
                stack.append(self._uint(2))
            elif op == b"J":  # BININT
                stack.append(int.from_bytes(self._read(4), "little", signed=True))
            elif op in (b"\x8a", b"\x8b"):  # LONG1, LONG4
                size = self._uint(1 if op == b"\x8a" else 4)
                stack.append(int.from_bytes(self._read(size), "little", signed=True))
            elif op == b"G":  # BINFLOAT
                stack.append(struct.unpack(">d", self._read(8))[0])
            elif op in (b"U", b"C"):  # SHORT_BINSTRING (Python 2 str), SHORT_BINBYTES
                stack.append(self._read(self._uint(1)))
            elif op in (b"T", b"B"):  # BINSTRING (Python 2 str), BINBYTES
                stack.append(self._read(self._uint(4)))
            elif op == b"\x8e":  # BINBYTES8
                stack.append(self._read(self._uint(8)))
            elif op == b"\x8c":  # SHORT_BINUNICODE
                stack.append(self._read(self._uint(1)).decode("utf-8", "surrogatepass"))
            elif op == b"X":  # BINUNICODE
                stack.append(self._read(self._uint(4)).decode("utf-8", "surrogatepass"))
            elif op == b"\x8d":  # BINUNICODE8
                stack.append(self._read(self._uint(8)).decode("utf-8", "surrogatepass"))
            elif op == b"}":  # EMPTY_DICT
                stack.append({})
            elif op == b"]":  # EMPTY_LIST
                stack.append([])
            elif op == b")":  # EMPTY_TUPLE
                stack.append(())
            elif op == b"t":  # TUPLE
                items = tuple(self._pop_mark())
                stack = self.stack
                stack.append(items)
            elif op in (b"\x85", b"\x86", b"\x87"):  # TUPLE1, TUPLE2, TUPLE3
                size = op[0] - 0x84
                if len(stack) < size:
                    raise self._fail("malformed pickle data")
                items = tuple(stack[-size:])
                del stack[-size:]
                stack.append(items)
            elif op == b"s":  # SETITEM
                value = stack.pop()
                key = stack.pop()
                self._setitems(stack[-1], [key, value])
            elif op == b"u":  # SETITEMS
                items = self._pop_mark()
                stack = self.stack
                self._setitems(stack[-1], items)
            elif op == b"a":  # APPEND
                value = stack.pop()
                self._appends(stack[-1], [value])
            elif op == b"e":  # APPENDS
                items = self._pop_mark()
                stack = self.stack
                self._appends(stack[-1], items)
            elif op == b"q":  # BINPUT
                self.memo[self._uint(1)] = stack[-1]
            elif op == b"r":  # LONG_BINPUT
                self.memo[self._uint(4)] = stack[-1]
            elif op == b"\x94":  # MEMOIZE
                self.memo[len(self.memo)] = stack[-1]
            elif op == b"h":  # BINGET
                stack.append(self._get(self._uint(1)))
            elif op == b"j":  # LONG_BINGET
                stack.append(self._get(self._uint(4)))
            elif op == b"c":  # GLOBAL
                module = self._readline()
                stack.append(self._global(module, self._readline()))
            elif op == b"\x93":  # STACK_GLOBAL
                name = stack.pop()
                module = stack.pop()
                if not (isinstance(module, str) and isinstance(name, str)):
                    raise self._fail("malformed pickle global")
                stack.append(self._global(module, name))
            elif op == b"R":  # REDUCE
                args = stack.pop()
                stack[-1] = self._reduce(stack[-1], args)
            elif op == b"b":  # BUILD
                state = stack.pop()
                stack[-1] = self._build(stack[-1], state)
            else:
                raise self._fail(f"refusing pickle opcode {op!r} at byte {at}")

    def _setitems(self, target: Any, items: list[Any]) -> None:
        if not isinstance(target, dict) or len(items) % 2:
            raise self._fail("malformed pickle dict")
        for key, value in zip(items[::2], items[1::2], strict=True):
            target[key] = value

    def _appends(self, target: Any, items: list[Any]) -> None:
        if not isinstance(target, list):
            raise self._fail("malformed pickle list")
        target.extend(items)


# --------------------------------------------------------------------------- CIFAR-10


def _locate_cifar10(path: Path) -> tuple[str, Path]:
    """``("py" | "bin", directory)`` holding the CIFAR-10 batches under ``path``."""
    for directory in (path, path / "cifar-10-batches-py", path / "cifar-10-batches-bin"):
        if any((directory / name).is_file() for name in ("test_batch", "data_batch_1")):
            return "py", directory
        if any((directory / f"{name}.bin").is_file() for name in ("test_batch", "data_batch_1")):
            return "bin", directory
    raise DmlError(missing_files_message("cifar10", path))


def _check_labels(labels: np.ndarray, file: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DmlError(f"{file}: labels outside 0..9; not a CIFAR-10 batch")


def _read_cifar10_python_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """One python batch -> (uint8 [n, 3, 32, 32], int64 [n]), without unpickling."""
    batch = _SafeUnpickler(_read_bytes(file), file).load()
    if not isinstance(batch, dict):
        raise DmlError(f"{file}: expected a dict of 'data' and 'labels'; not a CIFAR-10 batch")
    fields = {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in batch.items()}
    data, labels = fields.get("data"), fields.get("labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise DmlError(f"{file}: no 'data' array or 'labels' list; not a CIFAR-10 batch")
    if data.dtype != np.uint8 or data.size != len(data) * _CIFAR10_PIXELS:
        raise DmlError(
            f"{file}: 'data' is {data.dtype} {list(data.shape)}, expected uint8 [n, 3072]"
        )
    if isinstance(labels, np.ndarray) and labels.dtype.kind in "iu":
        labels = labels.astype(np.int64).reshape(-1)
    elif isinstance(labels, list) and all(type(v) is int for v in labels):
        labels = np.array(labels, dtype=np.int64)
    else:
        raise DmlError(f"{file}: 'labels' is not a list of integers; not a CIFAR-10 batch")
    if len(labels) != len(data):
        raise DmlError(f"{file}: {len(data)} images but {len(labels)} labels")
    _check_labels(labels, file)
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar10_binary_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch (records of 1 label byte + 3072 pixels) -> (uint8, int64)."""
    raw = _read_bytes(file)
    record = 1 + _CIFAR10_PIXELS
    if len(raw) % record:
        raise DmlError(
            f"{file}: {len(raw)} bytes is not a whole number of {record}-byte records "
            "(1 label byte + 3072 pixels); the file is truncated or not a CIFAR-10 batch"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    labels = records[:, 0].astype(np.int64)
    _check_labels(labels, file)
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def read_cifar10(path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read CIFAR-10 ``split`` from ``path``, which is or contains ``cifar-10-batches-py/``
    (python batches ``data_batch_1..5``, ``test_batch``) or ``cifar-10-batches-bin/``
    (``data_batch_1.bin..5.bin``, ``test_batch.bin``).

    Returns ``x`` uint8 ``[N, 3, 32, 32]`` (N = 50000 train, 10000 test for the real data)
    and ``y`` int64 ``[N]`` in 0..9.
    """
    _check_split(split)
    path = Path(path).expanduser()
    kind, directory = _locate_cifar10(path)
    names = CIFAR10_TRAIN_BATCHES if split == "train" else CIFAR10_TEST_BATCHES
    suffix, read_batch = (
        ("", _read_cifar10_python_batch) if kind == "py" else (".bin", _read_cifar10_binary_batch)
    )
    files = [directory / f"{name}{suffix}" for name in names]
    for file in files:
        if not file.is_file():
            raise DmlError(f"cifar10: {file} is missing; put all CIFAR-10 {split} batches there")
    batches = [read_batch(file) for file in files]
    x = np.concatenate([images for images, _ in batches])
    y = np.concatenate([labels for _, labels in batches])
    return torch.from_numpy(x), torch.from_numpy(y)


# --------------------------------------------------------------------------- ImageFolder


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
    _check_split(split)
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
