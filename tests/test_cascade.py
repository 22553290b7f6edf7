"""The adaptive suite as a cascade: each attack only on the samples every earlier stored
attack left robust, rows that say so, a worst case built from evidence only, and a report that
never reads a cascaded accuracy as the attack's own."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dmlcli import api, results
from dmlcli.eval import robustness as rob
from dmlcli.files import read_parquet
from dmlcli.report.collect import collect
from dmlcli.report.tables import adaptive_table, attack_cells
from dmlcli.store import Store

FAST = {"apgd_steps": 5, "queries": 50, "surface": ["sum", "members"]}


def _attacks(store: Store, run: str) -> list[tuple[pd.DataFrame, dict]]:
    return [read_parquet(p) for p in store.list_results("attack", run)]


def test_the_cascade_order_and_budgets():
    budgets = rob.Budgets(apgd_steps=5)
    specs = rob.adaptive_suite([0.2, 0.1], budgets, "vote", 5, False, "base", num_classes=10)
    assert [s.eps for s in specs] == sorted(s.eps for s in specs)  # smaller eps first
    labels = [s.label for s in specs if s.eps == 0.1]
    surfaces = [s.surface for s in specs if s.eps == 0.1]
    assert labels[0] == "apgd-ce" and labels[-12:-10] == ["rays", "transfer-apgd-ce"]
    assert all(s.startswith("member:") for s in surfaces[-10:])  # one member's surface last
    assert not any(s.startswith("member:") for s in surfaces[:-10])
    assert {"mora", "arc", "apgd-t", "apgd-agree"} <= set(labels)
    assert all(s.cascade for s in specs)
    t = next(s for s in specs if s.label == "apgd-t")
    assert t.params["target_classes"] == 9 and t.params["restarts"] == 2  # every wrong class
    alone = rob.adaptive_suite([0.1], rob.Budgets(independent=True), "vote", 5, False)
    t = next(s for s in alone if s.label == "apgd-t")
    assert not any(s.cascade for s in alone) and t.params["target_classes"] == 3
    first = rob.adaptive_suite([0.1], rob.Budgets(cascade_order=("rays",)), "vote", 5, False)
    assert first[0].label == "rays"


def test_a_cascade_attacks_only_what_is_still_robust(store_copy):
    api.attack("digits-dml", suite=["adaptive"], eps=["0.2"], n=40, artifacts=store_copy, **FAST)
    store = Store(store_copy)
    frames = _attacks(store, "digits-dml")
    breakers: dict[str, set[int]] = {}
    for df, meta in frames:
        assert meta["setting"]["cascade"] and df["cascade"].all()
        ran = df[df["clean_correct"] & (df["skipped_by"] == "")]
        breakers[results.attack_name(df)] = set(ran.loc[~ran["robust"], "sample"])
    # once broken, a sample is skipped by every later attack: no two attacks break it
    counts = pd.Series([s for b in breakers.values() for s in b]).value_counts()
    assert (counts == 1).all()
    broken = set(counts.index)
    skipped_any = False
    for df, _ in frames:
        skipped = df[df["skipped_by"] != ""]
        skipped_any |= len(skipped) > 0
        assert not skipped["robust"].any()
        for sample, by in zip(skipped["sample"], skipped["skipped_by"], strict=True):
            assert sample in breakers[by]  # skipped because that stored attack broke it
    assert skipped_any
    (wc_path,) = store.list_results("worst-case", "digits-dml")
    wc = read_parquet(wc_path)[0].set_index("sample")
    assert set(wc.index[wc["clean_correct"] & ~wc["robust"]]) == broken
    assert not wc["broken_by"].str.contains("rays|transfer", regex=True).all()


def test_the_report_never_reads_a_cascaded_row_as_its_own_accuracy(store_copy):
    api.attack("digits-dml", suite=["adaptive"], eps=["0.2"], n=30, artifacts=store_copy, **FAST)
    api.attack("digits-dml", attack=["pgd"], eps=["0.2"], n=30, artifacts=store_copy)
    col = collect(Store(store_copy))
    cells = [c for c in attack_cells(col, "digits") if c.result.run == "digits-dml"]
    cascaded = [c for c in cells if c.suite == "adaptive"]
    assert cascaded and all(c.robust is None for c in cascaded)
    assert all(c.cumulative <= c.clean for c in cascaded)
    table = adaptive_table(col, "digits")
    (row,) = [r for r in table.rows if r[0] == col.label("digits-dml")]
    header = dict(zip(table.columns, row, strict=True))
    strongest = [v for k, v in header.items() if "adaptive" in k.lower()]
    assert all(v in (None, "-") for v in strongest), header


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["--suite", "adaptive", "--queries", "0"], "--queries must be at least 1"),
        (["--suite", "adaptive", "--cascade-order", "fab"], "unknown attack 'fab' in --cascade"),
    ],
)
def test_bad_cascade_input_exits_2_and_writes_nothing(cli, store_copy, argv, expect):
    before = sorted(str(p) for p in Path(store_copy).rglob("*"))
    res = cli("attack", "digits-dml", "--eps", "0.1", *argv, "--artifacts", store_copy)
    assert res.code == 2 and expect in res.err and res.err.count("\n") == 1
    assert sorted(str(p) for p in Path(store_copy).rglob("*")) == before
