"""Checkpoints: round trip, refusal of corrupt files, run names, atomic results."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from dmlcli import results
from dmlcli.errors import DmlError
from dmlcli.files import read_parquet, write_parquet
from dmlcli.models.io import load_ensemble, save_ensemble
from dmlcli.store import Store, validate_name
from tests.helpers import attack_rows, tiny_ensemble


@pytest.mark.parametrize("head", ["linear", "dml", "rdml"])
def test_save_load_round_trip_gives_identical_logits(tmp_path, head):
    ens = tiny_ensemble(head=head, head_sigma=0.0) if head == "rdml" else tiny_ensemble(head=head)
    path = tmp_path / "m.safetensors"
    save_ensemble(path, ens)
    loaded = load_ensemble(path)
    x = torch.rand(5, 1, 8, 8)
    torch.manual_seed(0)
    a = ens(x)
    torch.manual_seed(0)
    assert torch.equal(a, loaded(x))
    assert loaded.config == ens.config


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_ensemble(path, tiny_ensemble())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DmlError, match="not a readable safetensors"):
        load_ensemble(path)


def test_altered_checkpoint_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_ensemble(path, tiny_ensemble())
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # flip bits inside the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(DmlError, match="corrupt"):
        load_ensemble(path)


def test_foreign_safetensors_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(DmlError, match="not a dml checkpoint"):
        load_ensemble(path)


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "", ".hidden", "x" * 200, "a b"])
def test_run_names_cannot_escape_the_store(name):
    with pytest.raises(DmlError, match="bad run name"):
        validate_name(name)


def test_results_are_written_with_their_setting_and_schema_version(tmp_path):
    store = Store(tmp_path)
    df = attack_rows([True, False])
    path = store.write_result("attack", "run1", {"eps": 0.1}, df)
    rows, meta = read_parquet(path)
    pd.testing.assert_frame_equal(rows, df, check_dtype=False)
    assert meta["setting"] == {"eps": 0.1} and meta["kind"] == "attack"
    assert meta["schema_version"] == results.schema("attack").version
    assert store.list_results("attack") == [path] == store.list_results(run="run1")
    pd.testing.assert_frame_equal(store.read_result(path)[0], rows)
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_result_of_another_schema_version_is_refused_in_one_line(tmp_path):
    store = Store(tmp_path)
    path = store.write_result("attack", "run1", {"eps": 0.1}, attack_rows([True]))
    df, meta = read_parquet(path)
    write_parquet(path, df, {**meta, "schema_version": 1})
    with pytest.raises(DmlError, match="schema version 1 .*reads version"):
        store.read_result(path)
    with pytest.raises(DmlError, match="schema version 1"):
        store.result_meta(path)


def test_rows_missing_a_schema_column_are_a_bug_not_a_result():
    with pytest.raises(ValueError, match="robust"):
        results.frame("attack", attack_rows([True]).drop(columns=["robust"]))
    with pytest.raises(ValueError, match="not in the schema"):
        results.frame("attack", attack_rows([True]).assign(extra=1))


@pytest.mark.parametrize("kind", results.list_kinds())
def test_every_schema_names_its_columns_once(kind):
    names = results.schema(kind).names
    assert len(names) == len(set(names)) and names


def test_the_store_resolves_names_folders_and_files(tmp_path):
    store = Store(tmp_path)
    path = store.checkpoint_path("r1")
    save_ensemble(path, tiny_ensemble())
    assert store.resolve("r1") == ("r1", path)
    assert store.resolve(path.parent) == ("r1", path)
    assert store.resolve(path) == ("r1", path)
    with pytest.raises(DmlError, match="no run named 'r2'.*runs: r1"):
        store.resolve("r2")
