"""What every subcommand shares: its options built from the API's settings, the console,
progress bars, closing tables.

A command module is ``command = command_of(api.<name>, show, help=HELP)``: its options are the
fields of the API function's settings (:mod:`dmlcli.api.settings`, so each option is declared
once), it calls that function and ``show`` prints a short table of the typed outcome.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from dmlcli.api.outcome import Outcome
from dmlcli.api.settings import Settings, annotation, is_list_type, union_members
from dmlcli.runner import Interrupted, Reporter

try:  # typer >= 0.22 vendors click
    from typer._click import exceptions as click_exceptions  # noqa: F401 - used by app
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_exceptions  # noqa: F401

console = Console(highlight=False)


def cli_type(tp: Any) -> Any:
    """The Typer type of a setting typed ``tp``: a list stays a list (of ``str`` when its
    items may be strings), ``str | Path`` is a ``Path``, another union with ``str`` (also
    with a list of non-strings, the API's spelling of the same value) is a ``str``;
    ``| None`` when the setting may be None."""
    parts = union_members(tp)
    optional = type(None) in parts
    parts = tuple(p for p in parts if p is not type(None))
    lists = [p for p in parts if is_list_type(p)]
    if lists and str in parts and str not in typing.get_args(lists[0]):
        lists = []  # str | Sequence[int] (--seeds 0,1,2): one string on the command line
    if lists:
        inner = typing.get_args(lists[0])[:1] or (str,)
        out: Any = list[cli_type(inner[0])]
    elif Path in parts:
        out = Path
    elif len(parts) > 1 and str in parts:
        out = str
    else:
        out = parts[0]
    return out | None if optional else out


def cli_parameter(field: dataclasses.Field, owner: type[Settings]) -> inspect.Parameter:
    """The Typer parameter of one settings field: an argument or ``--name`` option with the
    field's help and default; a boolean is a flag (``--name``, or ``--name/--no-name`` when
    on by default)."""
    meta, tp = field.metadata, cli_type(annotation(field, owner))
    default = inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
    if meta.get("positional"):
        info: Any = typer.Argument(help=meta["help"], metavar=meta.get("metavar"))
    else:
        names = meta.get("flags") or ("--" + field.name.replace("_", "-"),)
        if tp is bool:
            names = (f"{names[0]}/--no-{names[0][2:]}", *names[1:]) if default else names
            info = typer.Option(*names, help=meta["help"], metavar="")
        else:
            info = typer.Option(*names, help=meta["help"], envvar=meta.get("envvar"))
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return inspect.Parameter(field.name, kind, default=default, annotation=Annotated[tp, info])


def command_of(
    api_fn: Callable[..., Any],
    show: Callable[[Any, Any], None],
    *,
    help: str,  # noqa: A002 - the command's help text
    progress: Callable[[], bool] = lambda: True,
) -> Callable[..., None]:
    """The ``dml`` command of an API function: one option per field of its settings
    (:mod:`dmlcli.api.settings`), a call of ``api_fn`` with them (progress bars drawn while
    ``progress()``), then ``show(outcome, settings)`` prints the closing table."""
    settings_cls: type[Settings] = api_fn.settings  # type: ignore[attr-defined]

    def command(**options: Any) -> None:
        settings = settings_cls.make(**options)
        if not api_fn.takes_progress:  # type: ignore[attr-defined]
            return show(api_fn(settings=settings), settings)
        with reporter(enabled=progress()) as bar:
            outcome = api_fn(settings=settings, progress=bar)
        show(outcome, settings)

    params = [cli_parameter(f, settings_cls) for f in settings_cls.declared()]
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = help
    command.__name__ = api_fn.__name__
    return command


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command so that Ctrl-C prints one line saying what was kept and how to resume,
    and exits with code 130 (typer would swallow the message)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Interrupted as exc:
            print(str(exc), file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper


class RichReporter(Reporter):
    """A :class:`~dmlcli.runner.Reporter` drawing rich progress bars on the console."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar

    def task(self, label: str, total: int) -> Callable[[int, str], None]:
        if not self.bar.live.is_started:  # drawn from the first task on (see reporter)
            self.bar.start()
        task = self.bar.add_task(label, total=total, info="")

        def update(done: int, info: str = "") -> None:
            self.bar.update(task, completed=done, info=info)

        return update

    def note(self, text: str) -> None:
        self.bar.console.print(f"[yellow]{text}[/yellow]")


@contextmanager
def reporter(enabled: bool = True) -> Iterator[RichReporter]:
    """Progress bars for the duration of a command (drawn only while ``enabled``), started
    by the first task: a command that fails before any work prints its error line alone."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not enabled,
    )
    try:
        yield RichReporter(bar)
    finally:
        if bar.live.is_started:
            bar.stop()


def summary(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    files: Iterable[Path | str] = (),
) -> None:
    """Print the short closing table of a command and where its files are. The first column
    (what a row is: a run, an attack) is never cut; the others wrap on narrow terminals."""
    table = Table(title=title, title_justify="left")
    for col in columns:
        first = col == columns[0]
        table.add_column(col, justify="left" if first else "right", no_wrap=first)
    for row in rows:
        table.add_row(*[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)
    for path in files:
        console.print(f"[dim]wrote[/dim] {path}")


def cached_note(out: Outcome, root: Path | str | None) -> None:
    """One line saying how many results were read from the store instead of computed."""
    cached = len(out.cached)
    if cached:
        where = root if root is not None else "the store"
        console.print(f"{cached} result(s) were already in {where} (--force recomputes)")


def shard_note(out: Outcome, root: Path | str | None) -> bool:
    """For a sharded run: say where the parts are and how to merge them; True if sharded."""
    shards = out.shards
    if not shards:
        return False
    where = root if root is not None else "./artifacts"
    console.print(
        f"{shards[0].status}: {len(shards)} result(s) kept as parts "
        f"(e.g. {shards[0].path}); run `dml merge --artifacts {where}` once every shard "
        "is done",
        soft_wrap=True,
    )
    return True
