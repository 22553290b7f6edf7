"""The artifacts directory: checkpoints, results, lookups. Every write is atomic.

Layout::

    artifacts/
      models/<run>/model.safetensors    all members + the resolved config (JSON metadata)
      models/<run>/history.parquet      per-epoch training history
      models/<run>/resume.safetensors   last epoch/step checkpoint for --resume
      results/<run>/<kind>-<key>.parquet one row per (sample, setting, scored model)

Nothing is ever unpickled: checkpoints are safetensors with a SHA-256 of their tensors in
the metadata, checked on every load; results are parquet with their setting as metadata.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
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

FORMAT = "dmlcli/ensemble"
FORMAT_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MODEL_FILE, HISTORY_FILE, RESUME_FILE = "model.safetensors", "history.parquet", "resume.safetensors"


def default_root() -> Path:
    """``$DML_ARTIFACTS`` or ``./artifacts``."""
    return Path(os.environ.get("DML_ARTIFACTS", "artifacts"))


def validate_name(name: str) -> str:
    """A run name that cannot escape the store: letters, digits, ``.``, ``_``, ``-``."""
    if not _NAME.match(name) or ".." in name:
        raise DmlError(
            f"bad run name {name!r}: use letters, digits, '.', '_' and '-' (no '..', no '/')"
        )
    return name


def versions() -> dict[str, str]:
    """Library versions stored with every artifact."""
    import numpy
    import safetensors

    from dmlcli import __version__

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
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "sha256": digest}
    header["meta"] = json.dumps(meta, sort_keys=True)
    atomic_write_bytes(path, st_save(tensors, metadata=header))
    return digest


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """Read and verify a file written by :func:`save_tensors`: (tensors, meta, digest)."""
    if not path.is_file():
        raise DmlError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DmlError(f"{path} is not a readable safetensors file ({reason})") from None
    if header.get("format") != FORMAT:
        raise DmlError(f"{path} is a safetensors file but not a dml checkpoint")
    if header.get("format_version") != str(FORMAT_VERSION):
        raise DmlError(
            f"{path} has checkpoint format {header.get('format_version')}, "
            f"this dml reads {FORMAT_VERSION}"
        )
    digest = tensors_digest(tensors)
    if digest != header.get("sha256"):
        raise DmlError(f"{path} is corrupt: its tensors do not match the stored SHA-256")
    try:
        meta = json.loads(header.get("meta", ""))
    except json.JSONDecodeError:
        raise DmlError(f"{path} has unreadable metadata") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise DmlError(f"{path} holds NaN or Inf values in {name}")
    return tensors, meta, digest


_REQUIRED = {
    "dataset": str,
    "backbone": str,
    "members": int,
    "num_classes": int,
    "in_channels": int,
    "image_size": int,
    "head": str,
    "seed": int,
    "mean": list,
    "std": list,
}


def validate_config(config: Any, where: str) -> dict[str, Any]:
    """Check a stored run configuration against the schema the ensemble needs."""
    from dmlcli.data import DATASETS
    from dmlcli.models.backbones import list_backbones
    from dmlcli.models.dml import HEADS

    if not isinstance(config, dict):
        raise DmlError(f"{where}: metadata holds no run configuration")
    for key, typ in _REQUIRED.items():
        if key not in config:
            raise DmlError(f"{where}: configuration lacks {key!r}")
        if not isinstance(config[key], typ):
            raise DmlError(f"{where}: configuration key {key!r} should be {typ.__name__}")
    checks = [
        (config["dataset"] in DATASETS, f"unknown dataset {config['dataset']!r}"),
        (config["backbone"] in list_backbones(), f"unknown architecture {config['backbone']!r}"),
        (config["head"] in HEADS, f"unknown head {config['head']!r}"),
        (1 <= config["members"] <= 64, f"implausible member count {config['members']}"),
    ]
    for ok, message in checks:
        if not ok:
            raise DmlError(f"{where}: {message}")
    return config


def save_ensemble(
    path: Path, ensemble: torch.nn.Module, extra: dict[str, Any] | None = None
) -> str:
    """Write ``ensemble`` (all members) with its config as metadata; returns the digest."""
    meta = {"config": ensemble.config, "versions": versions(), "saved": now(), **(extra or {})}
    return save_tensors(path, ensemble.state_dict(), meta)


def load_ensemble(path: Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild an :class:`~dmlcli.models.ensemble.Ensemble` from its safetensors file alone."""
    from dmlcli.models.ensemble import Ensemble

    tensors, meta, digest = read_tensors(path)
    config = validate_config(meta.get("config"), str(path))
    ensemble = Ensemble(config)
    expected = ensemble.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise DmlError(
            f"{path} does not match its configuration: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    for name, t in expected.items():
        if tensors[name].shape != t.shape or tensors[name].dtype != t.dtype:
            raise DmlError(
                f"{path}: {name} has shape {tuple(tensors[name].shape)}, "
                f"the configuration needs {tuple(t.shape)}"
            )
    ensemble.load_state_dict(tensors)
    ensemble.digest = digest
    ensemble.meta = meta
    return ensemble.eval().to(device)


def write_parquet(path: Path, df: pd.DataFrame, meta: dict[str, Any]) -> None:
    """Atomically write ``df`` with JSON ``meta`` under the schema key ``dml``."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"dml": json.dumps(meta, sort_keys=True).encode()}
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
    raw = (table.schema.metadata or {}).get(b"dml")
    meta = json.loads(raw) if raw else {}
    return table.to_pandas(), meta


def setting_key(setting: dict[str, Any]) -> str:
    """Short stable hash of a result setting (its file name part)."""
    return hashlib.sha256(json.dumps(setting, sort_keys=True).encode()).hexdigest()[:12]


class Store:
    """An artifacts directory (see the module docstring for its layout)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    # -- runs ----------------------------------------------------------------------------
    def run_dir(self, name: str) -> Path:
        return self.root / "models" / validate_name(name)

    def model_path(self, name: str) -> Path:
        return self.run_dir(name) / MODEL_FILE

    def has_run(self, name: str) -> bool:
        return self.model_path(name).is_file()

    def resolve_checkpoint(self, ref: str | Path) -> Path:
        """A run name, a run directory or a ``.safetensors`` path -> the checkpoint file."""
        path = Path(ref)
        if path.suffix == ".safetensors":
            if not path.is_file():
                raise DmlError(f"checkpoint {path} does not exist")
            return path
        if path.is_dir() and (path / MODEL_FILE).is_file():
            return path / MODEL_FILE
        if path.is_dir():
            raise DmlError(f"{path} holds no {MODEL_FILE}")
        model = self.model_path(str(ref))
        if not model.is_file():
            runs = ", ".join(self.list_runs()[:8]) or "none yet"
            raise DmlError(f"no run named {ref!r} in {self.root} (runs: {runs})")
        return model

    def list_runs(self) -> list[str]:
        models = self.root / "models"
        if not models.is_dir():
            return []
        return sorted(p.parent.name for p in models.glob(f"*/{MODEL_FILE}"))

    def run_name_of(self, checkpoint: Path) -> str:
        """The run name stored with a checkpoint (its folder name for store runs)."""
        return checkpoint.parent.name if checkpoint.name == MODEL_FILE else checkpoint.stem

    # -- results -------------------------------------------------------------------------
    def result_path(self, kind: str, run: str, setting: dict[str, Any]) -> Path:
        return self.root / "results" / validate_name(run) / f"{kind}-{setting_key(setting)}.parquet"

    def write_result(
        self,
        kind: str,
        run: str,
        setting: dict[str, Any],
        df: pd.DataFrame,
        extra: dict | None = None,
    ) -> Path:
        """Atomically store result rows with their setting, versions and command line."""
        path = self.result_path(kind, run, setting)
        meta = {
            "kind": kind,
            "run": run,
            "setting": setting,
            "versions": versions(),
            "command": " ".join(sys.argv),
            "created": now(),
            **(extra or {}),
        }
        write_parquet(path, df, meta)
        return path

    def list_results(self, kind: str | None = None) -> list[Path]:
        results = self.root / "results"
        pattern = f"*/{kind}-*.parquet" if kind else "*/*.parquet"
        return sorted(results.glob(pattern)) if results.is_dir() else []


def load_run(
    name_or_path: str | Path, artifacts: str | Path | None = None, device: str = "cpu"
) -> torch.nn.Module:
    """Rebuild a trained ensemble from a run name, run folder or ``.safetensors`` path."""
    store = Store(artifacts)
    return load_ensemble(store.resolve_checkpoint(name_or_path), device)
