"""The ``dml`` Typer app and its entry point (user errors: one line, exit code 2)."""

from __future__ import annotations

import sys
import warnings

import typer
import typer.core

from dmlcli.cli.commands import commands
from dmlcli.cli.common import click_exceptions
from dmlcli.errors import DmlError, DmlWarning


class _PlainHelp:
    """Show ``--help`` as a flag in the help screen (typer would print ``<bool>`` beside it)."""

    def get_help_option(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class _Group(_PlainHelp, typer.core.TyperGroup):
    pass


class _Command(_PlainHelp, typer.core.TyperCommand):
    """A subcommand whose help reads as written: metavars name what goes there (``RUNS``,
    ``EPS``, ``N``, ``DATA_DIR``, not typer's ``<list[str]>``), and the description's
    hard-wrapped docstring lines flow into paragraphs (see :func:`_reflow`)."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - click's signature
        super().__init__(*args, **kwargs)
        self.help = _reflow(self.help)
        for param in self.params:
            if param.param_type_name == "option" and param.metavar is None:
                if not getattr(param, "is_flag", False):
                    param.metavar = (param.name or "").upper()
            if param.param_type_name == "argument":  # RUNS, not runs... <list[str]>
                param.metavar = param.metavar or (param.name or "").upper()
                param.display_type_rich = lambda ctx: None  # the name says what goes there


def _reflow(text: str | None) -> str | None:
    """Docstring text with each paragraph on one line (lines starting ``-`` or ``*`` stay
    list items), so the help formatter wraps it to the terminal, not mid-sentence."""
    if not text:
        return text
    paragraphs = []
    for block in text.strip().split("\n\n"):
        lines: list[str] = []
        for line in block.splitlines():
            item = line.lstrip().startswith(("- ", "* "))
            if lines and not item:
                lines[-1] += " " + line.strip()
            else:
                lines.append(line.strip())
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


app = typer.Typer(
    name="dml",
    cls=_Group,
    help="Train diverse DML ensembles, attack them honestly, and report the paper's tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _name, _command in commands():
    app.command(_name, cls=_Command)(_command)


def fail(message: str) -> None:
    """Print one error line to stderr and exit with code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    if issubclass(category, DmlWarning):
        print(f"warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> None:
    """Run ``dml``; a user's mistake prints one line and exits 2, never a traceback; a
    :class:`DmlWarning` prints one ``warning:`` line and the command goes on."""
    command = typer.main.get_command(app)
    warnings.showwarning = _show_warning
    warnings.simplefilter("always", DmlWarning)  # each command run says it again
    try:
        rc = command.main(args=argv, prog_name="dml", standalone_mode=False)
        if rc == 130:  # typer turns a KeyboardInterrupt inside a command into 130
            raise KeyboardInterrupt
    except DmlError as exc:
        fail(str(exc))
    except click_exceptions.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else exc.format_message())
        raise SystemExit(0) from None
    except click_exceptions.UsageError as exc:
        fail(" ".join(exc.format_message().split()))
    except typer.Abort:
        fail("aborted")
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        print(
            "interrupted: completed work is kept; run the same command again to resume",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
