"""Issue 7, evaluation side: kills, Ctrl-C, shards and concurrent writers.

What the tool must do, case by case (each row is one test below):

=============================================  ============================================
case                                           what ``dml`` must do
=============================================  ============================================
SIGKILL ``dml attack`` at 5 seeded points,     final parquet: every sample once, equal to
rerun the same command after each              an uninterrupted run (timing aside)
SIGINT ``dml attack``                          exit 130, one line saying how to resume, no
                                               traceback, parts kept; the rerun completes
two ``dml attack`` (other --eps) at once       both results complete and readable
``--shard 1/2`` + ``--shard 2/2`` + merge      exactly the unsharded run's rows
merge with a shard missing                     exit 2, one ``error:`` line naming the gap
resume with another --batch-size               exit 2, one line: use the same size or --force
``dml detect --shard``                         exit 2, one line (the detector needs all rows)
unsharded rerun after one shard                reuses that shard's batches, same rows
``dml certify`` / ``dml clever`` sharded       merge equals the unsharded result
SIGKILL ``dml certify``, rerun                 equals the uninterrupted result
SIGKILL ``dml detect``, rerun                  equals the uninterrupted result
=============================================  ============================================

(Training: ``tests/test_train.py::test_resume_after_sigkill_gives_identical_weights``.)
Every subprocess runs with one thread, so runs are bit-for-bit comparable.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from dmlcli.files import read_parquet
from dmlcli.runtime import Shard, parse_shard
from dmlcli.store import Store

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ENV.pop("WORLD_SIZE", None)
ENV.pop("RANK", None)
TIMING = ["seconds"]
# 60 samples in 20 batches of 3: slow enough to be killed between (and inside) batches.
ATTACK = "attack digits-dml --attack pgd --steps 20 --eps 0.1 --n 60 --batch-size 3".split()
CERTIFY = (
    "certify digits-dml --n0 10 --n 200 --predict-n 50 --batch-size 100 --n-samples 12 "
    "--part-size 2"
).split()
CLEVER = (
    "clever digits-dml --n 6 --nb-batches 5 --batch-size 8 --pool-factor 2 --part-size 2"
).split()


# -- helpers -----------------------------------------------------------------------------------
def _cmd(args: list[str], store: Path) -> list[str]:
    return [sys.executable, "-m", "dmlcli", *args, "--artifacts", str(store)]


def _run(args: list[str], store: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(args, store), env=ENV, capture_output=True, text=True, timeout=300)


def _parts(store: Path) -> list[Path]:
    return sorted((store / "results").glob("*/.parts/*/part-*.parquet"))


def _folders(store: Path) -> list[Path]:
    """Part folders of results in progress."""
    return sorted((store / "results").glob("*/.parts/*"))


def _wait_for_parts(proc: subprocess.Popen, store: Path, k: int, timeout: float = 120) -> None:
    """Wait until ``k`` part files exist (or the process ends)."""
    deadline = time.time() + timeout
    while len(_parts(store)) < k and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)


def _result(store: Path, kind: str) -> pd.DataFrame:
    paths = [p for p in Store(store).list_results(kind) if len(p.stem) == len(kind) + 13]
    assert len(paths) == 1, paths
    df, _ = read_parquet(paths[0])
    return df


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal rows and columns, timing columns aside."""
    assert list(a.columns) == list(b.columns)
    drop = [c for c in TIMING if c in a.columns]
    pd.testing.assert_frame_equal(a.drop(columns=drop), b.drop(columns=drop))


def _fresh(trained_store: Path, where: Path) -> Path:
    shutil.copytree(trained_store, where)
    return where


@pytest.fixture(scope="module")
def reference(trained_store, tmp_path_factory) -> dict[str, pd.DataFrame]:
    """Uninterrupted, unsharded ``ATTACK`` in a subprocess: its attack and example rows."""
    store = _fresh(trained_store, tmp_path_factory.mktemp("ref") / "artifacts")
    done = _run(ATTACK, store)
    assert done.returncode == 0, done.stderr
    assert not _folders(store)
    return {"attack": _result(store, "attack"), "adv-examples": _result(store, "adv-examples")}


# -- shard parsing --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("2/4", {}, Shard(2, 4)),
        ("1/1", {}, None),  # one shard is the whole result
        (None, {}, None),  # no torchrun: unsharded
        (None, {"WORLD_SIZE": "4", "RANK": "3"}, Shard(4, 4)),  # torchrun: RANK is 0-based
        (None, {"WORLD_SIZE": "1", "RANK": "0"}, None),
    ],
)
def test_shard_from_flag_or_torchrun(monkeypatch, text, env, expected):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert parse_shard(text) == expected


def test_shard_blocks_cover_every_batch_once():
    for batches in (1, 5, 20, 21):
        for count in (1, 2, 3, 7):
            blocks = [list(Shard(i, count).block(batches)) for i in range(1, count + 1)]
            assert sorted(b for block in blocks for b in block) == list(range(batches))


@pytest.mark.parametrize("text", ["0/2", "3/2", "a/b", "1-2"])
def test_bad_shard_is_one_line(cli, store_copy, text):
    r = cli(*ATTACK, "--shard", text, "--artifacts", store_copy)
    assert r.code == 2 and r.err.startswith("error: ") and r.err.count("\n") == 1
    assert not (store_copy / "results").exists()


# -- kills and Ctrl-C -----------------------------------------------------------------------------
@pytest.mark.slow
def test_attack_killed_at_five_seeded_points_resumes_to_the_same_rows(
    reference, trained_store, tmp_path
):
    store = _fresh(trained_store, tmp_path / "artifacts")
    rng = random.Random(7)
    points = sorted(rng.sample(range(1, 19), 5))  # kill once this many batches are kept
    kept = []
    for k in points:
        proc = subprocess.Popen(
            _cmd(ATTACK, store), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_for_parts(proc, store, k)
        time.sleep(rng.uniform(0.0, 0.05))  # between batches or inside one
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kept.append(len(_parts(store)))
        assert not Store(store).list_results("attack"), "a killed run left a final result"
    assert kept == sorted(kept) and kept[0] >= points[0]  # nothing kept is ever lost
    done = _run(ATTACK, store)
    assert done.returncode == 0, done.stderr
    df = _result(store, "attack")
    assert df["sample"].is_unique and len(df) == 60
    _same(df, reference["attack"])
    _same(_result(store, "adv-examples"), reference["adv-examples"])
    assert not _folders(store)


def test_ctrl_c_keeps_parts_exits_130_with_one_resume_line(reference, trained_store, tmp_path):
    store = _fresh(trained_store, tmp_path / "artifacts")
    proc = subprocess.Popen(
        _cmd(ATTACK, store),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell without job control starts background jobs with SIGINT ignored, and the
        # child would inherit that: give it the default, as a terminal's Ctrl-C finds it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    _wait_for_parts(proc, store, 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "resume" in lines[0] and "Traceback" not in err, err
    assert lines[0].startswith("interrupted: ") and "pgd-20" in lines[0]
    assert len(_parts(store)) >= 3
    done = _run(ATTACK, store)
    assert done.returncode == 0, done.stderr
    _same(_result(store, "attack"), reference["attack"])


@pytest.mark.slow
def test_two_attacks_with_other_eps_write_into_one_store_at_once(trained_store, tmp_path):
    store = _fresh(trained_store, tmp_path / "artifacts")
    procs = [
        subprocess.Popen(
            _cmd([*ATTACK[:5], "5", "--eps", eps, *ATTACK[8:]], store),  # --steps 5
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for eps in ("0.05", "0.1")
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    results = Store(store).list_results("attack")
    assert len(results) == 2 and len(Store(store).list_results("adv-examples")) == 2
    for path in results:
        df, meta = read_parquet(path)
        assert len(df) == 60 and df["sample"].is_unique
    assert {read_parquet(p)[0]["eps"].iloc[0] for p in results} == {0.05, 0.1}
    assert not _folders(store)


# -- shards and merge -----------------------------------------------------------------------------
def test_two_shards_and_merge_equal_the_unsharded_run(cli, trained_store, tmp_path):
    whole = _fresh(trained_store, tmp_path / "whole")
    assert cli(*ATTACK, "--artifacts", whole).code == 0
    sharded = _fresh(trained_store, tmp_path / "sharded")
    for i in (1, 2):
        r = cli(*ATTACK, "--shard", f"{i}/2", "--artifacts", sharded)
        assert r.code == 0, r.err
        assert "shard" in r.out and not Store(sharded).list_results("attack")
    assert len(_parts(sharded)) == 20  # 60 samples / 3 per batch
    merged = cli("merge", "--artifacts", sharded)
    assert merged.code == 0, merged.err
    assert "merged 1 result" in merged.out and "60" in merged.out
    _same(_result(sharded, "attack"), _result(whole, "attack"))
    _same(_result(sharded, "adv-examples"), _result(whole, "adv-examples"))
    assert not _folders(sharded)
    # nothing left to merge; the attack itself is now cached
    assert "nothing to merge" in cli("merge", "--artifacts", sharded).out
    assert "cached" in cli(*ATTACK, "--artifacts", sharded).out


def test_merge_with_a_missing_shard_is_one_error_line(cli, store_copy):
    assert cli(*ATTACK, "--shard", "2/2", "--artifacts", store_copy).code == 0
    before = sorted(p.name for p in _parts(store_copy))
    r = cli("merge", "digits-dml", "--artifacts", store_copy)
    assert r.code == 2 and r.err.count("\n") == 1 and r.err.startswith("error: cannot merge")
    assert "10 of 20 batches missing" in r.err and "positions 0-2" in r.err
    assert sorted(p.name for p in _parts(store_copy)) == before  # nothing written or removed
    assert not Store(store_copy).list_results("attack")


def test_resume_with_another_batch_size_is_one_error_line(cli, store_copy):
    assert cli(*ATTACK, "--shard", "1/2", "--artifacts", store_copy).code == 0
    other = [*ATTACK[:-1], "4"]  # --batch-size 4 instead of 3
    r = cli(*other, "--artifacts", store_copy)
    assert r.code == 2 and r.err.count("\n") == 1 and "--batch-size" not in r.out
    assert "same batch size (3)" in r.err and "--force" in r.err
    assert len(_parts(store_copy)) == 10  # the kept batches are untouched
    assert cli(*other, "--force", "--artifacts", store_copy).code == 0
    assert len(_result(store_copy, "attack")) == 60 and not _folders(store_copy)


def test_detect_refuses_shards_with_one_line(cli, store_copy):
    r = cli("detect", "digits-dml", "--shard", "1/2", "--artifacts", store_copy)
    assert r.code == 2 and r.err.count("\n") == 1 and "cannot be sharded" in r.err


def test_unsharded_rerun_picks_up_a_shards_batches(cli, trained_store, tmp_path):
    whole = _fresh(trained_store, tmp_path / "whole")
    assert cli(*ATTACK, "--artifacts", whole).code == 0
    store = _fresh(trained_store, tmp_path / "mixed")
    assert cli(*ATTACK, "--shard", "1/2", "--artifacts", store).code == 0
    first = pd.concat([read_parquet(p)[0] for p in _parts(store)], ignore_index=True)
    assert cli(*ATTACK, "--artifacts", store).code == 0
    df = _result(store, "attack")
    _same(df, _result(whole, "attack"))
    # the shard's rows were read back, not recomputed: even their timings are the same
    assert df["seconds"].head(len(first)).tolist() == first["seconds"].tolist()


@pytest.mark.parametrize("args", [CERTIFY, CLEVER], ids=["certify", "clever"])
def test_certify_and_clever_shards_merge_to_the_unsharded_result(
    cli, trained_store, tmp_path, args
):
    kind = args[0]
    whole = _fresh(trained_store, tmp_path / "whole")
    r = cli(*args, "--artifacts", whole)
    assert r.code == 0, r.err
    sharded = _fresh(trained_store, tmp_path / "sharded")
    for i in (1, 2, 3):
        r = cli(*args, "--shard", f"{i}/3", "--artifacts", sharded)
        assert r.code == 0, r.err
    assert not Store(sharded).list_results(kind)
    assert cli("merge", "--artifacts", sharded).code == 0
    _same(_result(sharded, kind), _result(whole, kind))
    a = read_parquet(Store(sharded).list_results(kind)[0])[1]
    b = read_parquet(Store(whole).list_results(kind)[0])[1]
    for key in ("setting", "quantiles", "curve", "head_lipschitz"):
        assert a.get(key) == b.get(key), key


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        CERTIFY,
        "detect digits-dml --attack pgd --steps 10 --eps 0.1 --n 60 --batch-size 4".split(),
    ],
    ids=["certify", "detect"],
)
def test_certify_and_detect_killed_resume_to_the_same_rows(trained_store, tmp_path, args):
    kind = args[0]
    ref = _fresh(trained_store, tmp_path / "ref")
    assert _run(args, ref).returncode == 0
    store = _fresh(trained_store, tmp_path / "killed")
    proc = subprocess.Popen(
        _cmd(args, store), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _wait_for_parts(proc, store, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not Store(store).list_results(kind) and _parts(store)
    done = _run(args, store)
    assert done.returncode == 0, done.stderr
    _same(_result(store, kind), _result(ref, kind))
    assert not _folders(store)
