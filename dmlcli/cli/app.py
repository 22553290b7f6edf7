"""The ``dml`` Typer app and its entry point (user errors: one line, exit code 2)."""

from __future__ import annotations

import sys

import typer

try:  # typer >= 0.22 vendors click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_exceptions

from dmlcli.cli import attack, certify, clever, detect, geometry, ls, merge, train, transfer
from dmlcli.cli import report as report_cli
from dmlcli.cli import run as run_cli
from dmlcli.errors import DmlError

app = typer.Typer(
    name="dml",
    help="Train diverse DML ensembles, attack them honestly, and report the paper's tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# One line per subcommand module: (name, function).
COMMANDS = [
    ("train", train.command),
    ("ls", ls.command),
    ("detect", detect.command),
    ("attack", attack.command),
    ("transfer", transfer.command),
    ("clever", clever.command),
    ("certify", certify.command),
    ("geometry", geometry.geometry_command),
    ("report", report_cli.command),
    ("run", run_cli.command),
    ("merge", merge.command),
]
for _name, _fn in COMMANDS:
    app.command(_name)(_fn)


def fail(message: str) -> None:
    """Print one error line to stderr and exit with code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    """Run ``dml``; a user's mistake prints one line and exits 2, never a traceback."""
    command = typer.main.get_command(app)
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
