"""Files a person can open, written atomically: safetensors tensors with JSON metadata and
parquet tables with JSON metadata. Nothing is ever unpickled.

Every write goes to a temporary file in the target folder and is renamed into place
(``os.replace``), so nothing half-written is ever left under a final name. Every read is
validated and a bad file is one :class:`~dmlcli.errors.DmlError` line.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from dmlcli.errors import DmlError
from dmlcli.version import __version__

TENSOR_FORMAT = "dmlcli/ensemble"
TENSOR_FORMAT_VERSION = 1
PARQUET_KEY = b"dml"


def versions() -> dict[str, str]:
    """Library versions stored with every artifact."""
    import numpy
    import safetensors

    return {
        "dmlcli": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pandas": pd.__version__,
        "safetensors": safetensors.__version__,
        "python": sys.version.split()[0],
    }


def now() -> str:
    """UTC timestamp, ISO 8601, seconds."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock on ``path`` (created if missing) while the block runs; other
    processes that ask for it wait. A POSIX record lock (``fcntl.lockf``): released by the
    kernel if the holder dies, and honoured across machines on NFS (lockd) and most shared
    filesystems."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def atomic_write_json(path: Path, body: Any) -> None:
    """Atomically write ``body`` as indented JSON."""
    atomic_write_bytes(path, json.dumps(body, indent=1, default=str).encode())


# -- tensors ----------------------------------------------------------------------------------
def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``tensors`` in sorted order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """Atomically write ``tensors`` as safetensors with JSON ``meta``; returns the digest."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    digest = tensors_digest(tensors)
    header = {
        "format": TENSOR_FORMAT,
        "format_version": str(TENSOR_FORMAT_VERSION),
        "sha256": digest,
        "meta": json.dumps(meta, sort_keys=True),
    }
    atomic_write_bytes(path, st_save(tensors, metadata=header))
    return digest


def read_tensor_meta(path: Path) -> dict[str, Any]:
    """The JSON metadata of a file written by :func:`save_tensors`, without its tensors."""
    header = _header(path)
    return _meta_of(header, path)


def read_tensor_digest(path: Path) -> str:
    """The SHA-256 a file written by :func:`save_tensors` records for its tensors (read from
    its header; :func:`read_tensors` is what verifies it)."""
    return str(_header(path).get("sha256", ""))


def _header(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise DmlError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DmlError(f"{path} is not a readable safetensors file ({reason})") from None
    if header.get("format") != TENSOR_FORMAT:
        raise DmlError(f"{path} is a safetensors file but not a dml checkpoint")
    if header.get("format_version") != str(TENSOR_FORMAT_VERSION):
        raise DmlError(
            f"{path} has checkpoint format {header.get('format_version')}, "
            f"this dml reads {TENSOR_FORMAT_VERSION}"
        )
    return header


def _meta_of(header: dict[str, str], path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(header.get("meta", ""))
    except json.JSONDecodeError:
        raise DmlError(f"{path} has unreadable metadata") from None
    if not isinstance(meta, dict):
        raise DmlError(f"{path} has unreadable metadata")
    return meta


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """Read and verify a file written by :func:`save_tensors`: (tensors, meta, digest)."""
    header = _header(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DmlError(f"{path} is not a readable safetensors file ({reason})") from None
    digest = tensors_digest(tensors)
    if digest != header.get("sha256"):
        raise DmlError(f"{path} is corrupt: its tensors do not match the stored SHA-256")
    meta = _meta_of(header, path)
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise DmlError(f"{path} holds NaN or Inf values in {name}")
    return tensors, meta, digest


# -- tables -----------------------------------------------------------------------------------
def write_parquet(path: Path, df: pd.DataFrame, meta: dict[str, Any]) -> None:
    """Atomically write ``df`` with JSON ``meta`` under the schema key ``dml``."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), PARQUET_KEY: json.dumps(meta, sort_keys=True).encode()}
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_parquet(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a parquet file written by :func:`write_parquet`: (rows, metadata)."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DmlError(f"{path} is not a readable parquet file ({exc})") from None
    return table.to_pandas(), _parquet_meta(table.schema, path)


def read_parquet_meta(path: Path) -> dict[str, Any]:
    """The JSON metadata of a parquet file written by :func:`write_parquet` (rows unread)."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DmlError(f"{path} is not a readable parquet file ({exc})") from None
    return _parquet_meta(schema, path)


def _parquet_meta(schema: pa.Schema, path: Path) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(PARQUET_KEY)
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise DmlError(f"{path} has unreadable metadata") from None
    return meta if isinstance(meta, dict) else {}
