"""The Python API: one function per ``dml`` subcommand, taking the CLI's option names.

Each function writes exactly the results the command writes and returns them as a pandas
DataFrame (``train``: the per-epoch history; ``report``/``ls``/``merge``: what they list).
``df.attrs["results"]`` describes the stored results behind the rows (kind, label, path,
status ``new``/``cached``/``shard i/n``, and which rows belong to it). The CLI calls exactly
these functions::

    from dmlcli import api

    api.train("digits", members=5)
    rows = api.attack("digits-dml", suite=["paper"], eps=["0.2"], n=100)
    rows.groupby("attack")["robust"].mean()

Every argument a user can get wrong raises :class:`~dmlcli.errors.DmlError` (one clear line)
before anything is computed or written. ``progress`` takes a :class:`Reporter` (the CLI
passes a rich progress bar); the default is silent.

The functions live in one module per command or close family (``training``, ``robustness``:
attack and merge, ``transfers``, ``evaluate``: clever, certify and geometry, ``detection``,
``checks``, ``reporting``: report and export, ``listing``: ls, ``comparison``), their shared
helpers in ``_common``; this package re-exports them, so ``api.attack(...)`` is the function.
The statistics of ``compare`` are :mod:`dmlcli.stats`.
"""

from __future__ import annotations

from dmlcli.api._common import PathLike as PathLike
from dmlcli.api.checks import check
from dmlcli.api.comparison import compare
from dmlcli.api.detection import DETECT_ATTACKS as DETECT_ATTACKS
from dmlcli.api.detection import RANDOM_DRAWS as RANDOM_DRAWS
from dmlcli.api.detection import detect
from dmlcli.api.evaluate import certify, clever, geometry
from dmlcli.api.listing import ls
from dmlcli.api.reporting import export, report
from dmlcli.api.robustness import attack, merge
from dmlcli.api.robustness import expand_groups as expand_groups
from dmlcli.api.robustness import refresh_worst_cases as refresh_worst_cases
from dmlcli.api.training import train
from dmlcli.api.transfers import transfer

__all__ = [
    "attack",
    "certify",
    "check",
    "clever",
    "compare",
    "detect",
    "export",
    "geometry",
    "ls",
    "merge",
    "report",
    "train",
    "transfer",
]
# also reachable as before, not in __all__: PathLike, DETECT_ATTACKS, RANDOM_DRAWS (dml detect's
# help), expand_groups and refresh_worst_cases
