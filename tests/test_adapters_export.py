"""Adapters out (torchattacks / ART on one surface) and exports (CSV, AutoAttack log, Cohen's
TSV, adversarial images) round-tripping the stored results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import tree_listing
from safetensors.torch import load_file

import dmlcli
from dmlcli import api
from dmlcli.data import eval_set, to_float
from dmlcli.errors import DmlError
from dmlcli.store import Store

N = 100


def test_torchattacks_on_the_adapter_matches_dml_attack_on_the_sum(store_copy):
    torchattacks = pytest.importorskip("torchattacks")
    df = api.attack("digits-dml", attack=["bim"], steps=10, eps=["0.1"], surface=["sum"],
                    decision=["sum"], n=N, artifacts=store_copy).rows  # fmt: skip
    rows = df[df["attack"] == "bim-10"]
    ours = 100 * rows["robust"].mean()
    alpha = float(rows["step_size"].iloc[0])
    model = dmlcli.as_classifier("digits-dml", surface="sum", artifacts=store_copy)
    x_u8, y, idx = eval_set("digits", N, 0)
    x, y = to_float(x_u8[idx]), y[idx]
    adv = torchattacks.BIM(model, eps=0.1, alpha=alpha, steps=10)(x, y)
    with torch.no_grad():
        clean_ok = model(x).argmax(-1) == y
        ref = 100 * (clean_ok & (model(adv).argmax(-1) == y)).float().mean().item()
    assert 5 < ref < 95, ref  # a budget where the comparison means something
    # the same attack on the same surface: equal up to dml keeping every fooling iterate
    assert abs(ours - ref) <= 2.0 and ours <= ref + 1e-9, (ours, ref)
    assert (adv - x).abs().max() <= 0.1 + 1e-6


def test_adapter_surfaces_decisions_and_art(store_copy):
    run = dmlcli.open_run("digits-dml", Store(store_copy))
    x = to_float(eval_set("digits", 8, 0)[0][:8])
    with torch.no_grad():
        logits = run.model(x)
        assert torch.allclose(dmlcli.as_classifier(run)(x), logits.sum(0))
        assert torch.allclose(dmlcli.as_classifier(run, "member:2")(x), logits[1])
        vote = dmlcli.as_classifier(run, decision="vote")(x)
    assert vote.sum(-1).eq(1).all()  # one-hot of the vote
    with pytest.raises(DmlError, match="no class scores"):
        dmlcli.as_classifier(run, "members")
    art = pytest.importorskip("art")
    clf = dmlcli.as_art_classifier(run)
    assert isinstance(clf, art.estimators.classification.PyTorchClassifier)
    assert clf.predict(x.numpy()).argmax(-1).tolist() == logits.sum(0).argmax(-1).tolist()


@pytest.mark.slow
def test_exports_round_trip(store_copy):
    api.attack("digits-dml", suite=["autoattack"], aa_attack=["apgd-ce"], aa_steps=3,
               eps=["0.1"], n=20, artifacts=store_copy)  # fmt: skip
    api.attack("digits-dml", attack=["pgd"], steps=3, eps=["0.1"], n=20, artifacts=store_copy)
    api.certify("digits-dml", sigma=0.25, n0=10, n=50, n_samples=6, predict_n=10,
                artifacts=store_copy)  # fmt: skip
    store = Store(store_copy)
    out = store_copy / "ex"
    # csv: the rows of every result (here: the attack results)
    csv = api.export("digits-dml", format="csv", kind="attack", out=out, artifacts=store_copy)
    assert csv.run == "digits-dml" and csv.files == [Path(p) for p in csv.rows["path"]]
    for r in csv.rows.itertuples():
        back = pd.read_csv(r.path)
        stored = store.list_results("attack", "digits-dml")
        (src,) = [p for p in stored if p.stem in r.path]
        df, _ = store.read_result(src)
        assert len(back) == len(df) == r.rows and list(back.columns) == list(df.columns)
        assert back["robust"].tolist() == df["robust"].tolist()
    # AutoAttack's log
    log = api.export("digits-dml", format="autoattack-log", out=out, artifacts=store_copy)
    text = open(log.files[0]).read()
    assert "initial accuracy:" in text and "max Linf perturbation:" in text
    aa = [store.read_result(p)[0] for p in store.list_results("attack", "digits-dml")]
    aa = next(d for d in aa if d["attack"].iloc[0].startswith("autoattack"))
    assert f"robust accuracy: {100 * aa['robust'].mean():.2f}%" in text
    # Cohen et al.'s TSV
    tsv = api.export("digits-dml", format="cohen-tsv", out=out, artifacts=store_copy)
    cohen = pd.read_csv(tsv.files[0], sep="\t")
    assert list(cohen.columns) == ["idx", "label", "predict", "radius", "correct", "time"]
    assert len(cohen) == 6
    # adversarial images reproduce the stored predictions
    adv = api.export("digits-dml", format="adversarials", attack="pgd-3", out=out,
                     artifacts=store_copy)  # fmt: skip
    t = load_file(str(adv.files[0]))
    assert t["x_adv"].shape[1:] == (1, 8, 8) and t["x_adv"].min() >= 0 and t["x_adv"].max() <= 1
    model = dmlcli.as_classifier("digits-dml", decision="vote", artifacts=store_copy)
    with torch.no_grad():
        assert model(t["x_adv"]).argmax(-1).tolist() == t["adv_pred"].tolist()
    assert (t["x_adv"] - t["x"]).abs().amax() <= 0.1 + 1e-6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "pdf"], "unknown export format 'pdf'"),
        (["--format", "cohen-tsv"], "no current results to export"),
        (["--kind", "nope"], "unknown result kind 'nope'"),
    ],
)
def test_export_bad_input_is_one_line(cli, store_copy, args, message):
    before = tree_listing(store_copy)
    res = cli("export", "digits-dml", *args, "--artifacts", store_copy)
    lines = res.err.strip().splitlines()
    assert res.code == 2 and len(lines) == 1 and message in lines[0], res.err
    assert tree_listing(store_copy) == before
