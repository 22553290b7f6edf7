"""Tests of dmlcli.readers on small files written in the real formats.

``pickle`` writes the CIFAR-10 fixtures, as the real files were written; the library reads
them with a restricted unpickler, and the malicious pickles here check that it runs nothing.
"""

from __future__ import annotations

import builtins
import codecs
import gzip
import os
import pickle
import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dmlcli.errors import DmlError
from dmlcli.readers import (
    missing_files_message,
    read_cifar10,
    read_idx_dir,
    read_image_folder,
)

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# --------------------------------------------------------------------------- IDX


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x0000080N, N big-endian dims, the bytes."""
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(directory: Path, name: str, array: np.ndarray, gz: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    file = directory / (f"{name}.gz" if gz else name)
    file.write_bytes(gzip.compress(data) if gz else data)
    return file


def write_idx_split(
    directory: Path, split: str, n: int, gz: bool, seed: int = 0, hw: tuple[int, int] = (28, 28)
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *hw), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    write_idx(directory, f"{prefix}-images-idx3-ubyte", images, gz)
    write_idx(directory, f"{prefix}-labels-idx1-ubyte", labels, gz)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_round_trip(tmp_path: Path, gz: bool, split: str) -> None:
    images, labels = write_idx_split(tmp_path, split, n=7, gz=gz)
    x, y = read_idx_dir(tmp_path, split)
    assert x.dtype == torch.uint8 and x.shape == (7, 1, 28, 28)
    assert y.dtype == torch.int64 and y.shape == (7,)
    assert np.array_equal(x[:, 0].numpy(), images)
    assert np.array_equal(y.numpy(), labels.astype(np.int64))


def test_idx_reads_the_requested_split(tmp_path: Path) -> None:
    train_images, _ = write_idx_split(tmp_path, "train", n=5, gz=True, seed=1)
    test_images, _ = write_idx_split(tmp_path, "test", n=3, gz=False, seed=2)
    assert np.array_equal(read_idx_dir(tmp_path, "train")[0][:, 0].numpy(), train_images)
    assert np.array_equal(read_idx_dir(tmp_path, "test")[0][:, 0].numpy(), test_images)


def test_idx_shape_comes_from_the_header(tmp_path: Path) -> None:
    images, _ = write_idx_split(tmp_path, "test", n=4, gz=True, hw=(8, 6))
    x, _ = read_idx_dir(tmp_path, "test")
    assert x.shape == (4, 1, 8, 6)
    assert np.array_equal(x[:, 0].numpy(), images)


@pytest.mark.parametrize("layout", ["MNIST/raw", "FashionMNIST/raw", "raw"])
def test_idx_torchvision_layouts(tmp_path: Path, layout: str) -> None:
    images, labels = write_idx_split(tmp_path / layout, "test", n=3, gz=True)
    x, y = read_idx_dir(tmp_path, "test")
    assert np.array_equal(x[:, 0].numpy(), images)
    assert np.array_equal(y.numpy(), labels)


def test_idx_dataset_name_picks_its_torchvision_folder(tmp_path: Path) -> None:
    mnist, _ = write_idx_split(tmp_path / "MNIST/raw", "test", n=3, gz=True, seed=1)
    fashion, _ = write_idx_split(tmp_path / "FashionMNIST/raw", "test", n=4, gz=True, seed=2)
    x, _ = read_idx_dir(tmp_path, "test", dataset="fashion-mnist")
    assert np.array_equal(x[:, 0].numpy(), fashion)
    x, _ = read_idx_dir(tmp_path, "test", dataset="mnist")
    assert np.array_equal(x[:, 0].numpy(), mnist)


def test_idx_prefers_plain_file_over_gz(tmp_path: Path) -> None:
    # torchvision's raw/ folder holds both the .gz and the extracted file
    images, _ = write_idx_split(tmp_path, "test", n=3, gz=False, seed=1)
    write_idx_split(tmp_path, "test", n=3, gz=True, seed=2)
    assert np.array_equal(read_idx_dir(tmp_path, "test")[0][:, 0].numpy(), images)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated_file(tmp_path: Path, gz: bool) -> None:
    write_idx_split(tmp_path, "test", n=5, gz=False)
    file = tmp_path / "t10k-images-idx3-ubyte"
    data = file.read_bytes()[:-100]
    file.unlink()
    if gz:
        file = tmp_path / "t10k-images-idx3-ubyte.gz"
        file.write_bytes(gzip.compress(data))
    else:
        file.write_bytes(data)
    with pytest.raises(DmlError, match="t10k-images-idx3-ubyte.*truncated"):
        read_idx_dir(tmp_path, "test")


def test_idx_truncated_gzip_stream(tmp_path: Path) -> None:
    write_idx_split(tmp_path, "test", n=5, gz=True)
    file = tmp_path / "t10k-labels-idx1-ubyte.gz"
    file.write_bytes(file.read_bytes()[:-10])
    with pytest.raises(DmlError, match="t10k-labels-idx1-ubyte.gz"):
        read_idx_dir(tmp_path, "test")


def test_idx_bad_magic(tmp_path: Path) -> None:
    write_idx_split(tmp_path, "train", n=2, gz=False)
    # labels file in place of the images file: magic 0x801, not 0x803
    labels = np.zeros(2, dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(DmlError, match=r"train-images-idx3-ubyte.*magic number 0x00000801"):
        read_idx_dir(tmp_path, "train")


def test_idx_count_mismatch(tmp_path: Path) -> None:
    write_idx_split(tmp_path, "test", n=5, gz=True)
    write_idx(tmp_path, "t10k-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8), gz=True)
    with pytest.raises(DmlError, match="5 images.*t10k-labels-idx1-ubyte.gz has 4 labels"):
        read_idx_dir(tmp_path, "test")


def test_idx_missing_files_say_what_to_put_where(tmp_path: Path) -> None:
    with pytest.raises(DmlError) as info:
        read_idx_dir(tmp_path, "test", dataset="fashion-mnist")
    message = str(info.value)
    assert message.startswith("fashion-mnist: no IDX files in ")
    assert str(tmp_path) in message
    assert "t10k-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "--data-dir" in message and "\n" not in message


def test_idx_missing_labels_file_is_named(tmp_path: Path) -> None:
    write_idx(tmp_path, "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8), gz=True)
    with pytest.raises(DmlError, match="not train-labels-idx1-ubyte"):
        read_idx_dir(tmp_path, "train")


def test_idx_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DmlError, match="no such directory"):
        read_idx_dir(tmp_path / "nowhere", "train", dataset="mnist")


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(DmlError, match="unknown split"):
        read_idx_dir(tmp_path, "validation")


def test_missing_files_message_names_every_file() -> None:
    message = missing_files_message("mnist", Path("/x"))
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert name in message
    assert "cifar-10-batches-py" in missing_files_message("cifar10", Path("/x"))
    assert "one folder per class" in missing_files_message("resisc45", Path("/x"))


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason=f"{FASHION_MNIST} is not installed")
def test_real_fashion_mnist_test_split() -> None:
    x, y = read_idx_dir(FASHION_MNIST, "test", dataset="fashion-mnist")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.dtype == torch.int64
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))
    assert 0 < x.float().mean() < 255


# --------------------------------------------------------------------------- CIFAR-10


def cifar_batch(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()


def python_batch_dict(data: np.ndarray, labels: list[int], name: str) -> dict:
    """A dict shaped like the real batches (Python 2 pickles: every key is bytes)."""
    return {
        b"batch_label": f"{name} of 5".encode(),
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }


def write_cifar_python(
    directory: Path, protocol: int, sizes: tuple[int, ...] = (2, 3, 1, 2, 4), n_test: int = 3
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write data_batch_1..5 and test_batch with pickle.dump; return the expected arrays."""
    directory.mkdir(parents=True, exist_ok=True)
    batches = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for seed, (name, n) in enumerate(zip(names, [*sizes, n_test], strict=True)):
        data, labels = cifar_batch(n, seed)
        with open(directory / name, "wb") as f:
            pickle.dump(python_batch_dict(data, labels, name), f, protocol=protocol)
        batches[name] = (data.reshape(n, 3, 32, 32), np.array(labels, dtype=np.int64))
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    return {
        "train": (np.concatenate([d for d, _ in train]), np.concatenate([y for _, y in train])),
        "test": batches["test_batch"],
    }


def py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """The opcode stream Python 2's cPickle (protocol 2) wrote for the real CIFAR-10 batches:
    str keys as SHORT_BINSTRING, the pixels as one BINSTRING, ``numpy.core.multiarray``."""

    def pystr(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<I", len(b))) + b

    array = (
        b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85"
        + pystr(b"b")
        + b"\x87Rq\x03(K\x01"
        + b"M"
        + struct.pack("<H", data.shape[0])
        + b"M"
        + struct.pack("<H", data.shape[1])
        + b"\x86cnumpy\ndtype\nq\x04"
        + pystr(b"u1")
        + b"K\x00K\x01\x87Rq\x05(K\x03"
        + pystr(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
        + pystr(data.tobytes())
        + b"tb"
    )
    label_list = b"]q\x06(" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return (
        b"\x80\x02}q\x00("
        + pystr(b"data")
        + array
        + pystr(b"labels")
        + label_list
        + pystr(b"batch_label")
        + pystr(b"testing batch 1 of 1")
        + b"u."
    )


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar_python_batches(tmp_path: Path, protocol: int, split: str) -> None:
    expected = write_cifar_python(tmp_path / "cifar-10-batches-py", protocol)
    x, y = read_cifar10(tmp_path, split)
    data, labels = expected[split]
    assert x.dtype == torch.uint8 and x.shape == (len(labels), 3, 32, 32)
    assert y.dtype == torch.int64 and y.shape == (len(labels),)
    assert np.array_equal(x.numpy(), data)
    assert np.array_equal(y.numpy(), labels)


def test_cifar_path_may_be_the_batches_folder(tmp_path: Path) -> None:
    expected = write_cifar_python(tmp_path / "cifar-10-batches-py", protocol=4)
    x, y = read_cifar10(tmp_path / "cifar-10-batches-py", "test")
    assert np.array_equal(x.numpy(), expected["test"][0])
    assert np.array_equal(y.numpy(), expected["test"][1])


def test_cifar_str_keys(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    data, labels = cifar_batch(3, seed=5)
    with open(directory / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": labels}, f, protocol=4)
    x, y = read_cifar10(tmp_path, "test")
    assert np.array_equal(x.numpy().reshape(3, -1), data)
    assert y.tolist() == labels


def test_cifar_python2_style_pickle(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    data, labels = cifar_batch(4, seed=3)
    (directory / "test_batch").write_bytes(py2_cifar_pickle(data, labels))
    x, y = read_cifar10(tmp_path, "test")
    assert np.array_equal(x.numpy().reshape(4, -1), data)
    assert y.tolist() == labels


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar_binary_batches(tmp_path: Path, split: str) -> None:
    directory = tmp_path / "cifar-10-batches-bin"
    directory.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    all_data, all_labels = [], []
    for seed, name in enumerate(names):
        data, labels = cifar_batch(seed + 2, seed)
        records = np.concatenate([np.array(labels, np.uint8)[:, None], data], axis=1)
        (directory / f"{name}.bin").write_bytes(records.tobytes())
        all_data.append(data)
        all_labels += labels
    x, y = read_cifar10(tmp_path, split)
    assert x.dtype == torch.uint8 and x.shape == (len(all_labels), 3, 32, 32)
    assert y.dtype == torch.int64
    assert np.array_equal(x.numpy().reshape(len(all_labels), -1), np.concatenate(all_data))
    assert y.tolist() == all_labels


def test_cifar_binary_truncated(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-10-batches-bin"
    directory.mkdir()
    (directory / "test_batch.bin").write_bytes(bytes(3073 * 2 - 5))
    with pytest.raises(DmlError, match="test_batch.bin.*truncated"):
        read_cifar10(tmp_path, "test")


def test_cifar_python_truncated(tmp_path: Path) -> None:
    write_cifar_python(tmp_path / "cifar-10-batches-py", protocol=4)
    file = tmp_path / "cifar-10-batches-py" / "test_batch"
    file.write_bytes(file.read_bytes()[:-300])
    with pytest.raises(DmlError, match="test_batch.*truncated"):
        read_cifar10(tmp_path, "test")


def test_cifar_missing_train_batch_is_named(tmp_path: Path) -> None:
    write_cifar_python(tmp_path / "cifar-10-batches-py", protocol=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DmlError, match="data_batch_3 is missing"):
        read_cifar10(tmp_path, "train")


def test_cifar_missing_everything(tmp_path: Path) -> None:
    with pytest.raises(DmlError, match="cifar-10-batches-py.*--data-dir"):
        read_cifar10(tmp_path, "test")


def write_test_batch(tmp_path: Path, payload: bytes) -> Path:
    """``payload`` as ``tmp_path/cifar-10-batches-py/test_batch``; returns the file."""
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir(exist_ok=True)
    file = directory / "test_batch"
    file.write_bytes(payload)
    return file


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_cifar_restricted_unpickler_loads_every_protocol(tmp_path: Path, protocol: int) -> None:
    data, labels = cifar_batch(3, seed=protocol)
    write_test_batch(tmp_path, pickle.dumps({b"data": data, b"labels": labels}, protocol))
    x, y = read_cifar10(tmp_path, "test")
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 32, 32)
    assert np.array_equal(x.numpy().reshape(3, -1), data)
    assert y.dtype == torch.int64 and y.tolist() == labels


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("label_dtype", [np.uint8, np.int32, ">i8"])
def test_cifar_labels_array_fortran_data(tmp_path: Path, protocol: int, label_dtype) -> None:
    data, labels = cifar_batch(4, seed=1)
    batch = {
        b"data": np.asfortranarray(data),  # _reconstruct with is_fortran / _frombuffer "F"
        b"labels": np.array(labels, dtype=label_dtype),
        b"filenames": [b"a.png", b"b.png", b"c.png", b"d.png"],
        b"extra": (1.5, None, True, "text", {"nested": [b"x", 2**70]}),
    }
    write_test_batch(tmp_path, pickle.dumps(batch, protocol=protocol))
    x, y = read_cifar10(tmp_path, "test")
    assert np.array_equal(x.numpy().reshape(4, -1), data)
    assert y.dtype == torch.int64 and y.tolist() == labels


class Payload:
    """Unpickling this with plain ``pickle`` calls ``function(*args)``."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return (self.function, self.args)


def malicious_payloads(marker: Path) -> dict[str, tuple[Payload, str]]:
    """Each creates ``marker`` when unpickled; with the global the refusal must name (below
    protocol 3 pickle writes Python 2's names: ``__builtin__.eval``, ``commands.call``)."""
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    return {
        "os.system": (Payload(os.system, f"touch '{marker}'"), r"(posix|nt|os)\.system"),
        "builtins.eval": (Payload(builtins.eval, code), r"(builtins|__builtin__)\.eval"),
        "builtins.exec": (Payload(builtins.exec, code), r"(builtins|__builtin__)\.exec"),
        "subprocess.call": (
            Payload(subprocess.call, ["touch", str(marker)]),
            r"(subprocess|commands)\.call",
        ),
    }


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("where", ["extra key", "labels", "top level"])
@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "builtins.exec", "subprocess.call"])
def test_cifar_refuses_code_in_pickles(
    tmp_path: Path, protocol: int, where: str, name: str
) -> None:
    marker = tmp_path / "pwned"
    payload, forbidden = malicious_payloads(marker)[name]
    data, labels = cifar_batch(2, seed=0)
    if where == "top level":
        evil = payload
    elif where == "labels":
        evil = {b"data": data, b"labels": [0, payload]}
    else:
        evil = {b"data": data, b"labels": labels, b"x": payload}
    pickled = pickle.dumps(evil, protocol=protocol)
    file = write_test_batch(tmp_path, pickled)
    with pytest.raises(DmlError) as info:
        read_cifar10(tmp_path, "test")
    message = str(info.value)
    assert re.fullmatch(
        rf"{re.escape(str(file))}: refusing pickle global {forbidden}; not a plain CIFAR-10 "
        r"python batch",
        message,
    ), message
    assert not marker.exists()
    pickle.loads(pickled)  # the control: the payload is live, plain pickle runs it
    assert marker.exists()


@pytest.mark.parametrize(
    ("reduce", "refusal"),
    [
        # numpy.ndarray(shape, "O", buffer) would read object pointers from the file's bytes
        ((np.ndarray, ((1,), "O", b"A" * 8)), "refusing to call numpy.ndarray"),
        ((np.ndarray, ((1,), "u1")), "refusing to call numpy.ndarray"),
        # a dtype state may not add a sub-array or fields (numpy would accept both)
        (
            (np.dtype, ("u1", False, True), (3, "|", (np.dtype("u1"), (10**6,)), None, None)),
            "refusing a structured or sub-array numpy dtype",
        ),
        ((np.dtype, ("O8", False, True)), "refusing numpy dtype 'O8'"),
        ((codecs.encode, ("data", "rot13")), "refusing _codecs.encode other than"),
        ((np.frombuffer, (b"\x00" * 8, "u1")), r"refusing pickle global numpy\.frombuffer"),
    ],
)
def test_cifar_refuses_abuse_of_numpy_globals(tmp_path: Path, reduce: tuple, refusal: str) -> None:
    class Evil:
        def __reduce__(self):
            return reduce

    data, labels = cifar_batch(2, seed=0)
    write_test_batch(tmp_path, pickle.dumps({b"data": data, b"labels": labels, b"x": Evil()}, 2))
    with pytest.raises(DmlError, match=f"test_batch: {refusal}"):
        read_cifar10(tmp_path, "test")


def test_cifar_protocol_2_empty_bytes_are_refused(tmp_path: Path) -> None:
    """Python 3 writes b"" at protocol 2 as a call of builtins.bytes: no builtin is allowed."""
    data, labels = cifar_batch(2, seed=0)
    write_test_batch(tmp_path, pickle.dumps({b"data": data, b"labels": labels, b"": 0}, 2))
    with pytest.raises(DmlError, match=r"test_batch: refusing pickle global __builtin__\.bytes"):
        read_cifar10(tmp_path, "test")
    write_test_batch(tmp_path, pickle.dumps({b"data": data, b"labels": labels, b"": 0}, 3))
    assert read_cifar10(tmp_path, "test")[1].tolist() == labels


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize(
    ("key", "array"),
    [
        (b"data", np.array([b"a", 1], dtype=object)),
        (b"filenames", np.array([b"a.png", None], dtype=object)),
        (b"labels", np.array([0, 1], dtype=object)),
        (b"data", np.zeros(2, dtype=[("a", "u1"), ("b", "<f4")])),
        (b"filenames", np.array(["a.png", "b.png"])),
    ],
)
def test_cifar_refuses_object_and_structured_arrays(
    tmp_path: Path, protocol: int, key: bytes, array: np.ndarray
) -> None:
    data, labels = cifar_batch(2, seed=0)
    batch = {b"data": data, b"labels": labels, key: array}
    write_test_batch(tmp_path, pickle.dumps(batch, protocol=protocol))
    with pytest.raises(DmlError, match=r"test_batch: refusing numpy dtype '[OVU]\d+'"):
        read_cifar10(tmp_path, "test")


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("keep", [0, 1, 2, 40, 1000, -300, -1])
def test_cifar_python_truncated_is_one_line(tmp_path: Path, protocol: int, keep: int) -> None:
    data, labels = cifar_batch(2, seed=0)
    pickled = pickle.dumps({b"data": data, b"labels": labels}, protocol=protocol)
    file = write_test_batch(tmp_path, pickled[:keep])
    with pytest.raises(DmlError) as info:
        read_cifar10(tmp_path, "test")
    message = str(info.value)
    assert message.startswith(f"{file}: ") and "\n" not in message
    assert "truncated" in message or "malformed" in message, message


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        # LONG_BINPUT 2**31-1: CPython's unpickler would grow its memo to 2**32 slots (32 GiB)
        (b"\x80\x02Nr\xff\xff\xff\x7f.", r"malformed pickle data \(memo index 2147483647 "),
        (b"Np9999999999\n.", r"malformed pickle data \(memo index 9999999999 "),
        # BYTEARRAY8 / BINBYTES8 declaring 2**60 bytes in a 30-byte file: allocated up front
        (b"\x80\x05\x96" + (2**60).to_bytes(8, "little") + b"abc.", "truncated"),
        (b"\x80\x04\x8e" + (2**60).to_bytes(8, "little") + b"abc.", "truncated"),
    ],
)
def test_cifar_refuses_declared_sizes_beyond_the_file(
    tmp_path: Path, capfd: pytest.CaptureFixture, payload: bytes, problem: str
) -> None:
    file = write_test_batch(tmp_path, payload)
    with pytest.raises(DmlError, match=rf"test_batch: .*{problem}") as info:
        read_cifar10(tmp_path, "test")
    assert str(info.value).startswith(f"{file}: ")
    assert capfd.readouterr().err == ""  # CPython prints a SystemError for the bytearray one


def test_cifar_python_garbage_is_one_line(tmp_path: Path) -> None:
    file = write_test_batch(tmp_path, b"\xff" * 64)
    with pytest.raises(DmlError) as info:
        read_cifar10(tmp_path, "test")
    message = str(info.value)
    assert message.startswith(f"{file}: ") and "not a plain CIFAR-10 python batch" in message
    assert "\n" not in message


def test_cifar_refuses_object_arrays(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    data = np.array([b"a", 1], dtype=object)
    (directory / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1]}))
    with pytest.raises(DmlError, match="refusing numpy dtype"):
        read_cifar10(tmp_path, "test")


def test_cifar_refuses_wrong_content(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    (directory / "test_batch").write_bytes(pickle.dumps([1, 2, 3], protocol=4))
    with pytest.raises(DmlError, match="test_batch: expected a dict"):
        read_cifar10(tmp_path, "test")
    data = np.zeros((2, 100), dtype=np.uint8)
    (directory / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1]}))
    with pytest.raises(DmlError, match=r"test_batch: 'data' is uint8 \[2, 100\]"):
        read_cifar10(tmp_path, "test")


# --------------------------------------------------------------------------- ImageFolder


def write_png(file: Path, pixels: np.ndarray) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(file)


def make_image_folder(root: Path, classes: list[str], per_class: int) -> dict[Path, np.ndarray]:
    """``root/<class>/<i>.png`` with distinct 4x4 RGB pixels; returns file -> pixels [4,4,3]."""
    rng = np.random.default_rng(0)
    images = {}
    for c, name in enumerate(classes):
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
            pixels[0, 0, 0] = 10 * c + i  # identifies the image
            file = root / name / f"{i:02d}.png"
            write_png(file, pixels)
            images[file] = pixels
    return images


def test_image_folder_split_is_stratified_seeded_and_exact(tmp_path: Path) -> None:
    images = make_image_folder(tmp_path, ["forest", "beach", "river"], per_class=5)
    (tmp_path / "beach" / "notes.txt").write_text("not an image")
    x_train, y_train, classes = read_image_folder(tmp_path, "train", image_size=4, seed=3)
    x_test, y_test, test_classes = read_image_folder(tmp_path, "test", image_size=4, seed=3)
    assert classes == test_classes == ["beach", "forest", "river"]
    assert x_train.dtype == torch.uint8 and x_train.shape == (12, 3, 4, 4)
    assert y_train.dtype == torch.int64 and y_train.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert y_test.tolist() == [0, 1, 2]

    by_id = {int(p[0, 0, 0]): (p, classes.index(f.parent.name)) for f, p in images.items()}
    seen = []
    for x, y in ((x_train, y_train), (x_test, y_test)):
        for image, label in zip(x.permute(0, 2, 3, 1).numpy(), y.tolist(), strict=True):
            pixels, expected_label = by_id[int(image[0, 0, 0])]
            assert np.array_equal(image, pixels) and label == expected_label
            seen.append(int(image[0, 0, 0]))
    assert sorted(seen) == sorted(by_id)  # train and test partition the images

    again, _, _ = read_image_folder(tmp_path, "test", image_size=4, seed=3)
    assert torch.equal(again, x_test)
    other_seeds = [read_image_folder(tmp_path, "test", 4, seed=s)[0] for s in range(4, 8)]
    assert any(not torch.equal(x, x_test) for x in other_seeds)


def test_image_folder_train_test_dirs(tmp_path: Path) -> None:
    train = make_image_folder(tmp_path / "train", ["b", "a"], per_class=2)
    make_image_folder(tmp_path / "test", ["a"], per_class=1)
    x, y, classes = read_image_folder(tmp_path, "train", image_size=4)
    assert classes == ["a", "b"] and y.tolist() == [0, 0, 1, 1]
    expected = [train[tmp_path / "train" / c / f"{i:02d}.png"] for c in "ab" for i in range(2)]
    assert np.array_equal(x.permute(0, 2, 3, 1).numpy(), np.stack(expected))
    x, y, classes = read_image_folder(tmp_path, "test", image_size=4)
    assert classes == ["a", "b"] and y.tolist() == [0] and x.shape == (1, 3, 4, 4)


def test_image_folder_resizes_and_converts_to_rgb(tmp_path: Path) -> None:
    gray = np.full((10, 7), 77, dtype=np.uint8)  # constant, so bilinear resizing is exact
    for i in range(2):
        write_png(tmp_path / "only" / f"{i}.png", gray)
    Image.new("RGBA", (5, 5), (1, 2, 3, 4)).save(tmp_path / "only" / "rgba.png")
    x, y, _ = read_image_folder(tmp_path, "train", image_size=6, test_fraction=0.3)
    assert x.shape == (2, 3, 6, 6)
    x_all = torch.cat([x, read_image_folder(tmp_path, "test", 6, test_fraction=0.3)[0]])
    colors = sorted(tuple(image[:, 0, 0].tolist()) for image in x_all)
    assert colors == [(1, 2, 3), (77, 77, 77), (77, 77, 77)]
    assert all(bool((image == image[:, :1, :1]).all()) for image in x_all)


def test_image_folder_corrupt_file_is_named(tmp_path: Path) -> None:
    make_image_folder(tmp_path, ["a", "b"], per_class=3)
    bad = tmp_path / "c" / "broken.png"  # a class of one image: it goes to train
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(DmlError, match="broken.png: cannot decode image") as info:
        read_image_folder(tmp_path, "train", image_size=4)
    assert str(bad) in str(info.value)
    assert read_image_folder(tmp_path, "test", image_size=4)[0].shape == (2, 3, 4, 4)


def test_image_folder_truncated_file_is_named(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    file = tmp_path / "a" / "cut.png"
    write_png(file, pixels)
    file.write_bytes(file.read_bytes()[:200])
    with pytest.raises(DmlError, match="cut.png: cannot decode image"):
        read_image_folder(tmp_path, "train", image_size=4)


def test_image_folder_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(DmlError, match="resisc45: no images in .*no such directory"):
        read_image_folder(tmp_path / "nowhere", "train", 8, dataset="resisc45")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DmlError, match="one folder per class"):
        read_image_folder(tmp_path, "train", 8)


def test_image_folder_bad_arguments(tmp_path: Path) -> None:
    make_image_folder(tmp_path, ["a"], per_class=2)
    with pytest.raises(DmlError, match="image size"):
        read_image_folder(tmp_path, "train", 0)
    with pytest.raises(DmlError, match="test fraction"):
        read_image_folder(tmp_path, "train", 4, test_fraction=1.5)
