"""The package's shape: layers that only import downward, no import circles, no private
names across modules, thin CLI commands, and one home for each per-dataset fact."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dmlcli"

#: Each module's layer; a module may import its own layer (without circles) or lower ones.
LAYERS: list[set[str]] = [
    {"dmlcli.errors", "dmlcli.units", "dmlcli.version"},
    {"dmlcli.runtime", "dmlcli.files"},
    {"dmlcli.readers", "dmlcli.data", "dmlcli.results", "dmlcli.stats"},
    {"dmlcli.models"},
    {"dmlcli.attacks"},
    {"dmlcli.eval", "dmlcli.train", "dmlcli.defenses"},
    {"dmlcli.store", "dmlcli.runner", "dmlcli.runs", "dmlcli.adapters"},
    {"dmlcli.report"},
    {"dmlcli.api"},
    {"dmlcli.recipes"},
    {"dmlcli.cli", "dmlcli.__main__", "dmlcli"},
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> int:
    best = None
    for i, group in enumerate(LAYERS):
        for prefix in group:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def _imports(module: str) -> list[tuple[str, str, int]]:
    """(imported dmlcli module, imported name or '', line) for every import in ``module``,
    at the top and inside functions."""
    tree = ast.parse(MODULES[module].read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("dmlcli")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if not node.module.startswith("dmlcli"):
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in MODULES:  # `from dmlcli import results`: the submodule
                    out.append((sub, "", node.lineno))
                else:
                    out.append((node.module, alias.name, node.lineno))
    return out


def test_every_module_is_in_a_layer():
    for module in MODULES:
        _layer(module)


def test_no_module_imports_a_higher_layer_or_a_private_name():
    problems = []
    for module in MODULES:
        own = _layer(module)
        for target, name, line in _imports(module):
            if _layer(target) > own:
                problems.append(f"{module}:{line} imports {target} (a higher layer)")
            if name.startswith("_") and not name.startswith("__") and target != module:
                problems.append(f"{module}:{line} imports the private {target}.{name}")
    assert not problems, "\n".join(problems)


def test_the_layer_test_fails_on_an_upward_import():
    assert _layer("dmlcli.models.ensemble") < _layer("dmlcli.store") < _layer("dmlcli.cli.app")
    assert _layer("dmlcli.results") < _layer("dmlcli.eval.robustness") < _layer("dmlcli.report")


def test_no_import_circles():
    graph = {m: {t for t, _, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}
    # a package's __init__ importing its own submodules is not a circle
    for m in graph:
        graph[m] = {t for t in graph[m] if not t.startswith(m + ".")}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(t) :] + [t]))
            if t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_every_module_imports_on_its_own():
    """Each module imported first, in a fresh module table (circles hidden by import order
    show up here)."""
    code = (
        "import importlib, sys\n"
        f"names = {sorted(MODULES)!r}\n"
        "for name in [*names, *reversed(names)]:\n"
        "    for m in [m for m in sys.modules if m == 'dmlcli' or m.startswith('dmlcli.')]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]


#: The size limits the code keeps, and why.
LIMITS = {
    # the CLI parses, calls dmlcli.api and prints: anything bigger is computing or repeating
    "cli_lines": 1500,
    # a command's body (its ``show``, or ``dml run``'s command) fits on one screen
    "command_body_lines": 40,
    # a function longer than this does several things; name them
    "function_lines": 80,
    # more parameters than this is a settings object (dmlcli.api.settings) passed around loose
    "function_params": 15,
}


def _functions(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _lines(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1


def _params(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return len([n for n in names if n not in ("self", "cls")])


def test_the_cli_package_is_small():
    lines = sum(len(p.read_text().splitlines()) for p in (PACKAGE / "cli").glob("*.py"))
    assert lines <= LIMITS["cli_lines"], f"dmlcli/cli has {lines} lines"


def test_no_function_is_too_long_or_takes_too_many_parameters():
    """Every function of the package is at most 80 lines and 15 parameters; a public API
    function's signature is generated from its settings (dmlcli.api.settings), so the limit
    holds for its code too."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for fn in _functions(path):
            where = f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name}"
            if _lines(fn) > LIMITS["function_lines"]:
                problems.append(f"{where}: {_lines(fn)} lines")
            if _params(fn) > LIMITS["function_params"]:
                problems.append(f"{where}: {_params(fn)} parameters")
    assert not problems, "\n".join(problems)


def _command_modules() -> dict[str, object]:
    import importlib

    import typer.main

    from dmlcli.cli.app import app

    names = sorted(typer.main.get_command(app).commands)
    return {name: importlib.import_module(f"dmlcli.cli.{name}") for name in names}


def test_command_bodies_are_thin():
    """A command parses (its options come from the settings fields), calls dmlcli.api and
    prints: what it prints is its ``show``, at most 40 lines (``dml run``: its command)."""
    for name, module in _command_modules().items():
        fn = getattr(module, "show", None) or module.command
        node = ast.parse(inspect.getsource(fn).lstrip()).body[0]
        body = node.body[1:] if isinstance(node.body[0], ast.Expr) else node.body  # docstring
        lines = body[-1].end_lineno - body[0].lineno + 1
        assert lines <= LIMITS["command_body_lines"], f"dml {name}: {lines} lines"


def test_each_option_is_declared_once():
    """Every command's options are its API function's parameters with the same defaults,
    generated from the settings fields: no CLI module declares an option of its own."""
    from dmlcli import api

    for name, module in _command_modules().items():
        if name == "run":  # dml run runs recipes; its options are its own
            continue
        fn = getattr(api, name)
        api_params = inspect.signature(fn).parameters
        cli_params = inspect.signature(module.command).parameters
        assert set(api_params) - {"settings", "progress"} == set(cli_params), name
        for pname, p in cli_params.items():
            assert p.default == api_params[pname].default, (name, pname)
        assert "typer.Option(" not in inspect.getsource(module), name


def test_no_cli_module_writes_or_computes_results():
    forbidden = ("write_result", "write_parquet", "save_tensors", "run_job", "torch")
    for module, path in MODULES.items():
        if not module.startswith("dmlcli.cli"):
            continue
        text = path.read_text()
        for word in forbidden:
            assert f"{word}(" not in text and f"import {word}" not in text, (module, word)


def test_every_subcommand_but_run_is_an_api_function_named_in_all():
    """``dmlcli.api.__all__`` names each subcommand's function (``dml run`` runs recipes of
    the others and has none)."""
    import typer.main

    from dmlcli import api
    from dmlcli.cli.app import app

    commands = set(typer.main.get_command(app).commands) - {"run"}
    assert commands <= set(api.__all__)
    assert all(callable(getattr(api, name)) for name in api.__all__)


def test_help_names_what_goes_in_each_option_and_lists_every_attack():
    """Option metavars are names (``EPS``, ``N``), not typer's ``<list[str]>``/``<int>``; the
    description is reflowed (no line break mid-sentence); ``--attack`` lists the registry."""
    import re

    from typer.testing import CliRunner

    from dmlcli.attacks import list_attacks
    from dmlcli.cli.app import app

    out = CliRunner().invoke(app, ["attack", "--help"], env={"COLUMNS": "200"}).output
    assert "<list[str]>" not in out and "<int>" not in out and "<str>" not in out
    assert re.search(r"\*\s+RUNS\s+Runs, groups", out)  # the argument by name, not its type
    assert re.search(r"--eps\s+EPS\s", out) and re.search(r"--n\s+N\s", out)
    assert "kept as a part file as soon as it is done" in out
    flat = " ".join(out.split())
    assert all(name in flat for name in list_attacks())
