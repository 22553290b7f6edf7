"""A recipe file: its TOML layout, read and checked into a :class:`Recipe`.

A recipe is data (read with :mod:`tomllib`, never executed). Its layout::

    [recipe]                  name, dataset, description, seed, n, device, data_dir, expect
    [train.<key>]             one ``api.train(dataset, ...)`` per key (e.g. baseline, dml, rdml);
                              ``name`` = run name, ``prior`` = another key or a run name
    [[attack]] [[transfer]] [[clever]] [[certify]] [[geometry]] [[detect]] [[check]]
                              one entry = ``api.<stage>(run, ...)`` for each run in ``models``
                              (train keys or run names; default every trained model);
                              ``label`` names the entry; every other key is a keyword
                              argument of that function (``steps = 10``; a list for a list
                              argument; ``true``/``false`` for a flag)
    [report]                  formats = ["markdown", "html", "latex", "json"]
    [paper]                   the paper's published numbers, shown beside ours (checked by
                              :func:`dmlcli.report.paper.check_paper`, the report's reader)

Keys are checked against the signature of the API function they go to
(:mod:`dmlcli.recipes.calls`), so a misspelt or ill-typed key is refused before anything
runs, with one line naming the key and the valid ones::

    recipes/x.toml: unknown key 'attack.epss' ([[attack]] #1); dml attack takes: ...
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmlcli.data import DATASETS
from dmlcli.defenses import resolve_defense
from dmlcli.errors import DmlError
from dmlcli.recipes import calls
from dmlcli.recipes.calls import EVAL_STAGES
from dmlcli.report import FORMATS as REPORT_FILES
from dmlcli.report.paper import check_paper
from dmlcli.store import Store, validate_name
from dmlcli.train import parse_seeds
from dmlcli.units import parse_eps

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10: the tomli backport
    import tomli as tomllib  # type: ignore[no-redef]

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
#: Keys of an evaluation entry that are not arguments of its function.
STEP_META = frozenset({"models", "label"})

#: Arguments that count something and must be >= 1 wherever they appear.
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
    recipe = _read_header(w, raw.get("recipe"), path)
    sigs = calls.available()
    recipe.train = _read_train(w, raw.get("train", {}), sigs.get("train"))
    _check_train_order(w, recipe)
    for stage in EVAL_STAGES:
        entries = _read_stage(w, stage, raw.get(stage, []), list(recipe.train), sigs.get(stage))
        for entry in entries:
            recipe.stages.setdefault(stage, []).append(entry)
    recipe.report = _read_report(w, raw.get("report", {}))
    try:
        recipe.paper = check_paper(raw.get("paper", {}), list(recipe.train))
    except DmlError as exc:
        w.fail(str(exc))
    return recipe


def _read_header(w: _Where, head: Any, path: Path) -> Recipe:
    """The ``[recipe]`` table checked (known keys of the right types; ``name`` and
    ``dataset`` present and valid; ``n`` >= 1, ``seed`` >= 0) into a :class:`Recipe` with
    nothing trained or evaluated yet."""
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
    return Recipe(
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


def _read_train(w: _Where, train: Any, sig: calls.Signature | None) -> dict[str, dict[str, Any]]:
    """The ``[train.<key>]`` tables, each checked (:func:`_check_train_entry`), copied."""
    if not isinstance(train, dict) or not all(isinstance(v, dict) for v in train.values()):
        w.fail("[train] must hold one table per model, e.g. [train.baseline]")
    for key, opts in train.items():
        _check_train_entry(w, key, opts, sig)
    return {k: dict(v) for k, v in train.items()}


def _check_train_entry(
    w: _Where, key: str, opts: dict[str, Any], sig: calls.Signature | None
) -> None:
    """One ``[train.<key>]`` table: a valid key, arguments of ``api.train`` (but
    ``dataset``), a valid run ``name`` and ``seeds``, and a defense/head that resolves."""
    try:
        validate_name(key)
    except DmlError:
        w.fail(f"bad train key {key!r}: use letters, digits, '.', '_' and '-'")
    _check_options(w, "train", f"train.{key}", opts, sig, skip={"dataset"})
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


def _check_train_order(w: _Where, recipe: Recipe) -> None:
    """The trained models have distinct run names, and a ``prior`` that is another train key
    is listed before the model built on it (never the model itself)."""
    names = [recipe.run_name(k) for k in recipe.train]
    if len(set(names)) != len(names):
        w.fail(f"two [train] entries share a run name: {', '.join(names)}")
    keys = list(recipe.train)
    for key, opts in recipe.train.items():
        prior = opts.get("prior")
        if prior is not None and prior == key:
            w.fail(f"bad value for 'train.{key}.prior': a model cannot be its own prior")
        if prior in recipe.train and keys.index(prior) > keys.index(key):
            w.fail(f"bad value for 'train.{key}.prior': {prior!r} must be listed before {key!r}")


def _read_stage(
    w: _Where, stage: str, entries: Any, trained: list[str], sig: calls.Signature | None
) -> list[dict[str, Any]]:
    """The ``[[stage]]`` entries (one table or a list of them), each checked: its ``models``
    (train keys in ``trained`` or run names; default all of ``trained``), a unique ``label``
    (default its position) and arguments of ``api.<stage>``. Returns them with ``models``
    and ``label`` filled in."""
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        w.fail(f"[[{stage}]] entries must be tables")
    labels: set[str] = set()
    out = []
    for i, opts in enumerate(entries):
        where = f" ([[{stage}]] #{i + 1})"
        models = _entry_models(w, stage, where, opts.get("models", list(trained)), trained)
        label = opts.get("label", str(i + 1))
        _check_label(w, stage, where, label, labels)
        labels.add(label)
        rest = {k: v for k, v in opts.items() if k not in STEP_META}
        _check_options(w, stage, stage, rest, sig, where=where)
        out.append({**rest, "models": models, "label": label})
    return out


def _entry_models(w: _Where, stage: str, where: str, models: Any, trained: list[str]) -> list[str]:
    """An entry's ``models`` as a list (one name may be given as a string): each a train key
    in ``trained`` or a valid run name."""
    if isinstance(models, str):
        models = [models]
    _check_type(w, f"{stage}.models", models, list, where)
    for m in models:
        if not isinstance(m, str):
            w.fail(f"bad value for '{stage}.models'{where}: {m!r} is not a name")
        if m not in trained:
            try:
                validate_name(m)
            except DmlError:
                w.fail(f"bad value for '{stage}.models'{where}: {m!r}")
    return models


def _check_label(w: _Where, stage: str, where: str, label: Any, labels: set[str]) -> None:
    """An entry's ``label``: a string of letters, digits, ``-_.`` not among ``labels`` (the
    labels of the stage's earlier entries)."""
    _check_type(w, f"{stage}.label", label, str, where)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", label):
        w.fail(f"bad value for '{stage}.label'{where}: {label!r} (letters, digits, -_.)")
    if label in labels:
        w.fail(f"bad value for '{stage}.label'{where}: {label!r} is used twice")


def _read_report(w: _Where, report: Any) -> dict[str, Any]:
    """The ``[report]`` table: ``formats`` only, each a known format (one format may be
    given as a string; it is stored back into ``report`` as a list)."""
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
    return dict(report)


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


def _is(value: Any, typ: type) -> bool:
    """Whether a TOML value is of ``typ`` (an int is a float; a bool is no number; a path is
    a string)."""
    if typ is bool:
        return isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typ is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if typ is Path:
        return isinstance(value, str)
    return isinstance(value, typ)


def _check_type(
    w: _Where, key: str, value: Any, typ: type | tuple[type, ...], where: str = ""
) -> None:
    allowed = typ if isinstance(typ, tuple) else (typ,)
    if not any(_is(value, t) for t in allowed):
        want = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in allowed)
        w.fail(f"bad value for {key!r}{where}: expected {want}, got {value!r}")


def _check_options(
    w: _Where,
    stage: str,
    prefix: str,
    opts: dict[str, Any],
    sig: calls.Signature | None,
    skip: set[str] = frozenset(),  # type: ignore[assignment]
    where: str = "",
) -> None:
    """Every key an argument of ``api.<stage>`` with a value of its type (or, when this build
    lacks the function, at least a plain scalar or list of scalars)."""
    for key, value in opts.items():
        full = f"{prefix}.{key}"
        if isinstance(value, dict):
            w.fail(f"bad value for {full!r}{where}: expected a value, got a table")
        if sig is None:
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(v, str | int | float | bool) for v in values):
                w.fail(f"bad value for {full!r}{where}: expected a scalar or a list of them")
            continue
        name = norm_key(key)
        param = sig.params.get(name)
        if param is None or name in skip or name in calls.RUNTIME:
            allowed = [k.replace("_", "-") if "-" in key else k for k in sig.params]
            allowed = [a for a in allowed if norm_key(a) not in skip | calls.RUNTIME]
            meta = sorted(STEP_META) if stage != "train" else []
            w.fail(
                f"unknown key {full!r}{where}; dml {sig.stage} takes: "
                f"{', '.join(sorted([*allowed, *meta]))}"
            )
        values = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not param.multiple:
            w.fail(f"bad value for {full!r}{where}: takes one value, got a list")
        for v in values:
            _check_type(w, full, v, param.types, where)
            if "eps" in name.split("_") and isinstance(v, str | int | float):
                _check_eps(w, full, v, where)
            number = isinstance(v, int | float) and not isinstance(v, bool)
            if number and name in _COUNTS and v < 1:
                w.fail(f"bad value for {full!r}{where}: {v} (must be at least 1)")
            if number and not math.isfinite(float(v)):
                w.fail(f"bad value for {full!r}{where}: {v} is not finite")


def norm_key(key: str) -> str:
    """A recipe key as an argument name (``cw-steps`` and ``cw_steps`` are the same key)."""
    return key.replace("-", "_")
