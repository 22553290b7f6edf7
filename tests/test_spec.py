"""Model specs: a user's own PyTorch ensemble evaluated like a trained run (issue: any ensemble).

The tests write the user's side themselves: a ``members.py`` builder, checkpoints in the
layouts ensemble-defense repositories ship (DVERGE: one ``.pth`` with ``model_0..``; TRS: one
``checkpoint.pth.tar.i`` per member under ``state_dict`` with DataParallel's ``module.``), and
ResNet-20 checkpoints with DVERGE's wrapper names.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from helpers import tree_listing
from torch import nn

from dmlcli import api
from dmlcli.data import load_dataset, to_float
from dmlcli.errors import DmlError, DmlWarning
from dmlcli.models.backbones import ResNet20
from dmlcli.models.spec import load_spec_run, read_state
from dmlcli.runs import open_run
from dmlcli.store import Store

MEMBERS_PY = '''
import torch
from torch import nn


class Member(nn.Module):
    """A small CNN for 8x8 digits; normalization inside, logits out."""

    def __init__(self, width=8, probs=False, pair=False):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(width * 64, 10)
        )
        self.probs, self.pair = probs, pair

    def forward(self, x):
        z = self.net((x - 0.5) / 0.5)
        if self.probs:
            return torch.softmax(z, -1)
        return (z, z.detach()) if self.pair else z


def build(members=3, width=8, probs=False, pair=False):
    return [Member(width, probs, pair) for _ in range(members)]


def wrong(members=3):
    return [nn.Linear(64, 10) for _ in range(members)]  # expects flat inputs
'''


def _members(k: int = 3, seed: int = 0, steps: int = 150) -> list[nn.Module]:
    """``k`` members of ``members.py`` trained briefly on digits (each its own seed)."""
    ns: dict = {}
    exec(MEMBERS_PY, ns)  # the same class the spec's builder file defines
    x_u8, y = load_dataset("digits", "train")
    x = to_float(x_u8)
    out = []
    for k_ in range(k):
        torch.manual_seed(seed + k_)
        m = ns["Member"]()
        opt = torch.optim.Adam(m.parameters(), 3e-3)
        g = torch.Generator().manual_seed(seed + k_)
        for _ in range(steps):
            idx = torch.randint(0, len(x), (64,), generator=g)
            loss = nn.functional.cross_entropy(m(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        out.append(m.eval())
    return out


def write_user_ensemble(root: Path, layout: str = "dverge", name: str = "user-ens") -> Path:
    """``root``: members.py, weights in ``layout`` and spec.toml; returns the spec."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "members.py").write_text(MEMBERS_PY)
    members = _members()
    if layout == "dverge":  # one file, {"model_i": state_dict}
        torch.save({f"model_{i}": m.state_dict() for i, m in enumerate(members)}, root / "ens.pth")
        weights = '"ens.pth"'
    else:  # TRS: checkpoint.pth.tar.i, {"epoch", "state_dict" (DataParallel)}
        for i, m in enumerate(members):
            sd = {f"module.{k}": v for k, v in m.state_dict().items()}
            torch.save({"epoch": 200, "arch": "cnn", "state_dict": sd}, root / f"ckpt.pth.tar.{i}")
        weights = "[" + ", ".join(f'"ckpt.pth.tar.{i}"' for i in range(3)) + "]"
    spec = root / "spec.toml"
    spec.write_text(
        textwrap.dedent(f"""\
        name = "{name}"
        dataset = "digits"
        builder = "members.py:build"
        weights = {weights}
        members = 3
        """)
    )
    return spec


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("user")


def test_dverge_and_trs_layouts_load_the_same_members(user_dir):
    a = load_spec_run(write_user_ensemble(user_dir / "dverge", "dverge"))
    b = load_spec_run(write_user_ensemble(user_dir / "trs", "trs"))
    x = to_float(load_dataset("digits", "test")[0][:50])
    ref = torch.stack([m(x) for m in _members()])
    with torch.no_grad():
        assert torch.allclose(a.model(x), ref, atol=1e-6)
        assert torch.allclose(b.model(x), ref, atol=1e-6)
        assert torch.allclose(a.model.member(2)(x), ref[1], atol=1e-6)
    assert a.num_members == 3 and a.num_classes == 10 and a.dataset == "digits"
    assert len(a.checkpoint) == 64 and a.checkpoint != b.checkpoint
    assert a.meta["warnings"] == []
    # the members learned something: the vote beats chance by far
    y = load_dataset("digits", "test")[1][:50]
    assert (ref.argmax(-1).mode(0).values == y).float().mean() > 0.7


def _dverge_resnet20(path: Path, k: int, mean: tuple, std: tuple) -> list[nn.Module]:
    """DVERGE's checkpoint of ``k`` ResNet-20s: ``{"model_i": ModelWrapper.state_dict()}``
    (``normalizer.mean/std`` + ``model.<resnet keys>``); returns reference forwards."""
    refs, body = [], {}
    for i in range(k):
        torch.manual_seed(10 + i)
        net = ResNet20(3, 10).eval()
        for mod in net.modules():  # non-trivial BatchNorm statistics
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
        sd = {f"model.{key}": v for key, v in net.state_dict().items()}
        sd["normalizer.mean"] = torch.tensor(mean)
        sd["normalizer.std"] = torch.tensor(std)
        body[f"model_{i}"] = sd
        m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        refs.append(lambda x, net=net, m=m, s=s: net((x - m) / s))
    torch.save(body, path)
    return refs


def test_resnet20_ensemble_loads_dverge_and_trs_checkpoints(tmp_path):
    dverge_norm = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    refs = _dverge_resnet20(tmp_path / "epoch_200.pth", 3, *dverge_norm)
    (tmp_path / "dverge.toml").write_text(
        'name = "dverge"\ndataset = "cifar10"\nbuilder = "dmlcli.models:resnet20_ensemble"\n'
        'weights = "epoch_200.pth"\nmembers = 3\n'
    )
    run = load_spec_run(tmp_path / "dverge.toml")
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = torch.stack([f(x) for f in refs])
        assert torch.allclose(run.model(x), ref, atol=1e-5)  # DVERGE's own normalization
    # TRS: Sequential(NormalizeLayer (no state), DataParallel(resnet)), one file per member
    state = read_state(tmp_path / "epoch_200.pth")
    for i in range(3):
        sd = {f"1.module.{k[len(f'model_{i}.model.'):]}": v for k, v in state.items()
              if k.startswith(f"model_{i}.model.")}  # fmt: skip
        torch.save({"epoch": 200, "state_dict": sd}, tmp_path / f"checkpoint.pth.tar.{i}")
    (tmp_path / "trs.toml").write_text(
        'name = "trs"\ndataset = "cifar10"\nbuilder = "dmlcli.models:resnet20_ensemble"\n'
        'weights = ["checkpoint.pth.tar.0", "checkpoint.pth.tar.1", "checkpoint.pth.tar.2"]\n'
        "[builder_args]\nmean = [0.4914, 0.4822, 0.4465]\nstd = [0.2023, 0.1994, 0.2010]\n"
    )
    trs = load_spec_run(tmp_path / "trs.toml")
    with torch.no_grad():
        assert torch.allclose(trs.model(x), ref, atol=1e-5)


def _spec(tmp: Path, body: str, files: dict[str, str | bytes] | None = None) -> Path:
    (tmp / "members.py").write_text(MEMBERS_PY)
    for name, content in (files or {}).items():
        p = tmp / name
        p.write_bytes(content) if isinstance(content, bytes) else p.write_text(content)
    path = tmp / "spec.toml"
    path.write_text(textwrap.dedent(body))
    return path


BASE = 'name = "u"\ndataset = "digits"\nbuilder = "members.py:build"\n'


class Evil:
    def __reduce__(self):  # unpickling this would run code
        return (print, ("pwned",))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('name = "u"\ndataset = "imagenet"\nbuilder = "members.py:build"\n', "unknown dataset"),
        (BASE + 'weights = "missing.pth"\n', "does not exist"),
        (BASE.replace("members.py", "nope.py"), "builder file"),
        (BASE.replace(":build", ":nothing"), "has no function 'nothing'"),
        (BASE + "colour = 1\n", "unknown key 'colour'"),
        (BASE + 'weights = "evil.pth"\n', "torch.load(weights_only=True)"),
        (BASE + 'weights = "short.pth"\n', "missing key"),
        (BASE + 'weights = "extra.pth"\n', "member 1: unexpected key 'extra'"),
        (BASE + "members = 4\n", "members = 4"),
        (BASE.replace(":build", ":wrong"), "fails on a [2, 1, 8, 8] input"),
        (BASE + "[builder_args]\npair = true\n", "returns a tuple"),
        (BASE + "output = 5\n[builder_args]\npair = true\n", "output 5 is not in its tuple"),
        ('name = "../x"\ndataset = "digits"\nbuilder = "members.py:build"\n', "bad run name"),
    ],
)
def test_bad_specs_are_one_line_and_write_nothing(tmp_path, cli, body, message):
    members = _members(3, steps=0)
    good = {f"model_{i}": m.state_dict() for i, m in enumerate(members)}
    short = {k: {n: t for n, t in v.items() if n != "net.3.bias"} for k, v in good.items()}
    extra = {**good, "model_0": {**good["model_0"], "extra": torch.zeros(1)}}
    for name, obj in (("short.pth", short), ("extra.pth", extra), ("evil.pth", Evil())):
        torch.save(obj, tmp_path / name)
    spec = _spec(tmp_path, body)
    store = tmp_path / "art"
    store.mkdir()
    before = tree_listing(store)
    res = cli("attack", spec, "--n", "5", "--attack", "fgsm", "--eps", "0.1", "--artifacts", store)
    lines = res.err.strip().splitlines()
    assert res.code == 2 and len(lines) == 1 and lines[0].startswith("error:"), res.err
    assert message in lines[0] and "Traceback" not in res.out + res.err
    assert "pwned" not in res.out
    assert tree_listing(store) == before


def test_softmax_members_warn_and_still_run(tmp_path, cli):
    spec = _spec(tmp_path, BASE + "[builder_args]\nprobs = true\n")
    with pytest.warns(DmlWarning, match="gradient masking"):
        run = load_spec_run(spec)
    assert len(run.meta["warnings"]) == 1 and "probabilities" in run.meta["warnings"][0]
    res = cli("attack", spec, "--attack", "fgsm", "--eps", "0.1", "--n", "5",
              "--artifacts", tmp_path / "art")  # fmt: skip
    assert res.code == 0, res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: u: the members return probabilities")


def test_a_spec_name_works_like_a_run_afterwards_and_cannot_shadow_one(tmp_path, trained_store):
    spec = write_user_ensemble(tmp_path / "u", "dverge")
    store = Store(tmp_path / "art")
    run = open_run(spec, store)
    again = open_run("user-ens", store)  # by name, through the recorded spec
    assert again.checkpoint == run.checkpoint and again.path == spec.resolve()
    assert store.list_spec_runs() == ["user-ens"]
    clash = write_user_ensemble(tmp_path / "c", "dverge", name="digits-dml")
    with pytest.raises(DmlError, match="is a run trained by dml"):
        open_run(clash, Store(trained_store))


@pytest.mark.slow
def test_every_command_runs_on_a_spec_and_a_changed_weight_makes_results_stale(tmp_path, cli):
    spec = write_user_ensemble(tmp_path / "u", "trs")
    art = tmp_path / "art"
    common = ["--n", "12", "--artifacts", art]
    steps = [
        ["attack", spec, "--suite", "paper", "--suite", "adaptive", "--eps", "0.1",
         "--pgd-restarts", "1", "--cw-steps", "5", "--apgd-steps", "3",
         "--surface", "sum", "--surface", "agree"],
        ["certify", spec, "--sigma", "0.25", "--n0", "10", "--n-samples", "6", "--predict-n",
         "10"],  # --n: 12 draws
        ["clever", spec, "--nb-batches", "5", "--batch-size", "8", "--pool-factor", "2"],
        ["detect", spec, "--attack", "fgsm", "--eps", "0.1"],
    ]  # fmt: skip
    for argv in steps:
        res = cli(*argv, *common)
        assert res.code == 0, (argv[0], res.err)
    store = Store(art)
    kinds = {p.name.split("-")[0] for p in store.list_results(run="user-ens")}
    assert {"attack", "worst", "certify", "clever", "detect"} <= kinds
    (worst,) = store.list_results("worst-case", "user-ens")
    wc, meta = store.read_result(worst)
    assert len(meta["components"]) >= 8 and set(wc["run"]) == {"user-ens"}
    report = cli("report", art, "--format", "markdown")
    assert report.code == 0, report.err
    md = (art / "report" / "report.md").read_text()
    assert "user-ens" in md and "worst case" in md
    listing = cli("ls", "--artifacts", art)
    assert listing.code == 0 and "user-ens" in listing.out
    # one changed weight: a new identity, every earlier result stale
    ckpt = tmp_path / "u" / "ckpt.pth.tar.1"
    body = torch.load(ckpt, weights_only=True)
    body["state_dict"]["module.net.3.bias"][0] += 1.0
    torch.save(body, ckpt)
    df = api.ls(artifacts=art).rows
    row = df[df["run"] == "user-ens"].iloc[0]
    assert row["results"] == 0 and row["stale"] == len(store.list_results(run="user-ens"))


def test_the_readme_spec_and_builder_load_as_written(tmp_path):
    """The README's "Evaluate your own ensemble" spec and members.py, copied as they stand."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("## Evaluate your own ensemble") :]
    toml_block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    py_block = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "spec.toml").write_text(toml_block)
    (tmp_path / "members.py").write_text(py_block)
    ns: dict = {}
    exec(py_block, ns)
    members = ns["build"](3, 32)
    torch.save({f"model_{i}": m.state_dict() for i, m in enumerate(members)},
               tmp_path / "ensemble.pth")  # fmt: skip
    run = load_spec_run(tmp_path / "spec.toml")
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(run.model(x), torch.stack([m.eval()(x) for m in members]))
    assert run.name == "my-ensemble" and run.dataset == "mnist" and run.num_members == 3


def test_the_spec_decision_is_what_dml_attack_scores_by_default(tmp_path):
    spec = _spec(tmp_path, BASE + 'decision = "sum"\n')
    rows = api.attack(str(spec), attack=["fgsm"], eps=["0.1"], n=5, artifacts=tmp_path / "art").rows
    assert set(rows[rows["attack"] == "fgsm"]["decision"]) == {"sum"}
