"""The Python API is what the CLI runs: same options, same stored rows; the README's Python
API blocks run as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pytest

from dmlcli import api
from dmlcli.api.outcome import Outcome
from dmlcli.files import read_parquet
from dmlcli.store import Store

README = Path(__file__).resolve().parents[1] / "README.md"

CASES = {
    "attack": (
        ["digits-dml", "--attack", "pgd", "--steps", "3", "--eps", "0.1", "--n", "20"],
        {"runs": ["digits-dml"], "attack": ["pgd"], "steps": 3, "eps": ["0.1"], "n": 20},
    ),
    "certify": (
        ["digits-dml", "--n-samples", "3", "--n0", "20", "--n", "200", "--predict-n", "50"],
        {"run": "digits-dml", "n_samples": 3, "n0": 20, "n": 200, "predict_n": 50},
    ),
    "clever": (
        ["digits-dml", "--n", "3", "--nb-batches", "5", "--batch-size", "16"],
        {"run": "digits-dml", "n": 3, "nb_batches": 5, "batch_size": 16},
    ),
    "detect": (
        ["digits-dml", "--attack", "fgsm", "--attack", "adaptive", "--n", "20", "--steps", "3"],
        {"run": "digits-dml", "attack": ["fgsm", "adaptive"], "n": 20, "steps": 3},
    ),
}


def _rows(root: Path) -> dict[str, tuple[pd.DataFrame, dict]]:
    out = {}
    for path in Store(root).list_results():
        df, meta = read_parquet(path)
        keep = [c for c in df.columns if c != "seconds"]
        out[str(path.relative_to(root))] = (df[keep], meta["setting"])
    return out


@pytest.mark.parametrize("command", list(CASES))
def test_cli_and_api_write_identical_rows(command, cli, trained_store, tmp_path):
    import shutil

    by_cli, by_api = tmp_path / "cli", tmp_path / "api"
    shutil.copytree(trained_store, by_cli)
    shutil.copytree(trained_store, by_api)
    argv, kwargs = CASES[command]
    res = cli(command, *argv, "--artifacts", by_cli)
    assert res.code == 0, res.err
    df = getattr(api, command)(**kwargs, artifacts=by_api)
    a, b = _rows(by_cli), _rows(by_api)
    assert a.keys() == b.keys() and a
    for name in a:
        pd.testing.assert_frame_equal(a[name][0], b[name][0])
        assert a[name][1] == b[name][1]
    assert len(df.rows) and _statuses(df) == {"new"}
    again = getattr(api, command)(**kwargs, artifacts=by_api)
    assert _statuses(again) == {"cached"}


def _statuses(out: Outcome) -> set[str]:
    """new, cached or shard i/n of each stored result behind an API call's outcome."""
    return {r.status for r in out.results}


def _python_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_python_api_blocks_run_as_written(trained_store, tmp_path, capsys):
    import shutil

    blocks = _python_blocks()
    assert len(blocks) >= 3
    shutil.copytree(trained_store, tmp_path / "artifacts")
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        for block in blocks:
            exec(compile(block, "README.md", "exec"), {})  # noqa: S102 - our own README
    finally:
        os.chdir(here)
    out = capsys.readouterr().out
    assert "vote accuracy" in out and "pgd-10" in out
