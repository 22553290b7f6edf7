"""Recipes: schema validation with one-line errors naming the key, the plan ``dml run`` builds,
and resuming an interrupted ``dml run`` without repeating finished steps."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmlcli import recipes as rc
from dmlcli.defenses import list_defenses
from dmlcli.errors import DmlError
from dmlcli.recipes import calls

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))

BASE = """
[recipe]
name = "tiny"
dataset = "digits"
seed = 0
n = 40

[train.baseline]
baseline = true
members = 3
epochs = 1

[train.dml]
prior = "baseline"
members = 3
epochs = 1

[[attack]]
label = "paper"
suite = ["paper"]
eps = ["0.2"]
cw_steps = 5

[[transfer]]
label = "targeted"
models = ["dml"]
targeted = true
eps = ["8/255"]

[[certify]]
models = ["dml"]
n = 100
n_samples = 10

[[geometry]]
models = ["dml"]
gradients = true

[report]
formats = ["markdown"]

[paper.whitebox]
table = "Table 2"
dml = { benign = 93.66, "fgsm@0.2" = 68.55 }
"""


#: The defenses recipes/defenses-*.toml compare (README, "Competing defenses and seeds"): the
#: plain ensemble, DML and the five ensemble defenses of the measured table. A recipe may add a
#: registered defense; one registered later joins a comparison only when its recipe says so.
COMPARED = ("baseline", "dml", "adp", "gal", "trs", "dverge", "mmc")


def comparison_problems(recipe: rc.Recipe) -> list[str]:
    """What keeps a ``defenses-*`` recipe from being the published comparison: a
    ``[train.<key>]`` whose key is not its defense, a defense not registered, one of
    :data:`COMPARED` missing."""
    trained = {key: opts.get("defense") for key, opts in recipe.train.items()}
    problems = [f"[train.{k}] trains defense {d!r}" for k, d in trained.items() if k != d]
    problems += [f"{k!r} is not registered" for k in trained if k not in list_defenses()]
    problems += [f"{d!r} is missing" for d in COMPARED if d not in trained]
    return problems


def write(tmp_path: Path, text: str, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_are_valid(path, tmp_path):
    recipe = rc.load_recipe(path)
    assert recipe.name == path.stem
    assert {"baseline", "dml"} <= set(recipe.train)
    assert recipe.to_json()["heads"]["baseline"] == "linear"
    assert recipe.train["dml"]["prior"] == "baseline"
    if path.stem.startswith("defenses-"):
        assert comparison_problems(recipe) == []
        assert all(opts["seeds"] == "0,1,2" for opts in recipe.train.values())
    else:
        assert recipe.paper, "every paper recipe carries the paper's numbers"
    steps = rc.plan(recipe, tmp_path / "art")
    ids = [s.id for s in steps]
    assert ids[:2] == ["train-baseline", "train-dml"] and ids[-1] == "report"
    stages = [s.stage for s in steps]
    assert stages == sorted(stages, key=rc.STAGES.index), "steps run in pipeline order"
    assert all(s.status == "run" for s in steps if s.available)


@pytest.mark.parametrize("edit", ["registered", "typo", "removed", "unregistered"])
def test_the_comparison_check_catches_a_typo_or_a_lost_defense(tmp_path, monkeypatch, edit):
    """A defense registered later leaves the comparison as it is; a typo in a key, a defense
    dropped from the recipe or from the registry is caught."""
    from dmlcli import defenses

    text = (ROOT / "recipes" / "defenses-fashion-mnist.toml").read_text()
    if edit == "registered":
        new = dataclasses.replace(defenses.DEFENSES["baseline"], name="newcomer")
        monkeypatch.setitem(defenses.DEFENSES, "newcomer", new)
        expect = []
    elif edit == "typo":
        text = text.replace("[train.dverge]", "[train.dvegre]")
        expect = ["[train.dvegre] trains defense 'dverge'", "'dvegre' is not registered",
                  "'dverge' is missing"]  # fmt: skip
    elif edit == "removed":
        start = text.index("[train.gal]")
        text = text[:start] + text[text.index("[train.trs]") :]
        expect = ["'gal' is missing"]
    else:  # dropped from the registry: loading the recipe refuses it already
        without = {k: v for k, v in defenses.DEFENSES.items() if k != "gal"}
        monkeypatch.setattr(defenses, "DEFENSES", without)  # delitem would reorder it
        with pytest.raises(DmlError, match=r"bad \[train.gal\]: unknown --defense 'gal'"):
            rc.load_recipe(write(tmp_path, text, "defenses-fashion-mnist.toml"))
        return
    recipe = rc.load_recipe(write(tmp_path, text, "defenses-fashion-mnist.toml"))
    assert comparison_problems(recipe) == expect


def test_recipe_round_trips_into_argv(tmp_path):
    art = tmp_path / "art"
    recipe = rc.load_recipe(write(tmp_path, BASE))
    steps = {s.id: s for s in rc.plan(recipe, art, data_dir=None)}
    assert steps["train-dml"].argv == [
        "train",
        "digits",
        "--prior",
        "digits-baseline",
        "--members",
        "3",
        "--epochs",
        "1",
        "--name",
        "digits-dml",
        "--resume",
        "--seed",
        "0",
        "--artifacts",
        str(art),
    ]
    assert "--baseline" in steps["train-baseline"].argv
    assert steps["attack-paper-baseline"].argv[:2] == ["attack", "digits-baseline"]
    assert steps["transfer-targeted-dml"].argv == [
        "transfer",
        "digits-dml",
        "--targeted",
        "--eps",
        "8/255",
        "--seed",
        "0",
        "--n",
        "40",
        "--artifacts",
        str(art),
    ]
    cert = steps["certify-1-dml"].argv  # --n is its noise draws: samples go to --n-samples
    assert cert[cert.index("--n") + 1] == "100" and cert[cert.index("--n-samples") + 1] == "10"
    assert "attack-paper-dml" in steps and "transfer-targeted-baseline" not in steps
    assert recipe.to_json()["roles"] == {"baseline": "digits-baseline", "dml": "digits-dml"}
    assert recipe.to_json()["paper"]["whitebox"]["dml"]["fgsm@0.2"] == 68.55


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (('eps = ["0.2"]', 'epss = ["0.2"]'), "unknown key 'attack.epss'"),
        (
            ("epochs = 1\n\n[train.dml]", "epoch = 1\n\n[train.dml]"),
            "unknown key 'train.baseline.epoch'",
        ),
        (("n = 40", "n = 40\nbogus = 1"), "unknown key 'recipe.bogus'"),
        (("[report]", "[reports]"), "unknown key 'reports'"),
        (('dataset = "digits"', 'dataset = "imagenet"'), "'recipe.dataset'"),
        (
            ("members = 3\nepochs = 1\n\n[[attack]]", 'members = 3\nepochs = "ten"\n\n[[attack]]'),
            "'train.dml.epochs'",
        ),
        (('eps = ["0.2"]', 'eps = ["abc"]'), "'attack.eps'"),
        (('eps = ["8/255"]', 'eps = ["2"]'), "'transfer.eps'"),
        (("n_samples = 10", "n_samples = 0"), "'certify.n_samples'"),
        (("cw_steps = 5", "cw_steps = 5.5"), "'attack.cw_steps'"),
        (("gradients = true", 'gradients = "yes"'), "'geometry.gradients'"),
        (('formats = ["markdown"]', 'formats = ["pdf"]'), "'report.formats'"),
        (("benign = 93.66", "benign = 193.66"), "'paper.whitebox.dml.benign'"),
        (("dml = { benign", "rdml = { benign"), "'paper.whitebox.rdml'"),
        (('"fgsm@0.2" = 68.55', '"fgsm@x" = 68.55'), "'paper.whitebox.dml.fgsm@x'"),
        (("[paper.whitebox]", "[paper.whitebx]"), "'paper.whitebx'"),
        (('models = ["dml"]\ntargeted', 'models = ["nope/../x"]\ntargeted'), "'transfer.models'"),
        (('prior = "baseline"', 'prior = "dml"'), "'train.dml.prior'"),
        (('name = "tiny"', 'name = "../tiny"'), "'recipe.name'"),
        (("[[geometry]]", "[[geometry]]\nforce = true"), "unknown key 'geometry.force'"),
    ],
)
def test_bad_recipes_are_refused_with_the_key(tmp_path, cli, edit, key):
    old, new = edit
    assert old in BASE
    path = write(tmp_path, BASE.replace(old, new, 1))
    res = cli("run", path, "--dry-run", "--artifacts", tmp_path / "art")
    assert res.code == 2, res.out
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}:"), res.err
    assert key in lines[0], lines[0]
    assert "Traceback" not in res.err + res.out
    assert not (tmp_path / "art").exists()


def test_not_toml_and_missing_file(tmp_path, cli):
    res = cli("run", write(tmp_path, "[recipe\nname="), "--dry-run")
    assert res.code == 2 and "not valid TOML" in res.err
    res = cli("run", tmp_path / "nope.toml")
    assert res.code == 2 and "does not exist" in res.err
    res = cli("run", write(tmp_path, BASE), "--only", "nonsense", "--dry-run")
    assert res.code == 2 and "--only 'nonsense' matches no step" in res.err


def test_dry_run_lists_unavailable_commands_and_writes_nothing(tmp_path, cli, monkeypatch):
    real = calls.signature
    monkeypatch.setattr(calls, "signature", lambda name: None if name == "certify" else real(name))
    path = write(tmp_path, BASE.replace("n_samples = 10", "n_samples = 10\nsome_future_flag = 3"))
    res = cli("run", path, "--dry-run", "--artifacts", tmp_path / "art")
    assert res.code == 0, res.err
    assert "certify-1-dml" in res.out and "unavailable" in res.out
    assert "not part of this build" in res.out
    assert "train-baseline" in res.out and "will run" in res.out
    assert not (tmp_path / "art").exists()
    recipe = rc.load_recipe(path)
    steps = {s.id: s for s in rc.plan(recipe, tmp_path / "art")}
    assert steps["certify-1-dml"].status == "unavailable"
    assert steps["geometry-1-dml"].status == "run"


def test_markers_decide_what_is_done(tmp_path):
    art = tmp_path / "art"
    recipe = rc.load_recipe(write(tmp_path, BASE))
    step = next(s for s in rc.plan(recipe, art) if s.id == "geometry-1-dml")
    before = rc.snapshot(art)
    result = art / "results" / "digits-dml" / "gradients-abc.parquet"
    result.parent.mkdir(parents=True)
    result.write_bytes(b"x")  # what the step wrote
    rc.write_marker(art, recipe, step, 1.0, before)
    again = next(s for s in rc.plan(recipe, art) if s.id == "geometry-1-dml")
    assert again.status == "done"
    marker = json.loads(rc.marker_path(art, recipe, again).read_text())
    assert marker["outputs"] == ["results/digits-dml/gradients-abc.parquet"]
    moved = next(s for s in rc.plan(recipe, art, data_dir="/elsewhere") if s.id == again.id)
    assert moved.status == "done" and "--data-dir" in moved.argv  # where data is: same step
    result.unlink()  # its result is gone: the step runs again
    assert next(s for s in rc.plan(recipe, art) if s.id == again.id).status == "run"
    result.write_bytes(b"x")
    changed = rc.load_recipe(
        write(tmp_path, BASE.replace("gradients = true", "gradients = true\nn = 7"))
    )
    step = next(s for s in rc.plan(changed, art) if s.id == "geometry-1-dml")
    assert step.status == "changed"
    marker = json.loads(rc.marker_path(art, recipe, again).read_text())
    assert marker["argv"][0] == "geometry" and marker["digest"] == again.digest


RESUME = """
[recipe]
name = "resume"
dataset = "digits"
n = 30

[train.baseline]
baseline = true
members = 2
epochs = 1

[train.dml]
prior = "baseline"
members = 2
epochs = 1

[[geometry]]
models = ["dml"]
gradients = true

[report]
formats = ["markdown"]
"""


@pytest.mark.slow
def test_killed_run_resumes_without_repeating_steps(tmp_path, cli):
    art = tmp_path / "art"
    path = write(tmp_path, RESUME, "resume.toml")
    markers = art / "recipes" / "resume"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dmlcli", "run", str(path), "--artifacts", str(art)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (markers / "train-baseline.json").is_file():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the first step never finished"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    baseline = art / "models" / "digits-baseline" / "model.safetensors"
    first_mtime = baseline.stat().st_mtime_ns
    first_marker = (markers / "train-baseline.json").read_text()
    assert not (markers / "report.json").exists()

    res = cli("run", path, "--dry-run", "--artifacts", art)
    plan = {line.split()[1]: line for line in res.out.splitlines() if line.startswith("│ ")}
    assert "done" in plan["train-baseline"] and "will run" in plan["report"]

    res = cli("run", path, "--artifacts", art)
    assert res.code == 0, res.err
    assert baseline.stat().st_mtime_ns == first_mtime  # not retrained
    assert (markers / "train-baseline.json").read_text() == first_marker
    for step in ("train-dml", "geometry-1-dml", "report"):
        assert (markers / f"{step}.json").is_file(), step
    assert (art / "models" / "digits-dml" / "model.safetensors").is_file()
    assert (art / "report" / "report.md").is_file()
    assert (art / "recipes" / "resume" / "recipe.json").is_file()

    dml_mtime = (art / "models" / "digits-dml" / "model.safetensors").stat().st_mtime_ns
    res = cli("run", path, "--artifacts", art)  # everything is done now: nothing runs
    assert res.code == 0, res.err
    assert "ran" not in {
        line.split("│")[2].strip() for line in res.out.splitlines() if line.count("│") >= 4
    }
    assert (art / "models" / "digits-dml" / "model.safetensors").stat().st_mtime_ns == dml_mtime


def test_a_step_is_a_call_of_its_api_function(tmp_path, monkeypatch):
    """A step calls ``dmlcli.api.<stage>`` with the recipe's keys as keyword arguments (no
    command line in between) and records its marker; the next plan sees it done."""
    import functools

    from dmlcli import api

    seen = []
    fake = functools.wraps(api.geometry)(lambda *args, **kwargs: seen.append((args, kwargs)))
    monkeypatch.setattr(api, "geometry", fake)  # same signature, records its calls
    art = tmp_path / "art"
    path = write(tmp_path, BASE)
    outcomes = rc.run(path, only=["geometry"], artifacts=art)
    assert [(o.step.id, o.state) for o in outcomes] == [("geometry-1-dml", "ran")]
    assert seen == [
        (
            ("digits-dml",),
            {"gradients": True, "seed": 0, "n": 40, "artifacts": str(art), "progress": None},
        )
    ]
    marker = json.loads(outcomes[0].marker.read_text())
    assert marker["digest"] == outcomes[0].step.digest
    assert marker["argv"][:3] == ["geometry", "digits-dml", "--gradients"]
    recipe = rc.load_recipe(path)
    assert next(s for s in rc.plan(recipe, art) if s.id == "geometry-1-dml").status == "done"


def test_keys_follow_the_api_signature(tmp_path):
    """The valid keys named by an unknown-key error are the API function's parameters."""
    import inspect

    from dmlcli import api

    with pytest.raises(DmlError) as err:
        rc.load_recipe(write(tmp_path, BASE.replace("gradients = true", "gradient = true")))
    named = set(err.value.args[0].split("takes: ")[1].split(", "))
    params = set(inspect.signature(api.geometry).parameters)
    params -= {"artifacts", "force", "progress", "settings"}
    assert named == params | {"models", "label"}


def test_load_recipe_rejects_a_table_value(tmp_path):
    with pytest.raises(DmlError, match="'attack.eps'"):
        rc.load_recipe(write(tmp_path, BASE.replace('eps = ["0.2"]', "eps = { a = 1 }")))


def test_a_failing_step_stops_the_run_with_one_line(tmp_path, cli):
    text = BASE.replace(
        'label = "targeted"\nmodels = ["dml"]', 'label = "targeted"\nmodels = ["ghost"]'
    )
    path = write(tmp_path, text)
    res = cli("run", path, "--only", "transfer", "--artifacts", tmp_path / "art")
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and "step transfer-targeted-ghost failed" in lines[0], res.err
    assert "no run named 'ghost'" in lines[0]
    assert not (tmp_path / "art" / "recipes" / "tiny" / "transfer-targeted-ghost.json").exists()
    assert (tmp_path / "art" / "recipes" / "tiny" / "recipe.json").is_file()
