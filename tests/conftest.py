"""Fixtures: an in-process CLI runner and a trained digits store (built once per session).
Helpers that tests import live in ``tests/helpers.py``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import run_cli


@pytest.fixture
def cli(capsys):
    """Run ``dml ARGS...`` in-process; returns exit code, stdout and stderr."""
    return lambda *args: run_cli(capsys, *args)


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory) -> Path:
    """An artifacts dir with ``digits-baseline`` and ``digits-dml`` (K=5, 4 epochs), built once.

    Tests that write into a store must use ``store_copy`` instead.
    """
    from dmlcli import api

    root = tmp_path_factory.mktemp("store")
    torch.manual_seed(0)
    api.train("digits", members=5, epochs=4, baseline=True, artifacts=root)
    api.train("digits", members=5, epochs=4, prior="digits-baseline", artifacts=root)
    return root


@pytest.fixture
def store_copy(trained_store, tmp_path) -> Path:
    """A private copy of :func:`trained_store` that a test may write into."""
    dest = tmp_path / "artifacts"
    shutil.copytree(trained_store, dest)
    return dest
