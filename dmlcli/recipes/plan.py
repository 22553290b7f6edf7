"""A recipe's plan: the ordered :class:`Step` calls it expands into, and which are done.

Each step is one API call (``api.<stage>(*args, **kwargs)``); it also renders as the
equivalent ``dml`` command line, shown by ``dml run --dry-run`` and in logs. A finished step
leaves a marker ``ARTIFACTS/recipes/<recipe>/<step>.json``; a step whose marker has the same
digest, and whose results are all still there, is done and skipped.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmlcli.files import atomic_write_bytes, now
from dmlcli.recipes import calls
from dmlcli.recipes.calls import EVAL_STAGES
from dmlcli.recipes.schema import STEP_META, Recipe, norm_key
from dmlcli.report import FORMATS as REPORT_FILES
from dmlcli.store import Store

#: Arguments that say where files are or what runs a step, not what it computes.
PLACE = ("artifacts", "data_dir", "device")
_RUN_REFS = ("prior", "surrogate", "baseline")  # arguments whose value may be a [train] key


@dataclass
class Step:
    """One API call of a recipe: ``api.<stage>(*args, **kwargs)``, shown as ``argv``."""

    id: str
    stage: str
    args: list[str] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)  # the same call as a dml command line
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
        """Hash of what the step computes: its keyword arguments but where files are and
        which device runs it, hashed as their command line (so markers written when steps
        ran as ``dml`` commands keep matching)."""
        flags = {"--" + p.replace("_", "-") for p in PLACE}
        argv, skip = [], False
        for a in self.argv:
            if skip:
                skip = False
                continue
            if a in flags:
                skip = True
                continue
            argv.append(a)
        return hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:16]


def _call(step: Step, sig: calls.Signature, args: list[str], kwargs: dict[str, Any]) -> None:
    """Fill in a step's call (recipe keys as argument names) and its command line."""
    step.args = args
    step.kwargs = {norm_key(k): v for k, v in kwargs.items()}
    step.argv = calls.render_argv(sig, args, step.kwargs)


def plan(
    recipe: Recipe,
    artifacts: Path,
    data_dir: str | Path | None = None,
    device: str | None = None,
) -> list[Step]:
    """The recipe's steps in order, each with its call and status (see :func:`step_status`)."""
    sigs = calls.available()
    store = Store(artifacts)
    data_dir = data_dir if data_dir is not None else recipe.data_dir
    device = device or recipe.device
    steps: list[Step] = []

    def common(sig: calls.Signature, opts: dict[str, Any]) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        given = {norm_key(k) for k in opts}
        if "seed" in sig.params and "seed" not in given:
            extra["seed"] = recipe.seed
        # Evaluation samples: n_samples where n means something else (certify).
        samples = "n_samples" if "n_samples" in sig.params else "n"
        if samples in sig.params and samples not in given and recipe.n is not None:
            extra[samples] = recipe.n
        if "data_dir" in sig.params and "data_dir" not in given and data_dir:
            extra["data_dir"] = str(data_dir)
        if "device" in sig.params and "device" not in given and device:
            extra["device"] = device
        return {**opts, **extra, "artifacts": str(artifacts)}

    train_sig = sigs.get("train")
    for key, opts in recipe.train.items():
        run = recipe.run_name(key)
        opts = dict(opts, name=run)
        if train_sig is not None and "resume" in train_sig.params:
            opts.setdefault("resume", True)  # an interrupted training continues where it was
        if opts.get("prior") in recipe.train:
            opts["prior"] = recipe.run_name(opts["prior"])
        step = Step(f"train-{key}", "train", outputs=[store.run_dir(run)])
        if train_sig is None:  # pragma: no cover - train is part of the core
            step.available, step.note = False, "dml train is not part of this build"
        else:
            _call(step, train_sig, [recipe.dataset], common(train_sig, opts))
            step.outputs = [store.checkpoint_path(r) for r in recipe.seed_runs(key)]
        steps.append(step)
    for stage in EVAL_STAGES:
        sig = sigs.get(stage)
        for entry in recipe.stages.get(stage, []):
            opts = {k: v for k, v in entry.items() if k not in STEP_META}
            for key in _RUN_REFS:  # a train key names its run
                if isinstance(opts.get(key), str) and opts[key] in recipe.train:
                    opts[key] = recipe.run_name(opts[key])
            for model, run in [(m, r) for m in entry["models"] for r in recipe.seed_runs(m)]:
                tail = (
                    model if run == recipe.run_name(model) else f"{model}-{run.rsplit('-', 1)[1]}"
                )
                step = Step(f"{stage}-{entry['label']}-{tail}", stage, model=model)
                if sig is None:
                    step.available = False
                    step.note = f"dml {stage} is not part of this build; skipped"
                    step.argv = [stage, run]
                else:
                    given = {norm_key(k) for k in opts}
                    pos = [p for p in sig.positionals if p.name not in given]
                    _call(step, sig, [run] if pos else [], common(sig, opts))
                steps.append(step)
    steps.append(_report_step(recipe, store, sigs.get("report"), artifacts))
    for step in steps:
        step.status = step_status(step, recipe, artifacts)
    _block_dependents(steps)
    return steps


def _report_step(
    recipe: Recipe, store: Store, sig: calls.Signature | None, artifacts: Path
) -> Step:
    """The closing ``report`` step, writing the recipe's ``[report] formats``."""
    formats = list(recipe.report.get("formats", ["markdown"]))
    step = Step("report", "report", outputs=[store.report_dir()])
    if sig is None:  # pragma: no cover - report is part of the core
        step.available, step.note = False, "dml report is not part of this build"
    else:
        _call(step, sig, [], {"format": formats, "artifacts": str(artifacts)})
        step.outputs = [store.report_dir() / REPORT_FILES[f] for f in formats]
    return step


def marker_path(artifacts: Path, recipe: Recipe, step: Step) -> Path:
    """Where the marker of a finished ``step`` is kept."""
    return Store(artifacts).marker_file(recipe.name, step.id)


def read_marker(path: Path) -> dict[str, Any] | None:
    """A step's marker, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def step_status(step: Step, recipe: Recipe, artifacts: Path) -> str:
    """``done`` (marker with the same digest, outputs present), ``changed`` (marker of
    other settings), ``run`` (never finished) or ``unavailable`` (function missing)."""
    if not step.available:
        return "unavailable"
    marker = read_marker(marker_path(artifacts, recipe, step))
    outputs_ok = all(p.exists() for p in step.outputs)
    if step.stage == "train" and outputs_ok:
        return "done"  # training is a no-op on an existing run, whatever its settings
    if marker is None or not outputs_ok:
        return "run"
    if marker.get("digest") != step.digest:
        return "changed"
    if not all((artifacts / p).is_file() for p in marker.get("outputs", [])):
        return "run"  # a result it wrote was deleted since
    return "done"


def _block_dependents(steps: list[Step]) -> None:
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
