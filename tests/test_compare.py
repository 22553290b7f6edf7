"""dml compare: paired per-sample comparison (McNemar's exact test, paired bootstrap CI)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import attack_rows, tree_listing
from scipy.stats import binomtest

from dmlcli import api
from dmlcli.errors import DmlError, DmlWarning
from dmlcli.stats import compare_paired, mcnemar_exact, paired_bootstrap
from dmlcli.store import Store


@pytest.mark.parametrize(("b", "c"), [(0, 0), (0, 5), (3, 9), (10, 10), (17, 4), (1, 40)])
def test_mcnemar_matches_scipys_exact_binomial_test(b, c):
    expected = 1.0 if b + c == 0 else binomtest(min(b, c), b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


def test_paired_comparison_on_a_constructed_case():
    # 20 samples: A robust on 0..11, B on 8..13 -> only A: 0..7 (8), only B: 12, 13 (2)
    a = attack_rows([i < 12 for i in range(20)], clean=[True] * 20)
    b = attack_rows([8 <= i < 14 for i in range(20)], clean=[True] * 20)
    out = compare_paired(a, b, "robust", reps=2000, seed=3)
    assert (out["n"], out["only_a"], out["only_b"]) == (20, 8, 2)
    assert out["acc_a"] == 60.0 and out["acc_b"] == 30.0 and out["diff"] == pytest.approx(30.0)
    assert out["p_value"] == pytest.approx(binomtest(2, 10, 0.5).pvalue)
    assert out["ci_low"] < 30.0 < out["ci_high"]
    # deterministic given the seed, another seed another interval
    assert paired_bootstrap(a["robust"], b["robust"], 2000, 3) == paired_bootstrap(
        a["robust"], b["robust"], 2000, 3
    )
    assert paired_bootstrap(a["robust"], b["robust"], 2000, 4) != paired_bootstrap(
        a["robust"], b["robust"], 2000, 3
    )
    with pytest.raises(DmlError, match="different samples"):
        compare_paired(a, attack_rows([True] * 4, samples=[0, 1, 2, 5]), "robust")


def test_compare_two_stored_runs_end_to_end(cli, store_copy):
    for run in ("digits-dml", "digits-baseline"):
        res = cli("attack", run, "--suite", "paper", "--eps", "0.1", "--n", "40",
                  "--pgd-restarts", "1", "--cw-steps", "5", "--artifacts", store_copy)  # fmt: skip
        assert res.code == 0, res.err
    out = api.compare(["digits-dml", "digits-baseline"], eps="0.1", reps=500,
                      artifacts=store_copy)  # fmt: skip
    assert out.base == "digits-dml" and not out.by_seed
    df = out.rows
    assert list(df["measure"]) == ["clean", "paper protocol", "worst case"]
    assert (df["n"] == 40).all() and (df["p_value"] <= 1).all()
    assert np.allclose(df["diff"], df["acc_a"] - df["acc_b"])
    again = api.compare(["digits-dml", "digits-baseline"], eps="0.1", reps=500,
                        artifacts=store_copy)  # fmt: skip
    assert df.equals(again.rows)
    res = cli("compare", "digits-dml", "digits-baseline", "--eps", "0.1", "--reps", "500",
              "--artifacts", store_copy)  # fmt: skip
    assert res.code == 0 and "McNemar" in res.out and "worst case" in res.out, res.err
    # bad input: one run; no results at that eps; samples of another size
    before = tree_listing(store_copy)
    for argv, message in (
        (["digits-dml", "--eps", "0.1"], "at least two runs"),
        (["digits-dml", "digits-baseline", "--eps", "0.2"], "no stored worst case at eps 0.2"),
        (["digits-dml", "digits-baseline", "--eps", "0.1", "--reps", "5"], "--reps"),
    ):
        res = cli("compare", *argv, "--artifacts", store_copy)
        lines = res.err.strip().splitlines()
        assert res.code == 2 and len(lines) == 1 and message in lines[0], res.err
    assert tree_listing(store_copy) == before  # compare never writes
    res = cli("attack", "digits-baseline", "--attack", "fgsm", "--eps", "0.1", "--n", "30",
              "--artifacts", store_copy)  # fmt: skip
    assert res.code == 0
    with pytest.raises(DmlError, match="several sample sets"):
        api.compare(["digits-dml", "digits-baseline"], eps="0.1", artifacts=store_copy)
    with pytest.raises(
        DmlError, match="no stored worst case at eps 0.1, decision vote, seed 0, n 30"
    ):
        api.compare(["digits-dml", "digits-baseline"], eps="0.1", n=30, artifacts=store_copy)
    store = Store(store_copy)
    for path in store.list_results(run="digits-baseline"):  # keep only its 30-sample results
        if len(store.read_result(path)[0]) == 40:
            path.unlink()
    with pytest.raises(DmlError, match="evaluated on different samples"):
        api.compare(["digits-dml", "digits-baseline"], eps="0.1", artifacts=store_copy)


def test_worst_cases_over_different_attack_sets_warn(store_copy):
    api.attack("digits-dml", attack=["fgsm", "pgd"], steps=3, eps=["0.1"], n=20,
               artifacts=store_copy)  # fmt: skip
    api.attack("digits-baseline", attack=["fgsm"], eps=["0.1"], n=20, artifacts=store_copy)
    with pytest.warns(DmlWarning, match="over 2 stored attacks, digits-baseline's over 1"):
        df = api.compare(["digits-dml", "digits-baseline"], eps="0.1", reps=200,
                         artifacts=store_copy).rows  # fmt: skip
    worst = df[df["measure"] == "worst case"].iloc[0]
    assert (worst["attacks_a"], worst["attacks_b"]) == (2, 1)
