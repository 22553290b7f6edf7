"""Recipes: one TOML file per dataset -> the ordered ``dml`` steps that reproduce the paper.

A recipe is data (read with :mod:`tomllib`, never executed). Its layout::

    [recipe]                  name, dataset, description, seed, n, device, data_dir, expect
    [train.<key>]             one ``dml train DATASET ...`` per key (e.g. baseline, dml, rdml);
                              ``name`` = run name, ``prior`` = another key or a run name
    [[attack]] [[transfer]] [[clever]] [[certify]] [[geometry]] [[detect]] [[check]]
                              one entry = ``dml <stage> RUN ...`` for each run in ``models``
                              (train keys or run names; default every trained model);
                              ``label`` names the entry; every other key is an option of
                              that subcommand (``steps = 10`` -> ``--steps 10``; a list
                              repeats the option; ``true``/``false`` toggle a flag)
    [report]                  formats = ["markdown", "html", "latex", "json"]
    [paper]                   the paper's published numbers, shown beside ours (see PAPER)

Options are checked against the subcommand's own parameters (its Typer signature), so a
misspelt or ill-typed key is refused before anything runs, with one line naming the key::

    recipes/x.toml: unknown key 'attack.epss' ([[attack]] #1); dml attack takes: ...

Stages run in :data:`STAGES` order; a stage whose subcommand is not part of this build is
listed in the plan as unavailable and skipped. :func:`plan` turns a recipe into
:class:`Step` objects; :func:`run_step` executes one in-process and writes its marker
``ARTIFACTS/recipes/<recipe>/<step>.json`` (atomically) when it succeeded.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import re
import shlex
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmlcli.cli.commands import COMMANDS
from dmlcli.cli.common import click_exceptions
from dmlcli.data import DATASETS
from dmlcli.defenses import resolve_defense
from dmlcli.errors import DmlError
from dmlcli.files import atomic_write_bytes, now
from dmlcli.report import FORMATS as REPORT_FILES
from dmlcli.report.paper import parse_column
from dmlcli.store import Store, validate_name
from dmlcli.train import parse_seeds
from dmlcli.units import parse_eps

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10: the tomli backport
    import tomli as tomllib  # type: ignore[no-redef]

#: Evaluation stages in execution order (after the ``train`` stage, before ``report``).
EVAL_STAGES = ("attack", "transfer", "clever", "certify", "geometry", "detect", "check")
STAGES = ("train", *EVAL_STAGES, "report")
REPORT_FORMATS = tuple(REPORT_FILES)

_RECIPE_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "name": (str, "the recipe's name (markers go to ARTIFACTS/recipes/<name>/)"),
    "dataset": (str, "digits, mnist, fashion-mnist, cifar10 or resisc45"),
    "description": (str, "one line for the plan and the report"),
    "seed": (int, "seed passed to every step (default 0)"),
    "n": (int, "default evaluation samples (--n) of every evaluation step"),
    "device": (str, "cpu, cuda or auto"),
    "data_dir": (str, "folder with the dataset's files (overridden by dml run --data-dir)"),
    "expect": (str, "what to expect (time, hardware), shown in the plan"),
}
_STEP_META = {"models", "label"}
_RUNTIME = {"artifacts", "force"}  # options dml run sets itself
_RUN_REFS = ("prior", "surrogate", "baseline")  # options whose value may be a [train] key
_PLACE_FLAGS = ("--artifacts", "--data-dir", "--device")  # not part of a step's identity

#: The paper's published numbers: ``[paper.<section>.<role>]``, ``<role>`` a key of
#: ``[train]``. ``roles`` sections map columns to accuracies; a column is ``benign`` or
#: ``attack[-steps][@eps]`` (``fgsm@0.2``, ``bim-10@0.2``, ``cw``, ``pgd-20@8/255``,
#: ``autoattack@0.3``). ``members`` sections map their rows to lists
#: ``[ensemble, model 1, ...]`` (cw_distortion: ``[ensemble k=0, ensemble k=0.1, model 1,
#: ...]``). Every section may also say ``table`` (its source), ``label`` (the header of the
#: paper columns, default "paper"), ``eps`` and ``note``.
PAPER: dict[str, dict[str, Any]] = {
    "whitebox": {"kind": "roles", "doc": "Tables 2, 3, 10: accuracy per model and attack"},
    "rdml": {"kind": "roles", "doc": "Tables 6, 9: DML vs R-DML, 5 restarts"},
    "autoattack": {"kind": "roles", "doc": "Tables 7, 8: AutoAttack accuracy"},
    "transfer": {
        "kind": "members",
        "doc": "Tables 4, 11: attacks crafted on Model 1",
        "rows": ("benign", "untargeted", "targeted"),
    },
    "cw_distortion": {
        "kind": "members",
        "doc": "Tables 5, 12: adaptive CW-L2 (ensemble k=0, ensemble k=0.1, models 1..K)",
        "rows": ("accuracy", "distortion"),
    },
}
_PAPER_META = ("table", "label", "eps", "note")


# -- recipe --------------------------------------------------------------------------------
@dataclass
class Recipe:
    """A validated recipe (see the module docstring)."""

    path: Path
    name: str
    dataset: str
    description: str = ""
    seed: int = 0
    n: int | None = None
    device: str | None = None
    data_dir: str | None = None
    expect: str = ""
    train: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    paper: dict[str, Any] = field(default_factory=dict)

    def run_name(self, key: str) -> str:
        """The run name of train key ``key`` (its ``name``, else ``<dataset>-<key>``); with
        ``seeds`` the name of its group of seed runs."""
        if key in self.train:
            return str(self.train[key].get("name") or f"{self.dataset}-{key}")
        return key

    def seed_runs(self, key: str) -> list[str]:
        """The runs an evaluation of ``key`` covers: its run, or one per seed of its group."""
        opts = self.train.get(key, {})
        if "seeds" not in opts:
            return [self.run_name(key)]
        seeds = parse_seeds(str(opts["seeds"]))
        return [Store.seed_run(self.run_name(key), s) for s in seeds]

    @property
    def roles(self) -> dict[str, str]:
        """Train key -> run name (how the report knows which run is the baseline)."""
        return {k: self.run_name(k) for k in self.train}

    def to_json(self) -> dict[str, Any]:
        """What ``dml run`` stores for ``dml report``: settings, roles and paper numbers."""
        return {
            "name": self.name,
            "dataset": self.dataset,
            "description": self.description,
            "source": str(self.path),
            "seed": self.seed,
            "n": self.n,
            "roles": self.roles,
            "heads": {k: _train_head(v) for k, v in self.train.items()},
            "train": self.train,
            "stages": self.stages,
            "report": self.report,
            "paper": self.paper,
        }


def _train_head(opts: dict[str, Any]) -> str:
    """The head a ``[train.<key>]`` entry trains (its defense's, or its ``head``)."""
    defense, baseline = opts.get("defense"), bool(opts.get("baseline", False))
    return resolve_defense(defense, baseline, str(opts.get("head", "dml")))[1]


class _Where:
    """Formats errors as ``<file>: <message>`` naming the offending key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, message: str) -> typing.NoReturn:
        raise DmlError(f"{self.path}: {message}")

    def unknown(self, key: str, allowed: typing.Iterable[str]) -> typing.NoReturn:
        self.fail(f"unknown key {key!r}; allowed: {', '.join(sorted(allowed))}")


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; every problem is a one-line :class:`DmlError`."""
    path = Path(path)
    if not path.is_file():
        hint = ""
        named = Path("recipes") / f"{path.name}.toml"
        if named.is_file():
            hint = f" (did you mean {named}?)"
        raise DmlError(f"recipe {path} does not exist{hint}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise DmlError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise DmlError(f"{path}: not a UTF-8 text file") from None
    return validate_recipe(raw, path)


def validate_recipe(raw: dict[str, Any], path: Path) -> Recipe:
    """Check a parsed TOML document against the recipe schema (see the module docstring)."""
    w = _Where(path)
    top = {"recipe", "train", *EVAL_STAGES, "report", "paper"}
    for key in raw:
        if key not in top:
            w.unknown(key, top)
    head = raw.get("recipe")
    if not isinstance(head, dict):
        w.fail("missing [recipe] table (with at least name and dataset)")
    for key, value in head.items():
        if key not in _RECIPE_KEYS:
            w.unknown(f"recipe.{key}", [f"recipe.{k}" for k in _RECIPE_KEYS])
        _check_type(w, f"recipe.{key}", value, _RECIPE_KEYS[key][0])
    for key in ("name", "dataset"):
        if key not in head:
            w.fail(f"missing key 'recipe.{key}' ({_RECIPE_KEYS[key][1]})")
    try:
        validate_name(head["name"])
    except DmlError as exc:
        w.fail(f"bad value for 'recipe.name': {exc}")
    if head["dataset"] not in DATASETS:
        w.fail(
            f"bad value for 'recipe.dataset': {head['dataset']!r}; "
            f"choose one of {', '.join(DATASETS)}"
        )
    for key in ("n", "seed"):
        if key in head and head[key] < (1 if key == "n" else 0):
            w.fail(f"bad value for 'recipe.{key}': {head[key]} (must be >= {int(key == 'n')})")
    recipe = Recipe(
        path=path,
        name=head["name"],
        dataset=head["dataset"],
        description=head.get("description", ""),
        seed=head.get("seed", 0),
        n=head.get("n"),
        device=head.get("device"),
        data_dir=head.get("data_dir"),
        expect=head.get("expect", ""),
    )
    commands = available_commands()

    train = raw.get("train", {})
    if not isinstance(train, dict) or not all(isinstance(v, dict) for v in train.values()):
        w.fail("[train] must hold one table per model, e.g. [train.baseline]")
    for key, opts in train.items():
        try:
            validate_name(key)
        except DmlError:
            w.fail(f"bad train key {key!r}: use letters, digits, '.', '_' and '-'")
        _check_options(w, "train", f"train.{key}", opts, commands.get("train"), skip={"dataset"})
        if "name" in opts:
            try:
                validate_name(opts["name"])
            except DmlError as exc:
                w.fail(f"bad value for 'train.{key}.name': {exc}")
        if "seeds" in opts:
            try:
                parse_seeds(str(opts["seeds"]))
            except DmlError as exc:
                w.fail(f"bad value for 'train.{key}.seeds': {exc}")
        try:
            _train_head(opts)
        except DmlError as exc:
            w.fail(f"bad [train.{key}]: {exc}")
    recipe.train = {k: dict(v) for k, v in train.items()}
    names = [recipe.run_name(k) for k in train]
    if len(set(names)) != len(names):
        w.fail(f"two [train] entries share a run name: {', '.join(names)}")
    for key, opts in recipe.train.items():
        prior = opts.get("prior")
        if prior is not None and prior == key:
            w.fail(f"bad value for 'train.{key}.prior': a model cannot be its own prior")
        if prior in recipe.train and list(recipe.train).index(prior) > list(recipe.train).index(
            key
        ):
            w.fail(f"bad value for 'train.{key}.prior': {prior!r} must be listed before {key!r}")

    for stage in EVAL_STAGES:
        entries = raw.get(stage, [])
        if isinstance(entries, dict):
            entries = [entries]
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            w.fail(f"[[{stage}]] entries must be tables")
        labels = set()
        for i, opts in enumerate(entries):
            where = f" ([[{stage}]] #{i + 1})"
            models = opts.get("models", list(recipe.train))
            if isinstance(models, str):
                models = [models]
            _check_type(w, f"{stage}.models", models, list, where)
            for m in models:
                if not isinstance(m, str):
                    w.fail(f"bad value for '{stage}.models'{where}: {m!r} is not a name")
                if m not in recipe.train:
                    try:
                        validate_name(m)
                    except DmlError:
                        w.fail(f"bad value for '{stage}.models'{where}: {m!r}")
            label = opts.get("label", str(i + 1))
            _check_type(w, f"{stage}.label", label, str, where)
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", label):
                w.fail(f"bad value for '{stage}.label'{where}: {label!r} (letters, digits, -_.)")
            if label in labels:
                w.fail(f"bad value for '{stage}.label'{where}: {label!r} is used twice")
            labels.add(label)
            rest = {k: v for k, v in opts.items() if k not in _STEP_META}
            _check_options(w, stage, stage, rest, commands.get(stage), where=where)
            recipe.stages.setdefault(stage, []).append({**rest, "models": models, "label": label})

    report = raw.get("report", {})
    if not isinstance(report, dict):
        w.fail("[report] must be a table")
    for key, value in report.items():
        if key not in ("formats",):
            w.unknown(f"report.{key}", ["report.formats"])
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v not in REPORT_FORMATS:
                w.fail(
                    f"bad value for 'report.formats': {v!r}; choose from "
                    f"{', '.join(REPORT_FORMATS)}"
                )
        report[key] = values
    recipe.report = dict(report)
    recipe.paper = _check_paper(w, raw.get("paper", {}), recipe)
    return recipe


def _check_paper(w: _Where, paper: Any, recipe: Recipe) -> dict[str, Any]:
    if not isinstance(paper, dict):
        w.fail("[paper] must be a table")
    out: dict[str, Any] = {}
    for section, body in paper.items():
        if section in ("source", "note", "dataset"):
            _check_type(w, f"paper.{section}", body, str)
            if section == "dataset" and body not in DATASETS:
                w.fail(
                    f"bad value for 'paper.dataset': {body!r}; choose from {', '.join(DATASETS)}"
                )
            out[section] = body
            continue
        if section not in PAPER:
            w.unknown(
                f"paper.{section}", [f"paper.{k}" for k in (*PAPER, "source", "note", "dataset")]
            )
        if not isinstance(body, dict):
            w.fail(f"[paper.{section}] must be a table")
        spec = PAPER[section]
        for key, value in body.items():
            full = f"paper.{section}.{key}"
            if key in _PAPER_META:
                _check_type(w, full, value, str)
                if key == "eps":
                    _check_eps(w, full, value)
                continue
            if key not in recipe.train:
                w.fail(
                    f"unknown key {full!r}: neither {', '.join(_PAPER_META)} nor a [train] "
                    f"model (models: {', '.join(recipe.train) or 'none'})"
                )
            if not isinstance(value, dict):
                w.fail(f"bad value for {full!r}: expected a table")
            for col, v in value.items():
                where = f"{full}.{col}"
                if spec["kind"] == "roles":
                    try:
                        parse_column(col)
                    except DmlError as exc:
                        w.fail(f"bad key {where!r}: {exc}")
                    _check_pct(w, where, v)
                    continue
                if col not in spec["rows"]:
                    w.unknown(where, [f"{full}.{r}" for r in spec["rows"]])
                if not isinstance(v, list) or not v:
                    w.fail(f"bad value for {where!r}: a list [ensemble, model 1, ...]")
                for item in v:
                    if col == "distortion":
                        if isinstance(item, bool) or not isinstance(item, int | float) or item < 0:
                            w.fail(f"bad value for {where!r}: {item!r} is not a distortion >= 0")
                    else:
                        _check_pct(w, where, item)
        out[section] = body
    return out


def _check_pct(w: _Where, key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        w.fail(f"bad value for {key!r}: {value!r} is not a percentage in [0, 100]")


def _check_eps(w: _Where, key: str, value: Any, where: str = "") -> None:
    try:
        parse_eps(str(value))
    except DmlError as exc:
        w.fail(f"bad value for {key!r}{where}: {exc}")


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    Path: "a path (string)",
}


def _check_type(
    w: _Where, key: str, value: Any, typ: type | tuple[type, ...], where: str = ""
) -> None:
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if typ is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if typ is Path:
        ok = isinstance(value, str)
    if not ok:
        want = _TYPE_NAMES.get(typ, str(typ)) if isinstance(typ, type) else str(typ)
        w.fail(f"bad value for {key!r}{where}: expected {want}, got {value!r}")


# -- subcommand parameters -----------------------------------------------------------------
@dataclass
class Param:
    """One option or argument of a ``dml`` subcommand (from its Typer signature)."""

    name: str
    opts: list[str]
    secondary: list[str]
    is_flag: bool
    multiple: bool
    positional: bool
    base: type
    required: bool
    default: Any


@dataclass
class CommandSpec:
    name: str
    params: dict[str, Param]

    @property
    def positionals(self) -> list[Param]:
        return [p for p in self.params.values() if p.positional]


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(scalar type, is a list) of a Typer annotation such as ``Annotated[list[str] | None]``."""
    ann = annotation
    if typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        ann = args[0] if len(args) == 1 else str
    if typing.get_origin(ann) in (list, tuple, typing.Sequence):
        inner = typing.get_args(ann)
        return (inner[0] if inner and isinstance(inner[0], type) else str), True
    return (ann if isinstance(ann, type) else str), False


@functools.lru_cache(maxsize=1)
def _click_group() -> Any:
    """The subcommands a recipe can run, as one click group (for their options and to run a
    step in-process)."""
    import typer

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    for name, fn in COMMANDS:
        app.command(name)(fn)
    return typer.main.get_command(app)


def command_spec(name: str) -> CommandSpec | None:
    """The parameters of ``dml <name>``, or None when this build lacks the subcommand."""
    fns = dict(COMMANDS)
    if name not in fns:
        return None
    click_cmd = _click_group().commands[name]  # type: ignore[attr-defined]
    hints = typing.get_type_hints(fns[name], include_extras=True)
    sig = inspect.signature(fns[name])
    params: dict[str, Param] = {}
    for p in click_cmd.params:
        if p.name not in sig.parameters:
            continue
        base, is_list = _base_type(hints.get(p.name, str))
        positional = not p.opts or not p.opts[0].startswith("-")
        params[p.name] = Param(
            name=p.name,
            opts=list(p.opts),
            secondary=list(getattr(p, "secondary_opts", []) or []),
            is_flag=bool(getattr(p, "is_flag", False)) or base is bool,
            multiple=bool(p.multiple) or is_list,
            positional=positional,
            base=base,
            required=bool(p.required),
            default=p.default,
        )
    return CommandSpec(name, params)


def available_commands() -> dict[str, CommandSpec]:
    """Specs of every stage's subcommand present in this build (stage -> spec)."""
    out = {}
    for stage in ("train", *EVAL_STAGES, "report"):
        spec = command_spec(stage)
        if spec is not None:
            out[stage] = spec
    return out


def _norm_key(key: str) -> str:
    return key.replace("-", "_")


def _check_options(
    w: _Where,
    stage: str,
    prefix: str,
    opts: dict[str, Any],
    spec: CommandSpec | None,
    skip: set[str] = frozenset(),  # type: ignore[assignment]
    where: str = "",
) -> None:
    """Every key an option of ``dml <stage>`` with a value of its type (or, when the
    subcommand is missing from this build, at least a plain scalar or list of scalars)."""
    for key, value in opts.items():
        full = f"{prefix}.{key}"
        if isinstance(value, dict):
            w.fail(f"bad value for {full!r}{where}: expected a value, got a table")
        if spec is None:
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(v, str | int | float | bool) for v in values):
                w.fail(f"bad value for {full!r}{where}: expected a scalar or a list of them")
            continue
        name = _norm_key(key)
        param = spec.params.get(name)
        if param is None or name in skip or name in _RUNTIME:
            allowed = [k.replace("_", "-") if "-" in key else k for k in spec.params]
            allowed = [a for a in allowed if _norm_key(a) not in skip | _RUNTIME]
            meta = sorted(_STEP_META) if stage != "train" else []
            w.fail(
                f"unknown key {full!r}{where}; dml {spec.name} takes: "
                f"{', '.join(sorted([*allowed, *meta]))}"
            )
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not param.multiple:
            w.fail(f"bad value for {full!r}{where}: takes one value, got a list")
        for v in values:
            _check_type(w, full, v, param.base, where)
            if "eps" in name.split("_") and param.base is str:
                _check_eps(w, full, v, where)
            if param.base in (int, float) and not param.is_flag and name in _COUNTS and v < 1:
                w.fail(f"bad value for {full!r}{where}: {v} (must be at least 1)")
            if param.base in (int, float) and not math.isfinite(float(v)):
                w.fail(f"bad value for {full!r}{where}: {v} is not finite")


#: Options that count something and must be >= 1 wherever they appear.
_COUNTS = {
    "n",
    "members",
    "epochs",
    "steps",
    "restarts",
    "eot",
    "batch_size",
    "samples",
    "draws",
    "head_samples",
    "iterations",
    "nb_batches",
    "n0",
    "num_samples",
    "n_samples",
}


# -- plan ----------------------------------------------------------------------------------
@dataclass
class Step:
    """One ``dml`` invocation of a recipe."""

    id: str
    stage: str
    argv: list[str]
    available: bool = True
    note: str = ""
    outputs: list[Path] = field(default_factory=list)
    status: str = ""  # done | run | changed | unavailable | blocked
    model: str = ""  # the train key an evaluation step is about

    @property
    def shell(self) -> str:
        return "dml " + shlex.join(self.argv)

    @property
    def short(self) -> str:
        """The command line without the ``--artifacts`` every step gets."""
        argv = self.argv[:-2] if self.argv[-2:-1] == ["--artifacts"] else self.argv
        return "dml " + shlex.join(argv)

    @property
    def digest(self) -> str:
        """Hash of what the step computes: its argv without where files are and which
        device runs it (``--artifacts``, ``--data-dir``, ``--device``)."""
        argv, skip = [], False
        for a in self.argv:
            if skip:
                skip = False
                continue
            if a in _PLACE_FLAGS:
                skip = True
                continue
            argv.append(a)
        return hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:16]


def _argv(spec: CommandSpec, positional: list[str], opts: dict[str, Any]) -> list[str]:
    argv = [spec.name, *positional]
    for key, value in opts.items():
        p = spec.params[_norm_key(key)]
        if p.positional:
            argv.append(str(value))
            continue
        if p.is_flag:
            if value:
                argv.append(p.opts[0])
            elif p.secondary:
                argv.append(p.secondary[0])
            continue
        for v in value if isinstance(value, list) else [value]:
            argv += [p.opts[0], _fmt(v)]
    return argv


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    return str(v)


def plan(
    recipe: Recipe,
    artifacts: Path,
    data_dir: str | Path | None = None,
    device: str | None = None,
) -> list[Step]:
    """The recipe's steps in order, each with its argv and status (see :func:`step_status`)."""
    commands = available_commands()
    store = Store(artifacts)
    data_dir = data_dir if data_dir is not None else recipe.data_dir
    device = device or recipe.device
    steps: list[Step] = []

    def common(spec: CommandSpec, opts: dict[str, Any]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        given = {_norm_key(k) for k in opts}
        if "seed" in spec.params and "seed" not in given:
            extra["seed"] = recipe.seed
        # Evaluation samples: --n-samples where --n means something else (dml certify).
        samples = "n_samples" if "n_samples" in spec.params else "n"
        if samples in spec.params and samples not in given and recipe.n is not None:
            extra[samples] = recipe.n
        if "data_dir" in spec.params and "data_dir" not in given and data_dir:
            extra["data_dir"] = str(data_dir)
        if "device" in spec.params and "device" not in given and device:
            extra["device"] = device
        return {**opts, **extra}

    train_spec = commands.get("train")
    for key, opts in recipe.train.items():
        run = recipe.run_name(key)
        opts = dict(opts, name=run)
        if train_spec is not None and "resume" in train_spec.params:
            opts.setdefault("resume", True)  # an interrupted training continues where it was
        if opts.get("prior") in recipe.train:
            opts["prior"] = recipe.run_name(opts["prior"])
        step = Step(f"train-{key}", "train", [], outputs=[store.run_dir(run)])
        if train_spec is None:  # pragma: no cover - train is part of the core
            step.available, step.note = False, "dml train is not part of this build"
        else:
            step.argv = _argv(train_spec, [recipe.dataset], common(train_spec, opts))
            step.argv += ["--artifacts", str(artifacts)]
            step.outputs = [store.checkpoint_path(r) for r in recipe.seed_runs(key)]
        steps.append(step)
    for stage in EVAL_STAGES:
        spec = commands.get(stage)
        for entry in recipe.stages.get(stage, []):
            opts = {k: v for k, v in entry.items() if k not in _STEP_META}
            for key in _RUN_REFS:  # a train key names its run
                if isinstance(opts.get(key), str) and opts[key] in recipe.train:
                    opts[key] = recipe.run_name(opts[key])
            for model, run in [(m, r) for m in entry["models"] for r in recipe.seed_runs(m)]:
                tail = (
                    model if run == recipe.run_name(model) else f"{model}-{run.rsplit('-', 1)[1]}"
                )
                step = Step(f"{stage}-{entry['label']}-{tail}", stage, [], model=model)
                if spec is None:
                    step.available = False
                    step.note = f"dml {stage} is not part of this build; skipped"
                    step.argv = [stage, run]
                else:
                    pos = [p for p in spec.positionals if _norm_key(p.name) not in opts]
                    step.argv = _argv(spec, [run] if pos else [], common(spec, opts))
                    step.argv += ["--artifacts", str(artifacts)]
                steps.append(step)
    formats = recipe.report.get("formats", ["markdown"])
    report = Step("report", "report", [], outputs=[store.report_dir()])
    spec = commands.get("report")
    if spec is None:  # pragma: no cover - report is part of this module's build
        report.available, report.note = False, "dml report is not part of this build"
    else:
        report.argv = ["report"]
        for f in formats:
            report.argv += ["--format", f]
        report.argv += ["--artifacts", str(artifacts)]
        report.outputs = [store.report_dir() / REPORT_FILES[f] for f in formats]
    steps.append(report)
    for step in steps:
        step.status = step_status(step, recipe, artifacts)
    _block_dependents(steps, recipe)
    return steps


def marker_path(artifacts: Path, recipe: Recipe, step: Step) -> Path:
    return Store(artifacts).marker_file(recipe.name, step.id)


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def step_status(step: Step, recipe: Recipe, artifacts: Path) -> str:
    """``done`` (marker with the same argv, outputs present), ``changed`` (marker of another
    argv), ``run`` (never finished) or ``unavailable`` (subcommand missing)."""
    if not step.available:
        return "unavailable"
    marker = read_marker(marker_path(artifacts, recipe, step))
    outputs_ok = all(p.exists() for p in step.outputs)
    if step.stage == "train" and outputs_ok:
        return "done"  # dml train is a no-op on an existing run, whatever its settings
    if marker is None or not outputs_ok:
        return "run"
    if marker.get("digest") != step.digest:
        return "changed"
    if not all((artifacts / p).is_file() for p in marker.get("outputs", [])):
        return "run"  # a result it wrote was deleted since
    return "done"


def _block_dependents(steps: list[Step], recipe: Recipe) -> None:
    """Steps on a model whose training is unavailable cannot run."""
    missing = {s.id[len("train-") :] for s in steps if s.stage == "train" and not s.available}
    for s in steps:
        if s.stage in EVAL_STAGES and s.available and s.model in missing:
            s.status, s.note = "blocked", "its model cannot be trained in this build"


def snapshot(artifacts: Path) -> dict[str, int]:
    """Result files in the store and their modification times (to see what a step wrote)."""
    return Store(artifacts).result_files_snapshot()


def write_marker(
    artifacts: Path,
    recipe: Recipe,
    step: Step,
    seconds: float,
    before: dict[str, int] | None = None,
) -> Path:
    """Record a finished step (atomic JSON: argv, digest, seconds, finish time, and the result
    files it wrote, compared with the ``before`` :func:`snapshot`)."""
    path = marker_path(artifacts, recipe, step)
    after = snapshot(artifacts) if before is not None else {}
    body = {
        "step": step.id,
        "stage": step.stage,
        "argv": step.argv,
        "digest": step.digest,
        "seconds": round(seconds, 3),
        "finished": now(),
        "outputs": sorted(p for p, t in after.items() if before.get(p) != t),
    }
    atomic_write_bytes(path, json.dumps(body, indent=1).encode())
    return path


def save_recipe_json(artifacts: Path, recipe: Recipe) -> Path:
    """Store the recipe (settings, roles, paper numbers) for ``dml report`` to read."""
    path = Store(artifacts).recipe_file(recipe.name)
    atomic_write_bytes(path, json.dumps(recipe.to_json(), indent=1, default=str).encode())
    return path


def run_step(step: Step) -> None:
    """Run ``dml <argv>`` in-process; a failure raises :class:`DmlError` naming the step."""
    command = _click_group()
    try:
        rc = command.main(args=list(step.argv), prog_name="dml", standalone_mode=False)
        if rc == 130:  # Ctrl-C inside the step: stop the whole run, not only the step
            raise KeyboardInterrupt
    except DmlError as exc:
        raise DmlError(f"step {step.id} failed: {exc}") from None
    except SystemExit as exc:
        if exc.code == 130:
            raise
        if exc.code not in (0, None):
            raise DmlError(f"step {step.id} failed (exit {exc.code}): {step.shell}") from None
    except click_exceptions.UsageError as exc:
        msg = " ".join(exc.format_message().split())
        raise DmlError(f"step {step.id}: {msg} ({step.short})") from None
