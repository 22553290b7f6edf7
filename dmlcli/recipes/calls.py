"""What a recipe step calls: the parameters of ``dmlcli.api.<stage>``, read from its signature.

A recipe key is a keyword argument of the API function its stage names, so the function's
signature is the one schema both for checking a recipe and for running its steps; nothing is
read from the CLI. :func:`render_argv` writes a call as the equivalent ``dml`` command line
(``--dry-run``, logs, and the step digest that decides what is done).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmlcli import api
from dmlcli.api.settings import is_list_type, union_members

#: Evaluation stages in execution order (after ``train``, before ``report``); each is the
#: name of an API function and of its ``dml`` subcommand.
EVAL_STAGES = ("attack", "transfer", "clever", "certify", "geometry", "detect", "check")
STAGES = ("train", *EVAL_STAGES, "report")

#: Parameters ``dml run`` sets itself; a recipe cannot name them.
RUNTIME = frozenset({"artifacts", "force", "progress", "settings"})


@dataclass(frozen=True)
class Param:
    """One parameter of an API function, as a recipe key sees it."""

    name: str
    types: tuple[type, ...]  # the scalar types a value may have (``Path`` is written as str)
    multiple: bool  # takes a list (each item repeats the option on the command line)
    positional: bool  # the function's leading argument (a run or dataset), not an option
    default: Any

    @property
    def is_flag(self) -> bool:
        return self.types == (bool,)

    @property
    def option(self) -> str:
        """The ``dml`` option spelling: ``cw_steps`` -> ``--cw-steps``."""
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Signature:
    """The parameters of ``dmlcli.api.<stage>`` (``stage`` is also the subcommand)."""

    stage: str
    params: dict[str, Param]

    @property
    def positionals(self) -> list[Param]:
        return [p for p in self.params.values() if p.positional]


def api_function(stage: str) -> Callable[..., Any] | None:
    """The library function a stage calls, or None when this build lacks it."""
    return getattr(api, stage, None) if stage in api.__all__ else None


def signature(stage: str) -> Signature | None:
    """The recipe-visible parameters of ``api.<stage>`` (None when it is not in this build)."""
    fn = api_function(stage)
    if fn is None:
        return None
    hints = typing.get_type_hints(fn)
    params = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name == "progress":
            continue
        scalars, multiple = accepted_types(hints.get(name, str))
        params[name] = Param(
            name=name,
            types=scalars,
            multiple=multiple,
            positional=p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
            and p.default is inspect.Parameter.empty,
            default=p.default,
        )
    return Signature(stage, params)


def accepted_types(annotation: Any) -> tuple[tuple[type, ...], bool]:
    """(scalar types, takes a list) of an annotation: ``Sequence[str | float] | None`` ->
    ``((str, float), True)``; ``str | Path | None`` -> ``((str,), False)``."""
    scalars: list[type] = []
    multiple = False
    for part in union_members(annotation):
        if part is type(None):
            continue
        if is_list_type(part):
            multiple = True
            args = typing.get_args(part)
            inner = [a for arg in args[:1] for a in union_members(arg)] or [str]
            scalars += [a for a in inner if isinstance(a, type)]
        elif isinstance(part, type):
            scalars.append(part)
    scalars = [str if t is Path else t for t in scalars]
    return tuple(dict.fromkeys(scalars)) or (str,), multiple


def render_argv(sig: Signature, positional: list[str], kwargs: dict[str, Any]) -> list[str]:
    """The ``dml`` argv of ``api.<stage>(*positional, **kwargs)``, options in ``kwargs``
    order: ``--name value`` (a list repeats it), a flag alone when true (``--no-name`` when
    false and on by default)."""
    argv = [sig.stage, *positional]
    for key, value in kwargs.items():
        p = sig.params[key]
        if p.positional:
            argv.append(str(value))
        elif p.is_flag:
            if value:
                argv.append(p.option)
            elif p.default is True:
                argv.append("--no-" + p.option[2:])
        else:
            for v in value if isinstance(value, list) else [value]:
                argv += [p.option, repr(v) if isinstance(v, float) else str(v)]
    return argv


def available() -> dict[str, Signature]:
    """Signatures of the recipe stages this build has (stage -> signature)."""
    sigs = {stage: signature(stage) for stage in STAGES}
    return {stage: sig for stage, sig in sigs.items() if sig is not None}
