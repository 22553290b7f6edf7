"""The Python API: one function per ``dml`` subcommand, taking the CLI's option names.

Each function writes exactly the results the command writes and returns a typed outcome
with named fields. An evaluation (and ``train``) returns an
:class:`~dmlcli.api.outcome.Outcome`: ``rows``, the per-sample pandas DataFrame (``train``:
the per-epoch history), ``results``, the stored results behind the rows (kind, label, path,
status ``new``/``cached``/``shard i/n``, and which rows are theirs), and the command's own
fields (``attack``: ``groups``; ``detect``: ``aucs``). ``report``, ``export``, ``ls``,
``merge`` and ``compare`` read the store and return their own classes: ``rows`` (what they
list) and fields such as ``files`` and ``problems``. Its options are the fields
of one settings dataclass (``api.attack.settings`` is :class:`~dmlcli.api.robustness.
AttackSettings`: type, default and help of each), from which its signature, the ``dml``
options and the recipe schema all come (:mod:`dmlcli.api.settings`). The CLI calls exactly
these functions::

    from dmlcli import api

    api.train("digits", members=5)
    out = api.attack("digits-dml", suite=["paper"], eps=["0.2"], n=100)
    out.rows.groupby("attack")["robust"].mean()

Every argument a user can get wrong raises :class:`~dmlcli.errors.DmlError` (one clear line)
before anything is computed or written. ``progress`` takes a :class:`Reporter` (the CLI
passes a rich progress bar); the default is silent.

The functions live in one module per command or close family (``training``, ``robustness``:
attack and merge, ``transfers``, ``evaluate``: clever, certify and geometry, ``detection``,
``checks``, ``reporting``: report and export, ``listing``: ls, ``comparison``), their shared
helpers in ``_common``. This package imports each module and re-exports every function made
by :func:`~dmlcli.api.settings.entry_point` in it, so ``api.attack(...)`` is the function and
a new subcommand's API is its module alone. The statistics of ``compare`` are
:mod:`dmlcli.stats`.
"""

from __future__ import annotations

import importlib
import pkgutil

from dmlcli.api._common import PathLike as PathLike
from dmlcli.api.detection import DETECT_ATTACKS as DETECT_ATTACKS
from dmlcli.api.detection import RANDOM_DRAWS as RANDOM_DRAWS
from dmlcli.api.robustness import expand_groups as expand_groups
from dmlcli.api.robustness import refresh_worst_cases as refresh_worst_cases


def _entry_points() -> dict[str, object]:
    """name -> function of every API entry point defined in a module of this package."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, obj in vars(module).items():
            if getattr(obj, "settings", None) and getattr(obj, "__module__", "") == module.__name__:
                found[name] = obj
    return found


_FOUND = _entry_points()
globals().update(_FOUND)
__all__ = sorted(_FOUND)
# also reachable, not in __all__: PathLike, DETECT_ATTACKS, RANDOM_DRAWS (dml detect's help),
# expand_groups and refresh_worst_cases
