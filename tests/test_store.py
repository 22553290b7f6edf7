"""Checkpoints: round trip, refusal of corrupt files, run names, atomic results."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from dmlcli.errors import DmlError
from dmlcli.store import Store, load_ensemble, read_parquet, save_ensemble, validate_name
from tests.conftest import tiny_ensemble


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


def test_results_are_written_with_their_setting(tmp_path):
    store = Store(tmp_path)
    df = pd.DataFrame({"idx": [1, 2], "correct": [True, False]})
    path = store.write_result("attack", "run1", {"eps": 0.1}, df)
    rows, meta = read_parquet(path)
    assert rows.equals(df)
    assert meta["setting"] == {"eps": 0.1} and meta["kind"] == "attack"
    assert store.list_results("attack") == [path]
    assert not list(tmp_path.rglob("*.tmp"))
