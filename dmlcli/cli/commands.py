"""The subcommands in pipeline order (``dml run`` itself is added by
:mod:`dmlcli.cli.app`, after ``report``)."""

from __future__ import annotations

from dmlcli.cli import (
    attack,
    certify,
    check,
    clever,
    compare,
    detect,
    export,
    geometry,
    ls,
    merge,
    report,
    train,
    transfer,
)
from dmlcli.cli.common import guarded

COMMANDS = [
    ("train", guarded(train.command)),
    ("attack", guarded(attack.command)),
    ("transfer", guarded(transfer.command)),
    ("clever", guarded(clever.command)),
    ("certify", guarded(certify.command)),
    ("geometry", guarded(geometry.command)),
    ("detect", guarded(detect.command)),
    ("check", guarded(check.command)),
    ("report", guarded(report.command)),
    ("compare", guarded(compare.command)),
    ("export", guarded(export.command)),
    ("ls", ls.command),
    ("merge", merge.command),
]
