"""CIFAR-10 batches: python pickles (``cifar-10-batches-py``) and binary records (``-bin``).

The python batches are pickles, read with a :class:`pickle.Unpickler` whose ``find_class``
allows only numpy's array-reconstruction globals (the "Restricting Globals" recipe of the
:mod:`pickle` documentation): ``numpy.core.multiarray._reconstruct`` (or ``numpy._core``),
``numpy.ndarray`` and ``numpy.dtype``; ``numpy.core.numeric._frombuffer`` for pickle
protocol 5 and ``_codecs.encode`` (text to latin-1 bytes only) for bytes written by Python 3
at protocol 2. Every other global (``os.system``, ``builtins.eval``, ``subprocess.call``,
...) is refused before anything is called.

Even the allowed globals resolve to the small stand-ins below, not to numpy itself: the real
``numpy.ndarray(shape, "O", buffer)`` would turn bytes of the file into object pointers, and
the real ``dtype.__setstate__`` accepts states that make a ``uint8`` dtype claim to hold
objects. The stand-ins accept numeric dtypes only (never object, structured or sub-array),
let the pickle's BUILD set nothing but a dtype's byte order and an array's (shape, dtype,
raw bytes), and build the array with ``np.frombuffer``. Before unpickling, the opcodes are
walked with :func:`pickletools.genops` (which runs nothing) so that sizes the file does not
hold are refused rather than allocated.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmlcli.errors import DmlError
from dmlcli.readers._common import check_split, missing_files_message, read_bytes

CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)
_CIFAR10_PIXELS = 3 * 32 * 32

_NUMERIC_KINDS = "biufc"  # bool, int, unsigned, float, complex: never object, never structured
_NUMERIC_TYPESTR = re.compile(r"[<>|=]?[biufc][0-9]{1,2}")


# --------------------------------------------------------------------------- restricted unpickler


class _Allowed:
    """The stand-in for one allowed global: calls a validating function; BUILD is refused."""

    __slots__ = ("qualname", "_call")

    def __init__(self, qualname: str, call: Callable[..., Any]) -> None:
        self.qualname = qualname
        self._call = call

    def __call__(self, *args: Any) -> Any:
        return self._call(*args)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"refusing to set the state of {self.qualname}")


class _Dtype:
    """``numpy.dtype(typestr, align, copy)`` of a numeric type; BUILD sets only its byte order."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        # numpy writes (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 2:
            raise pickle.UnpicklingError("malformed numpy dtype state")
        if any(part is not None for part in state[2:5]):
            raise pickle.UnpicklingError("refusing a structured or sub-array numpy dtype")
        order = state[1].decode("ascii") if isinstance(state[1], bytes) else state[1]
        if order in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(order)
        elif order not in ("|", "="):
            raise pickle.UnpicklingError(f"malformed numpy byte order {order!r:.20}")


class _Array:
    """``_reconstruct(ndarray, (0,), b"b")``: an array whose BUILD gives it its data."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # numpy writes (version, shape, dtype, is_fortran, raw bytes); version 0 omits version
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4) or self.array is not None:
            raise pickle.UnpicklingError("malformed numpy array state")
        shape, dtype, fortran_order, raw = state
        self.array = _array_from_bytes(raw, dtype, shape, "F" if fortran_order else "C")


def _array_from_bytes(raw: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    if not isinstance(dtype, _Dtype):
        raise pickle.UnpicklingError("numpy array without a numeric dtype")
    if not (isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)):
        raise pickle.UnpicklingError(f"malformed numpy array shape {shape!r:.40}")
    if not isinstance(raw, (bytes, bytearray)):
        raise pickle.UnpicklingError("numpy array data is not raw bytes")
    expected = math.prod(shape) * dtype.dtype.itemsize
    if len(raw) != expected:
        raise pickle.UnpicklingError(f"numpy array has {len(raw)} data bytes, expected {expected}")
    return np.frombuffer(raw, dtype=dtype.dtype).reshape(shape, order=order)


def _dtype(*args: Any) -> _Dtype:
    typestr = args[0] if args else None
    if isinstance(typestr, bytes):
        typestr = typestr.decode("ascii")
    # numpy pickles a numeric dtype as kind + item size ("u1", "<f8"); matching that first
    # keeps any other string away from numpy's dtype parser
    dtype = None
    if isinstance(typestr, str) and _NUMERIC_TYPESTR.fullmatch(typestr):
        try:
            dtype = np.dtype(typestr)
        except (TypeError, ValueError):  # a size numpy lacks, such as "u3"
            pass
    if dtype is None or dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
        raise pickle.UnpicklingError(f"refusing numpy dtype {typestr!r:.40}")
    return _Dtype(dtype)


def _reconstruct(*args: Any) -> _Array:
    if not args or args[0] is not _NDARRAY:
        raise pickle.UnpicklingError("refusing _reconstruct of anything but numpy.ndarray")
    return _Array()


def _frombuffer(*args: Any) -> np.ndarray:
    """``numpy._core.numeric._frombuffer(buffer, dtype, shape, order)``: pickle protocol 5."""
    if len(args) != 4 or args[3] not in ("C", "F"):
        raise pickle.UnpicklingError("malformed call to numpy _frombuffer")
    buffer, dtype, shape, order = args
    return _array_from_bytes(buffer, dtype, shape, order)


def _latin1_bytes(*args: Any) -> bytes:
    """``_codecs.encode(text, "latin1")``: how Python 3 writes ``bytes`` at protocol 2."""
    if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode other than of text to latin-1 bytes")
    return args[0].encode("latin-1")


def _call_ndarray(*args: Any) -> Any:
    raise pickle.UnpicklingError("refusing to call numpy.ndarray")


_NDARRAY = _Allowed("numpy.ndarray", _call_ndarray)  # only _reconstruct's first argument
_ALLOWED_GLOBALS: dict[str, _Allowed] = {
    "numpy.ndarray": _NDARRAY,
    "numpy.dtype": _Allowed("numpy.dtype", _dtype),
    **{
        f"{module}._reconstruct": _Allowed(f"{module}._reconstruct", _reconstruct)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    },
    **{
        f"{module}._frombuffer": _Allowed(f"{module}._frombuffer", _frombuffer)
        for module in ("numpy.core.numeric", "numpy._core.numeric")
    },
    "_codecs.encode": _Allowed("_codecs.encode", _latin1_bytes),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numeric numpy arrays, dicts, lists, tuples, numbers, str and bytes only."""

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        allowed = _ALLOWED_GLOBALS.get(qualname)
        if allowed is None:
            shown = qualname if qualname.isprintable() else ascii(qualname)
            raise pickle.UnpicklingError(f"refusing pickle global {shown:.100}")
        return allowed


_MEMO_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")
_ENDS_EARLY = ("remain", "not enough data", "exhausted", "no newline")  # pickletools' words
_TRUNCATED = ("pickle data was truncated", "pickle exhausted before end of frame")


def _check_opcodes(raw: bytes) -> None:
    """Walk the opcodes with :func:`pickletools.genops`, which decodes and runs nothing.

    CPython's unpickler allocates what the stream declares before reading it: a length
    past the end of the file, or a memo index far beyond the opcodes read so far (9 bytes
    can ask for gigabytes of memo), is refused here instead.
    """
    try:
        for count, (opcode, arg, _) in enumerate(pickletools.genops(raw)):
            if opcode.name in _MEMO_PUTS and not 0 <= arg <= count:
                where = f"memo index {arg} at opcode {count}"
                raise pickle.UnpicklingError(f"malformed pickle data ({where})")
    except ValueError as error:
        message = " ".join(str(error).split())
        if any(words in message for words in _ENDS_EARLY):
            raise pickle.UnpicklingError("pickle data was truncated") from None
        raise pickle.UnpicklingError(f"malformed pickle data ({message:.100})") from None


def _unpickle(file: Path) -> Any:
    """The object pickled in ``file``: opcodes checked, then :class:`_RestrictedUnpickler`."""
    raw = read_bytes(file)
    try:
        _check_opcodes(raw)
        # encoding="bytes": Python 2's str (the real batches' keys and pixels) become bytes
        return _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except EOFError:
        what = "pickle data ends early (truncated file)"
    except pickle.UnpicklingError as error:
        what = " ".join(str(error).split())
        if what in _TRUNCATED:
            what = "pickle data ends early (truncated file)"
    except (
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
        OverflowError,
        RecursionError,
        TypeError,
        ValueError,  # includes UnicodeError
    ):
        what = "malformed pickle data"
    raise DmlError(f"{file}: {what}; not a plain CIFAR-10 python batch")


def _resolve(value: Any) -> Any:
    """An array stand-in -> its array (None if the pickle never gave it data)."""
    return value.array if isinstance(value, _Array) else value


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
    """One python batch -> (uint8 [n, 3, 32, 32], int64 [n]), by the restricted unpickler."""
    batch = _unpickle(file)
    if not isinstance(batch, dict):
        raise DmlError(f"{file}: expected a dict of 'data' and 'labels'; not a CIFAR-10 batch")
    fields = {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in batch.items()}
    data, labels = _resolve(fields.get("data")), _resolve(fields.get("labels"))
    if not isinstance(data, np.ndarray) or labels is None:
        raise DmlError(f"{file}: no 'data' array or 'labels' list; not a CIFAR-10 batch")
    if data.dtype != np.uint8 or data.ndim < 1 or data.size != len(data) * _CIFAR10_PIXELS:
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
    raw = read_bytes(file)
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
    check_split(split)
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
