"""The subcommands: every module of :mod:`dmlcli.cli` with a ``command`` is the subcommand of
its name, so a new one is its module (and its API function); ``PIPELINE`` orders the help."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import dmlcli.cli
from dmlcli.cli.common import guarded

#: The order of ``dml --help``: the stages of a recipe, ``run``, then the store helpers; a
#: subcommand not named here comes last.
PIPELINE = (
    "train", "attack", "transfer", "clever", "certify", "geometry", "detect", "check",
    "report", "run", "compare", "export", "ls", "merge",
)  # fmt: skip


def commands() -> list[tuple[str, Callable[..., Any]]]:
    """(name, command) of every subcommand, in ``PIPELINE`` order; a command stopped by
    Ctrl-C prints what was kept (:func:`~dmlcli.cli.common.guarded`)."""
    found = {}
    for info in pkgutil.iter_modules(dmlcli.cli.__path__):
        module = importlib.import_module(f"dmlcli.cli.{info.name}")
        if callable(getattr(module, "command", None)):
            found[info.name.replace("_", "-")] = guarded(module.command)

    def rank(name: str) -> tuple[int, str]:
        return (PIPELINE.index(name) if name in PIPELINE else len(PIPELINE), name)

    return [(name, found[name]) for name in sorted(found, key=rank)]
