"""Shared fixtures: tiny ensembles, a trained digits store, and an in-process CLI runner."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dmlcli.config import resolve_config
from dmlcli.models.ensemble import Ensemble


def tiny_ensemble(head: str = "dml", members: int = 3, seed: int = 0, **kw) -> Ensemble:
    """An untrained digits ensemble (small CNN, 8x8x1 inputs, 10 classes) in eval mode."""
    return Ensemble(resolve_config("digits", members=members, head=head, seed=seed, **kw)).eval()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run ``dml ARGS...`` in-process; returns exit code, stdout and stderr."""
    from dmlcli.cli.app import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


_TRAINED: dict[str, Path] = {}


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory) -> Path:
    """An artifacts dir with ``digits-baseline`` and ``digits-dml`` (K=5, 4 epochs), built once.

    Tests that write into a store must use ``store_copy`` instead.
    """
    from dmlcli.cli.app import main

    root = tmp_path_factory.mktemp("store")
    torch.manual_seed(0)
    for extra in (["--baseline"], ["--prior", "digits-baseline"]):
        try:
            main(
                [
                    "train",
                    "digits",
                    "--members",
                    "5",
                    "--epochs",
                    "4",
                    "--artifacts",
                    str(root),
                    *extra,
                ]
            )
        except SystemExit as exc:  # pragma: no cover - a failing train is a test failure
            assert exc.code == 0, exc
    return root


@pytest.fixture
def store_copy(trained_store, tmp_path) -> Path:
    """A private copy of :func:`trained_store` that a test may write into."""
    dest = tmp_path / "artifacts"
    shutil.copytree(trained_store, dest)
    return dest
