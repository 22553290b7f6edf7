"""``dml train`` and ``dml ls`` end to end, and their refusals of bad input."""

from __future__ import annotations

import pytest

from dmlcli import api
from dmlcli.models.io import load_ensemble


def test_trained_store_has_accurate_runs(trained_store):
    dml = load_ensemble(trained_store / "models" / "digits-dml" / "model.safetensors")
    assert dml.meta["benign"]["vote"] > 90.0
    assert dml.config.prior == "digits-baseline"
    base = load_ensemble(trained_store / "models" / "digits-baseline" / "model.safetensors")
    assert base.config.head == "linear" and base.meta["benign"]["vote"] > 90.0


def test_ls_lists_runs(cli, trained_store):
    res = cli("ls", "--artifacts", trained_store)
    assert res.code == 0
    assert "digits-dml" in res.out and "digits-baseline" in res.out


def test_existing_run_is_a_no_op(cli, store_copy):
    before = (store_copy / "models" / "digits-dml" / "model.safetensors").stat().st_mtime_ns
    res = cli("train", "digits", "--artifacts", store_copy)
    assert res.code == 0 and "exists" in res.out
    after = (store_copy / "models" / "digits-dml" / "model.safetensors").stat().st_mtime_ns
    assert before == after


def test_train_outcome_names_each_seed_run_its_accuracy_and_files(tmp_path):
    out = api.train("digits", members=2, epochs=1, seeds="0,1", artifacts=tmp_path)
    assert (out.run, out.status, out.rank) == ("digits-dml", "new", 0)
    assert [o.run for o in out.seeds] == ["digits-dml-seed0", "digits-dml-seed1"]
    assert out.files == [f for o in out.seeds for f in o.files] and len(out.files) == 4
    assert all(f.is_file() for f in out.files) and out.new_files == out.files
    assert list(out.rows["seed"]) == [0, 1] and list(out.rows["run"]) == [o.run for o in out.seeds]
    assert out.benign == out.seeds[-1].benign and "vote" in out.benign
    again = api.train("digits", members=2, epochs=1, seeds=[0, 1], artifacts=tmp_path)
    assert again.status == "exists" and again.files == []
    assert [o.benign for o in again.seeds] == [o.benign for o in out.seeds]
    assert len(again.rows) == 2


def test_ls_outcome_has_the_runs_and_no_stale_files(trained_store):
    out = api.ls(artifacts=trained_store)
    assert set(out.rows["run"]) == {"digits-baseline", "digits-dml"}
    assert out.stale == [] and out.removed is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["imagenet"], "unknown dataset"),
        (["digits", "--members", "1"], "at least 2 members"),
        (["digits", "--members", "11"], "cannot each own"),
        (["digits", "--gamma", "-1"], "--gamma"),
        (["digits", "--gamma", "nan"], "--gamma"),
        (["digits", "--head", "cosine"], "unknown head"),
        (["digits", "--epochs", "0"], "--epochs"),
        (["digits", "--adv-eps", "2"], "outside [0, 1]"),
        (["digits", "--name", "../escape"], "bad run name"),
        (["digits", "--prior", "no-such-run"], "no run named"),
        (["digits", "--members", "abc"], "members"),
        (["mnist", "--data-dir", "/nonexistent"], "not a directory"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, tmp_path, args, message):
    root = tmp_path / "art"
    res = cli("train", *args, "--artifacts", root)
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.err
    assert "Traceback" not in res.err + res.out
    assert not root.exists()
