"""Opening runs: a run name, run folder or checkpoint file -> a loaded :class:`Run`."""

from __future__ import annotations

from pathlib import Path

import torch

from dmlcli.errors import DmlError
from dmlcli.models.io import Run, load_checkpoint
from dmlcli.models.spec import is_spec, load_spec_run, read_spec
from dmlcli.store import Store, validate_name


def open_run(ref: str | Path, store: Store | None = None, device: str = "cpu") -> Run:
    """The run ``ref`` names: a run of ``store``, a run folder, a ``.safetensors`` file, or a
    model spec (``.toml``, :mod:`dmlcli.models.spec`: a user's own ensemble, recorded in the
    store so that its name works like a run's afterwards).

    A bad reference, a corrupt checkpoint or a bad spec is one
    :class:`~dmlcli.errors.DmlError` line.
    """
    store = store or Store()
    if is_spec(ref):
        return _open_spec(Path(ref), store, device)
    name, path = store.resolve(ref)
    if is_spec(path):
        return _open_spec(path, store, device)
    return load_checkpoint(name, path, device)


def _open_spec(path: Path, store: Store, device: str) -> Run:
    spec = read_spec(path)
    validate_name(spec.name)
    if store.has_run(spec.name):  # checked before the user's code runs
        raise DmlError(
            f"model spec name {spec.name!r} is a run trained by dml in {store.root}; rename one"
        )
    run = load_spec_run(spec, device)
    record = {"spec": str(spec.path), "dataset": run.dataset, "members": run.num_members,
              "checkpoint": run.checkpoint, "builder": spec.builder}  # fmt: skip
    old = store.spec_record(spec.name) or {}
    if {k: old.get(k) for k in record} != record:
        store.record_spec(spec.name, record)
    return run


def load_run(
    name_or_path: str | Path, artifacts: str | Path | None = None, device: str = "cpu"
) -> torch.nn.Module:
    """Rebuild a trained ensemble from a run name, run folder or ``.safetensors`` path.

    Returns the module: pixels ``[B, C, H, W]`` in [0, 1] -> member logits ``[K, B, C]``.
    """
    return open_run(name_or_path, Store(artifacts), device).model
