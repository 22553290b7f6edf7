"""Each option of a command is declared once, as a field of the command's settings dataclass.

A field says its type, default and help (:func:`option`, :func:`flag`, :func:`argument`). From
that one declaration come

- the API function's keyword parameters and defaults (:func:`entry_point` gives
  ``api.attack`` the signature ``(runs, *, suite=None, ..., progress=None)``),
- the checks of a value (the class's ``__post_init__``: a bad value raises
  :class:`~dmlcli.errors.DmlError` when the settings are made, before anything runs),
- the ``dml`` options (:mod:`dmlcli.cli.common` builds each Typer option from a field), and
- the recipe schema (:mod:`dmlcli.recipes.calls` reads the API function's signature).

The shape follows timm's ``PretrainedCfg`` and ``transformers.HfArgumentParser`` dataclasses:
the type, default and help of a setting sit together, and every consumer reads them from there.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from dmlcli.errors import DmlError
from dmlcli.runtime import parse_shard

S = TypeVar("S", bound="Settings")

# Declared once for every command that has them.
SEED_HELP = "Seed for data order, init and attack randomness."
DEVICE_HELP = "cpu, cuda, cuda:1, ... (default: cuda if available)"
FORCE_HELP = "Recompute even if the result exists."
ARTIFACTS_HELP = "Artifacts directory (default ./artifacts)."
DATA_DIR_HELP = "Folder with the dataset's files (default: the one the run was trained on)."
SHARD_HELP = "Compute only shard i/n of the parts (default: torchrun's RANK)."
PART_SIZE_HELP = "Samples per part file (resume and --shard granularity)."
N_HELP = "Evaluation samples (a seeded subset)."
RUN_HELP = "Run name, run folder or .safetensors file."


def option(
    default: Any,
    help: str,  # noqa: A002 - the word the CLI uses
    *,
    flags: tuple[str, ...] = (),
    envvar: str | None = None,
) -> Any:
    """A setting with a default: ``--name VALUE`` on the command line (``flags`` spell it
    otherwise, e.g. ``("--members", "-k")``), a keyword of the API function; a ``default`` of
    ``dataclasses.MISSING`` makes it a required option (``dml compare --eps``)."""
    meta = {"help": help, "flags": flags, "envvar": envvar, "positional": False}
    if isinstance(default, list | dict):
        raise TypeError("a list default is written None (an empty list)")
    return dataclasses.field(default=default, metadata=meta)


def flag(help: str, *, default: bool = False) -> Any:  # noqa: A002
    """A boolean setting: ``--name`` alone (``--name/--no-name`` when on by default)."""
    return option(default, help)


def argument(
    help: str,  # noqa: A002
    default: Any = dataclasses.MISSING,
    *,
    metavar: str | None = None,
) -> Any:
    """The command's leading argument (a run, runs or a dataset); positional in the API and
    on the command line, required unless it has a ``default``; ``metavar`` names it in
    ``--help`` (default: the field's name)."""
    meta = {"help": help, "positional": True, "metavar": metavar}
    return dataclasses.field(default=default, metadata=meta)


def annotation(field: dataclasses.Field, owner: type) -> Any:
    """The resolved type of ``field`` of the settings class ``owner``."""
    return _type_hints(owner)[field.name]


@functools.cache
def _type_hints(owner: type) -> dict[str, Any]:
    # resolved once per class: every settings object made reads them for each field
    return typing.get_type_hints(owner)


def as_list(value: Any) -> list[Any]:
    """A list setting as a list: ``None`` is empty, one string (or path) is a list of one."""
    if value is None:
        return []
    return [value] if isinstance(value, str | Path | int | float) else list(value)


def union_members(tp: Any) -> tuple[Any, ...]:
    """The members of a union type (``int | None`` -> ``(int, NoneType)``), else ``(tp,)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def is_list_type(tp: Any) -> bool:
    """Whether ``tp`` is a list, tuple or sequence type (``list[str]``, ``Sequence[int]``)."""
    return typing.get_origin(tp) in (list, tuple, collections.abc.Sequence)


def _listed(value: Any, tp: Any) -> Any:
    """``value`` of a setting typed ``tp``: a list when ``tp`` is a list type (or a union
    whose only non-list member is None), else unchanged."""
    parts = union_members(tp)
    lists = [p for p in parts if is_list_type(p)]
    scalars = [p for p in parts if p not in lists and p is not type(None)]
    if value is None or not lists:
        return value
    if isinstance(value, list | tuple) or not scalars:
        return as_list(value)
    return value


@dataclasses.dataclass(kw_only=True)
class Settings:
    """Base of every command's settings: list settings are stored as lists (a single value
    given for one is a list of one), then :meth:`check` refuses bad values."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, _listed(getattr(self, f.name), annotation(f, type(self))))
        self.check()

    def check(self) -> None:
        """Refuse a value no run could accept (one :class:`DmlError` line); subclasses add
        their checks."""

    @classmethod
    def declared(cls) -> list[dataclasses.Field]:
        """The fields in the order of the API and CLI parameters: the positional ones, the
        command's own options, then those every command shares (:class:`Common`)."""

        def rank(f: dataclasses.Field) -> tuple[bool, int]:
            return (not f.metadata.get("positional"), f.metadata.get("late", 0))

        return sorted(dataclasses.fields(cls), key=rank)

    @classmethod
    def make(cls: type[S], *args: Any, settings: S | None = None, **options: Any) -> S:
        """Settings from an API call's arguments: positional ones in declared order, then
        keywords over ``settings`` (if given) or the defaults."""
        positional = [f.name for f in cls.declared() if f.metadata.get("positional")]
        if len(args) > len(positional):
            raise TypeError(f"{cls.__name__} takes {len(positional)} positional argument(s)")
        options.update(zip(positional, args, strict=False))
        unknown = set(options) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        if settings is not None:
            return dataclasses.replace(settings, **options)
        required = [f.name for f in cls.declared() if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in options]
        if missing:
            raise DmlError(f"missing argument: {', '.join(missing)}")
        return cls(**options)

    def positive(self, *names: str) -> None:
        """Refuse any of ``names`` below 1 (counts: steps, samples, batch sizes)."""
        for name in names:
            value = getattr(self, name)
            if value is not None and value < 1:
                flag_ = "--" + name.replace("_", "-")
                raise DmlError(f"{flag_} must be at least 1; got {value}")


def entry_point(settings: type[Settings]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make ``fn(settings, progress=None)`` the public API function of a command: it takes
    the command's options as arguments (positional ones first, then keywords named like the
    CLI's options) or a ready ``settings=`` object with keywords overriding its fields, and
    its signature (what ``help()``, the CLI and recipes read) lists every field with its
    default."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        takes_progress = "progress" in inspect.signature(fn).parameters

        @functools.wraps(fn)
        def call(*args: Any, progress: Any = None, **options: Any) -> Any:
            made = settings.make(*args, settings=options.pop("settings", None), **options)
            return fn(made, progress=progress) if takes_progress else fn(made)

        params = []
        for f in settings.declared():
            kind = inspect.Parameter.KEYWORD_ONLY
            if f.metadata.get("positional"):
                kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
            default = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
            params.append(
                inspect.Parameter(f.name, kind, default=default, annotation=annotation(f, settings))
            )
        extra = [("settings", settings | None)]
        if takes_progress:
            extra.append(("progress", Any))
        for name, tp in extra:
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=tp))  # fmt: skip
        returns = inspect.signature(fn).return_annotation
        call.__signature__ = inspect.Signature(params, return_annotation=returns)  # type: ignore[attr-defined]
        call.__annotations__ = {p.name: p.annotation for p in params}
        del call.__wrapped__  # type: ignore[attr-defined]  # the signature above is the API
        call.settings = settings  # type: ignore[attr-defined]
        call.takes_progress = takes_progress  # type: ignore[attr-defined]
        return call

    return wrap


def _late(field: Any, rank: int = 2) -> Any:
    field.metadata = {**field.metadata, "late": rank}  # listed after the command's own options
    return field


@dataclasses.dataclass(kw_only=True)
class InStore(Settings):
    """The setting of every command (listed last): the artifacts directory it reads and
    writes (``--artifacts``, or ``$DML_ARTIFACTS``)."""

    artifacts: str | Path | None = _late(option(None, ARTIFACTS_HELP, envvar="DML_ARTIFACTS"), 3)


@dataclasses.dataclass(kw_only=True)
class Common(InStore):
    """The settings every computing command shares (listed last): seed, device, whether to
    recompute, and the artifacts directory."""

    seed: int = _late(option(0, SEED_HELP))
    device: str = _late(option("auto", DEVICE_HELP))
    force: bool = _late(flag(FORCE_HELP))


@dataclasses.dataclass(kw_only=True)
class Parts(Common):
    """The settings of an evaluation kept as part files (``dml clever``, ``dml certify``):
    where the data is, samples per part, and which shard of the parts to compute."""

    data_dir: str | Path | None = _late(option(None, DATA_DIR_HELP), 1)
    part_size: int = _late(option(10, PART_SIZE_HELP), 1)
    shard: str | None = _late(option(None, SHARD_HELP), 1)

    def check(self) -> None:
        self.positive("part_size")
        parse_shard(self.shard)
