"""``dml attack`` and ``dml transfer`` end to end on the trained digits store."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmlcli.files import read_parquet
from dmlcli.store import Store

COLUMNS = (
    "run checkpoint dataset sample label attack norm eps steps step_size restarts targeted "
    "target loss surface decision eot seed clean_pred adv_pred member_1 member_5 "
    "clean_correct adv_correct robust linf l2 seconds"
).split()


def _files(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*") if p.is_file()}


def _latest(paths: list[Path]) -> Path:
    return max(paths, key=lambda p: p.stat().st_mtime)


def _attack(cli, store: Path, *args: str):
    return cli("attack", *args, "--artifacts", store)


def test_paper_suite_writes_rows_and_is_a_no_op_when_rerun(cli, store_copy):
    args = "digits-dml --suite paper --eps 0.1 --n 20 --pgd-restarts 1 --cw-steps 10".split()
    r = _attack(cli, store_copy, *args, "--batch-size", "12")
    assert r.code == 0, r.err
    store = Store(store_copy)
    results = store.list_results("attack")
    assert len(results) == 6  # fgsm, bim-10, pgd-10, pgd-20x1, pgd-40x1, cw-10
    assert len(store.list_results("adv-examples")) == 6
    for name in ("clean", "fgsm", "bim-10", "pgd-10", "pgd-20x1", "pgd-40x1", "cw-10"):
        assert name in r.out
    attacks = set()
    for path in results:
        df, meta = read_parquet(path)
        attacks |= set(df["attack"])
        assert len(df) == 20 and df["sample"].is_unique
        assert set(COLUMNS) <= set(df.columns)
        assert set(df["surface"]) == {"sum"} and set(df["decision"]) == {"vote"}
        assert (df["robust"] <= df["clean_correct"]).all()
        assert meta["setting"]["checkpoint"] == df["checkpoint"].iloc[0]
        assert meta["warnings"] == [] and "torch" in meta["versions"]
        if df["attack"].iloc[0] != "cw-10":
            assert (df["linf"] <= 0.1 + 1e-6).all()
    assert attacks == {"fgsm", "bim-10", "pgd-10", "pgd-20x1", "pgd-40x1", "cw-10"}
    ex, _ = read_parquet(store.list_results("adv-examples")[0])
    assert len(ex) == 8 and len(ex["x_adv"].iloc[0]) == 64
    before = _files(store_copy)
    again = _attack(cli, store_copy, *args, "--batch-size", "12")
    # six attacks and the run's stored worst case over them, all cached
    assert again.code == 0 and again.out.count("cached") == 7 and "wrote" not in again.out
    assert _files(store_copy) == before


def test_adaptive_suite_with_surrogate_stores_the_worst_case(cli, store_copy):
    args = "digits-dml --suite adaptive --eps 0.1 --n 30 --apgd-steps 4 --surface sum"
    args += " --surface members --surrogate digits-baseline"
    r = _attack(cli, store_copy, *args.split())
    assert r.code == 0, r.err
    frames = {}
    for path in Store(store_copy).list_results("attack"):
        df, _ = read_parquet(path)
        frames[(df["attack"].iloc[0], df["surface"].iloc[0])] = df
    assert set(frames) == {
        ("apgd-ce", "sum"),
        ("apgd-dlr", "sum"),
        ("apgd-t", "sum"),
        ("apgd-ce", "members"),
        ("apgd-dlr", "members"),
        ("mora", "sum"),
        ("arc", "members"),
        ("rays", "sum"),
        ("transfer-apgd-ce", "sum"),
    }
    assert (frames[("transfer-apgd-ce", "sum")]["surrogate"] == "digits-baseline").all()
    (path,) = Store(store_copy).list_results("worst-case")
    worst, meta = read_parquet(path)
    assert len(meta["components"]) == len(frames) == 9
    expected = None
    for df in frames.values():
        expected = df["robust"] if expected is None else expected & df["robust"]
    assert worst["robust"].tolist() == expected.tolist()
    broken = worst[worst["clean_correct"] & ~worst["robust"]]
    assert len(broken) and (broken["broken_by"] != "").all()
    assert (worst.loc[worst["robust"], "broken_by"] == "").all()
    assert "worst-case" in r.out and "9 results" in r.out and "transfer" in r.out


@pytest.mark.slow
def test_autoattack_suite_on_two_models_and_a_custom_attack(cli, store_copy):
    args = "--suite autoattack --eps 0.1 --n 10 --aa-attack apgd-ce --aa-steps 3"
    r = _attack(cli, store_copy, "digits-dml", "digits-baseline", *args.split())
    assert r.code == 0, r.err
    for run in ("digits-dml", "digits-baseline"):
        (path,) = (store_copy / "results" / run).glob("attack-*")
        df, meta = read_parquet(path)
        assert meta["setting"]["params"]["version"] == "custom" and "warnings" in meta
        assert (df["attack"] == "autoattack-custom").all() and (df["linf"] <= 0.1 + 1e-6).all()
    args = "digits-dml --attack pgd --steps 3 --eps 0.05 --surface member:2 --n 20"
    r = _attack(cli, store_copy, *args.split(), "--decision", "meta-vote", "--targeted")
    assert r.code == 0, r.err
    df, meta = read_parquet(_latest(Store(store_copy).list_results("attack")))
    assert meta["setting"]["attack"] == "pgd-3"
    assert set(df["surface"]) == {"member:2"} and set(df["decision"]) == {"meta-vote"}
    assert df["targeted"].all() and (df["target"] != df["label"]).all()
    assert (df["linf"] <= 0.05 + 1e-6).all()


@pytest.mark.parametrize(
    "args, message",
    [
        ("--eps -0.1", "outside [0, 1]"),
        ("--eps 1.5", "outside [0, 1]"),
        ("--eps abc", "cannot read eps"),
        ("--attack nope", "unknown attack 'nope'"),
        ("--attack pgd --surface nope", "unknown surface 'nope'"),
        ("--suite adaptive --surface nope", "unknown surface 'nope'"),
        ("--suite everything", "unknown suite"),
        ("--decision member:7", "unknown decision"),
        ("--dataset fashion-mnist", "trained on digits, not fashion-mnist"),
        ("--n 100000", "larger than the test set"),
        ("--surrogate missing-run", "no run named 'missing-run'"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(cli, store_copy, args, message):
    before = _files(store_copy)
    r = _attack(cli, store_copy, "digits-dml", "--n", "10", *args.split())
    assert r.code == 2, (r.out, r.err)
    assert message in r.err and r.err.count("\n") == 1, r.err
    assert _files(store_copy) == before


@pytest.mark.slow
def test_transfer_matrix_targeted_and_cw_distortion(cli, store_copy):
    def transfer(*args: str):
        return cli("transfer", "digits-dml", *args, "--artifacts", store_copy)

    r = transfer(*"--source all --source ensemble --eps 0.1 --steps 3 --n 20".split())
    assert r.code == 0, r.err
    paths = Store(store_copy).list_results("transfer")
    assert len(paths) == 6  # 5 members + the ensemble
    df, _ = read_parquet(paths[0])
    assert len(df) == 20 * 6
    assert set(df["scored"]) == {"ensemble", *[f"member:{k}" for k in range(1, 6)]}
    assert "benign" in r.out and "member:5" in r.out
    r = transfer(*"--targeted --eps 0.1 --steps 3 --n 20".split())
    assert r.code == 0, r.err
    df, meta = read_parquet(_latest(Store(store_copy).list_results("transfer")))
    assert meta["setting"]["targeted"] and (df["target"] != df["label"]).all()
    args = "--cw-distortion --source ensemble --source member:2 --kappa 0 --kappa 0.1"
    r = transfer(*args.split(), "--cw-steps", "10", "--n", "10")
    assert r.code == 0, r.err
    assert len(Store(store_copy).list_results("cw-distortion")) == 4  # 2 sources x 2 kappas
    assert "mean L2" in r.out
    before = _files(store_copy)
    bad = transfer("--source", "member:9")
    assert bad.code == 2 and "members are numbered 1..5" in bad.err
    bad = transfer("--attack", "cw")
    assert bad.code == 2 and "unknown transfer attack" in bad.err
    assert _files(store_copy) == before
