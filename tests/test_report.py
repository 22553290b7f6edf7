"""``dml report``: tables and figures from hand-written result files in the other commands'
schemas; the numbers in the rendered tables are asserted, and so is graceful skipping."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dmlcli.api import refresh_worst_cases
from dmlcli.files import read_tensor_digest, write_parquet
from dmlcli.models.io import save_ensemble
from dmlcli.recipes import save_recipe_json, validate_recipe
from dmlcli.report import render_report
from dmlcli.report import tables as tb
from dmlcli.runs import open_run
from dmlcli.store import Store
from tests.helpers import tiny_ensemble

N = 20  # evaluation samples of every fixture result
K = 3  # members


# -- a store written by hand, in the exact schemas of dml train/attack/transfer/... -----------
def _run(store: Store, name: str, head: str, benign: dict[str, float], epochs: int = 3) -> None:
    ens = tiny_ensemble(head=head, members=K)
    ens.config = ens.config.replace(training={"epochs": epochs})
    save_ensemble(store.checkpoint_path(name), ens, {"benign": benign, "run": name})
    hist = pd.DataFrame(
        {
            "epoch": np.arange(1, epochs + 1),
            "lr": [1e-3] * epochs,
            "seconds": [1.0] * epochs,
            "train_total": [2.0, 1.0, 0.5][:epochs],
            "train_ce": [1.9, 0.9, 0.4][:epochs],
            "train_ortho": [0.0] * epochs,
            "train_l1": [0.0] * epochs,
            "train_acc": [50.0, 80.0, 95.0][:epochs],
            "test_vote": [60.0, 85.0, benign["vote"]][:epochs],
            "test_meta-vote": [60.0, 85.0, benign["vote"]][:epochs],
            "test_sum": [60.0, 85.0, benign["vote"]][:epochs],
            "test_mean-softmax": [60.0, 85.0, benign["vote"]][:epochs],
            **{f"test_member:{k}": [55.0, 80.0, 90.0][:epochs] for k in range(1, K + 1)},
        }
    )
    write_parquet(store.run_dir(name) / "history.parquet", hist, {"run": name})


def _ckpt(store: Store, run: str) -> str:
    """The digest results of ``run`` must name to be current (not stale)."""
    path = store.checkpoint_path(run)
    return read_tensor_digest(path) if path.is_file() else "0" * 64


def _attack(
    store: Store,
    run: str,
    label: str,
    eps: float | None,
    robust: int,
    *,
    clean: int | None = None,
    suite: str = "paper",
    surface: str = "sum",
    steps: int | None = None,
    restarts: int | None = None,
    params: dict | None = None,
    broken: list[int] | None = None,
    meta: dict | None = None,
    n: int = N,
) -> None:
    """One ``dml attack`` result on ``n`` samples (N unless given): ``clean`` of them right
    (all unless given), the first ``robust`` robust (or every sample but those in
    ``broken``)."""
    samples = np.arange(100, 100 + n)
    clean_ok = np.arange(n) < (n if clean is None else clean)
    rob = np.arange(n) < robust if broken is None else ~np.isin(np.arange(n), broken)
    rob &= clean_ok
    norm = "l2" if eps is None else "linf"
    df = pd.DataFrame(
        {
            "run": run,
            "checkpoint": _ckpt(store, run),
            "dataset": "digits",
            "sample": samples,
            "label": samples % 10,
            "attack": label,
            "suite": suite,
            "norm": norm,
            "eps": eps,
            "steps": steps,
            "step_size": None if steps is None else 2.5 * (eps or 0) / steps,
            "restarts": restarts,
            "targeted": False,
            "loss": "ce",
            "surface": surface,
            "decision": "vote",
            "eot": 1,
            "seed": 0,
            "surrogate": None,
            "cascade": False,
            "target": -1,
            "clean_pred": samples % 10,
            "adv_pred": np.where(rob, samples % 10, (samples + 1) % 10),
            **{f"member_{k}": samples % 10 for k in range(1, K + 1)},
            "clean_correct": clean_ok,
            "adv_correct": rob,
            "robust": rob,
            "skipped_by": "",
            "score_draws": 1,
            "clean_correct_rate": clean_ok.astype(float),
            "adv_correct_rate": rob.astype(float),
            "target_hit": False,
            "linf": 0.0 if eps is None else eps,
            "l2": 1.5,
            "seconds": 0.01,
        }
    )
    setting = {
        "run": run,
        "checkpoint": _ckpt(store, run),
        "dataset": "digits",
        "n": n,
        "seed": 0,
        "attack": label,
        "attack_name": label.split("-")[0],
        "params": params or {"eps": eps, "steps": steps, "restarts": restarts},
        "surface": surface,
        "decision": "vote",
        "eot": 1,
        "surrogate": None,
    }
    meta = {"warnings": [], "batch_size": 500, **(meta or {})}
    store.write_result("attack", run, setting, df, meta)
    x = np.linspace(0, 1, 64).tolist()
    examples = pd.DataFrame(
        {
            "sample": samples[:4],
            "label": samples[:4] % 10,
            "clean_pred": samples[:4] % 10,
            "adv_pred": (samples[:4] + 1) % 10,
            "shape": [[1, 8, 8]] * 4,
            "x": [x] * 4,
            "x_adv": [x[::-1]] * 4,
        }
    )
    store.write_result("adv-examples", run, setting, examples, {"warnings": []})


def _transfer(store: Store, run: str, accs: dict[str, int], targeted: bool) -> None:
    """``dml transfer`` rows from member:1: ``accs[scored]`` of N correct after the attack."""
    parts = []
    for scored, ok in accs.items():
        samples = np.arange(100, 100 + N)
        adv_ok = np.arange(N) < ok
        parts.append(
            pd.DataFrame(
                {
                    "sample": samples,
                    "label": samples % 10,
                    "source": "member:1",
                    "scored": scored,
                    "target": (samples + 3) % 10 if targeted else -1,
                    "clean_pred": samples % 10,
                    "adv_pred": np.where(adv_ok, samples % 10, (samples + 3) % 10),
                    "clean_correct": np.arange(N) < N - 1,  # 95 % benign everywhere
                    "adv_correct": adv_ok,
                    "target_hit": ~adv_ok if targeted else False,
                    "linf": 0.2,
                    "l2": 2.0,
                    "seconds": 0.01,
                }
            )
        )
    df = pd.concat(parts, ignore_index=True)
    for key, v in {
        "run": run,
        "checkpoint": _ckpt(store, run),
        "dataset": "digits",
        "attack": "pgd",
        "eps": 0.2,
        "targeted": targeted,
        "decision": "vote",
        "seed": 0,
    }.items():
        df[key] = v
    params = {
        "eps": 0.2,
        "steps": 10,
        "restarts": 1,
        "loss": "ce",
        "targeted": targeted,
        "step_size": None,
        "keep": "loss",
    }
    setting = {
        "run": run,
        "checkpoint": _ckpt(store, run),
        "dataset": "digits",
        "n": N,
        "seed": 0,
        "decision": "vote",
        "targeted": targeted,
        "kind": "transfer",
        "source": "member:1",
        "attack": "pgd",
        "params": params,
    }
    store.write_result("transfer", run, setting, df)


def _cw(store: Store, run: str, source: str, kappa: float, acc: int, l2: list[float]) -> None:
    """``dml transfer --cw-distortion`` rows: ``acc`` of N still right; fooled ones have ``l2``."""
    samples = np.arange(100, 100 + N)
    ok = np.arange(N) < acc
    dist = np.zeros(N)
    dist[acc:] = np.resize(l2, N - acc)
    df = pd.DataFrame(
        {
            "sample": samples,
            "label": samples % 10,
            "source": source,
            "scored": source,
            "target": -1,
            "clean_pred": samples % 10,
            "adv_pred": samples % 10,
            "vote": 0,
            **{f"member_{k}": samples % 10 for k in range(1, K + 1)},
            "clean_correct": True,
            "adv_correct": ok,
            "robust": ok,
            "fooled": ~ok,
            "linf": 0.1,
            "l2": dist,
            "seconds": 0.01,
        }
    )
    for key, v in {
        "run": run,
        "checkpoint": _ckpt(store, run),
        "dataset": "digits",
        "attack": "cw",
        "kappa": kappa,
        "targeted": False,
        "decision": "vote",
        "seed": 0,
    }.items():
        df[key] = v
    params = {"c": 1.0, "kappa": kappa, "steps": 100, "lr": 0.1, "targeted": False}
    setting = {
        "run": run,
        "checkpoint": _ckpt(store, run),
        "dataset": "digits",
        "n": N,
        "seed": 0,
        "decision": "vote",
        "targeted": False,
        "kind": "cw-distortion",
        "source": source,
        "attack": "cw",
        "params": params,
    }
    store.write_result("cw-distortion", run, setting, df)


def _others(store: Store, run: str, scores: np.ndarray) -> None:
    """clever, certify, gradients, surface, detect and detect-roc rows."""
    extra = {"dataset": "digits", "members": K, "head": "dml"}
    # ``scores`` are the score_labels: 0 = a wrong prediction, whose own score is positive
    # (0.7) and must not count as non-zero; the first sample has a capped fit
    wrong = scores == 0
    clever = pd.DataFrame(
        {
            "sample": np.arange(len(scores)),
            "idx": np.arange(len(scores)),
            "label": 0,
            "pred": np.where(wrong, 1, 0),
            "correct": ~wrong,
            "model": "sum",
            "score": np.where(wrong, 0.7, scores),
            "score_label": scores,
            "argmin_class": 2,
            "seconds": 0.1,
            **{
                c: [[0.0] * 10] * len(scores)
                for c in ("margin", "location", "observed_max", "weibull_shape")
            },
            **{c: [[0.0] * 10] * len(scores) for c in ("weibull_scale", "ks_pvalue")},
            "fit_status": [["capped"] + ["ok"] * 9] + [["ok"] * 10] * (len(scores) - 1),
        }
    )
    store.write_result(
        "clever",
        run,
        {
            "norm": "2",
            "radius": 2.0,
            "nb_batches": 20,
            "batch_size": 64,
            "pool_factor": 10,
            "c_init": [0.1, 1.0, 5.0, 10.0, 20.0, 50.0, 100.0],
            "fit": "profile-mle;rescaled-to-range;moment-start-per-shape;best-ks-then-nll",
            "max_offset": 1.0,
            "n": len(scores),
            "seed": 0,
            "target": "sum",
            "checkpoint": _ckpt(store, run),
        },
        clever,
        extra,
    )
    certify = pd.DataFrame(
        {
            "idx": np.arange(4),
            "label": 0,
            "predict": [0, 0, 0, -1],
            "radius": [0.1, 0.3, 0.8, 0.0],
            "correct": [1, 1, 0, 0],
            "seconds": 0.1,
            "p_a": 0.9,
            "smoothed": 0,
            "smoothed_correct": 1,
        }
    )
    store.write_result(
        "certify",
        run,
        {
            "sigma": 0.25,
            "n0": 100,
            "n": 1000,
            "alpha": 0.001,
            "n_samples": 4,
            "decision": "vote",
            "seed": 0,
            "head": "dml",
            "checkpoint": _ckpt(store, run),
        },
        certify,
        extra,
    )
    grads = pd.DataFrame(
        {
            "idx": np.arange(N),
            "label": 0,
            "member_a": 1,
            "member_b": 2,
            "cosine": np.linspace(-0.2, 0.4, N),
            "sign_cosine": np.linspace(0, 0.5, N),
            "norm_a": 1.0,
            "norm_b": 1.0,
        }
    )
    store.write_result(
        "gradients", run, {"n": N, "seed": 0, "checkpoint": _ckpt(store, run)}, grads, extra
    )
    r, t = np.meshgrid(np.linspace(0, 0.1, 5), np.linspace(-0.1, 0.1, 5), indexing="ij")
    surf = pd.concat(
        [
            pd.DataFrame(
                {
                    "idx": 7,
                    "label": 3,
                    "model": m,
                    "r": r.ravel(),
                    "theta": t.ravel(),
                    "loss": (i + 1) * r.ravel() + t.ravel() ** 2,
                }
            )
            for i, m in enumerate(["member:1", "member:2", "member:3", "sum"])
        ],
        ignore_index=True,
    )
    store.write_result(
        "surface", run, {"n": 1, "grid": 5, "seed": 0, "checkpoint": _ckpt(store, run)}, surf, extra
    )
    _detect(store, run)


def _detect(store: Store, run: str) -> None:
    """One vote and one uncertainty ``detect`` result (+ ``detect-roc``), each holding the
    rows of every attack: the benign and noisy rows once, then each attack's adversarials.

    vote, pgd: adversarials 0-14 flagged, 5-19 wrong -> 15-19 undetected and wrong (25%);
    adaptive: 10-19 flagged, all wrong -> 0-9 (50%); worst case per sample: 75%.
    uncertainty: samples 0-9 fit, 10-19 eval; benign lr_score 0.01 * (i mod 10) (the 5% FPR
    threshold is the fit half's highest benign score, 0.09); fgsm adversarials score 0.5
    (all detected), adaptive ones 0.05 (none), every adversarial wrong."""
    attacks = {
        "pgd": (lambda i: i < 15, lambda i: i >= 5),
        "adaptive": (lambda i: i >= 10, lambda i: True),
    }

    def row(i: int, kind: str, attack: str, flag: bool, wrong: bool, method: str) -> dict:
        return {
            "sample": i,
            "label": 1,
            "kind": kind,
            "attack": attack,
            "eps": 0.3,
            "method": method,
            "vote": 2 if wrong else 1,
            "dissent": int(flag),
            "uncertainty": 0.1 * (kind == "adversarial") + 0.01 * i,
            **{f"pred_member_{m}": 1 for m in range(1, K + 1)},
            **{f"flagged_nu_{nu}": bool(nu == K and flag) for nu in range(1, K + 1)},
            "linf": 0.3,
        }

    base = {
        "eps": 0.3,
        "draws": 1,
        "noise_sigma": 0.1,
        "seed": 0,
        "n": N,
        "checkpoint": _ckpt(store, run),
    }
    # vote
    rows = [row(i, kind, "", i < f, False, "vote") for kind, f in (("benign", 2), ("noisy", 3))
            for i in range(N)]  # fmt: skip
    for attack, (adv_flag, adv_wrong) in attacks.items():
        rows += [row(i, "adversarial", attack, adv_flag(i), adv_wrong(i), "vote") for i in range(N)]
    df = pd.DataFrame(rows).assign(half="all")
    setting = {"method": "vote", "attacks": list(attacks), **base, "head": "dml"}
    aucs = {"pgd": 0.875, "adaptive": 0.5}
    det_extra = {"aucs": aucs, "members": K, "dataset": "digits", "n_correct": N}
    store.write_result("detect", run, setting, df, det_extra)
    store.write_result("detect-roc", run, setting, _roc("vote", aucs), det_extra)
    # uncertainty: one frozen regression fit on fgsm + pgd, scored on fgsm and adaptive
    rows = [row(i, kind, "", False, False, "uncertainty") for kind in ("benign", "noisy")
            for i in range(N)]  # fmt: skip
    rows += [row(i, "adversarial", a, False, True, "uncertainty") for a in ("fgsm", "adaptive")
             for i in range(N)]  # fmt: skip
    df = pd.DataFrame(rows)
    df["half"] = np.where(df["sample"] < N // 2, "fit", "eval")
    score = {"benign": 0.01 * (df["sample"] % (N // 2)), "noisy": 0.02 + 0 * df["sample"]}
    df["lr_score"] = np.select(
        [df["kind"] == "benign", df["kind"] == "noisy", df["attack"] == "fgsm"],
        [score["benign"], score["noisy"], 0.5],
        0.05,
    )
    df["flagged_lr"] = df["lr_score"] >= 0.5
    setting = {"method": "uncertainty", "attacks": ["fgsm", "adaptive"], **base,
               "fit_attacks": ["fgsm", "pgd"], "head": "dml"}  # fmt: skip
    aucs = {"fgsm": 1.0, "adaptive": 0.6}
    det_extra = {**det_extra, "aucs": aucs, "fit_attacks": ["fgsm", "pgd"]}
    store.write_result("detect", run, setting, df, det_extra)
    store.write_result("detect-roc", run, setting, _roc("uncertainty", aucs), det_extra)


def _roc(method: str, aucs: dict[str, float]) -> pd.DataFrame:
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "method": method,
                    "attack": attack,
                    "eps": 0.3,
                    "fpr": [0.0, 0.1, 1.0],
                    "tpr": [0.0, 0.75, 1.0],
                    "threshold": [np.inf, 1.0, 0.0],
                    "auc": auc,
                }
            )
            for attack, auc in aucs.items()
        ],
        ignore_index=True,
    )


RECIPE = {
    "recipe": {"name": "fixture", "dataset": "digits", "seed": 0, "n": N},
    "train": {
        "baseline": {"baseline": True, "name": "fx-base", "members": K},
        "dml": {"name": "fx-dml", "members": K, "prior": "baseline"},
    },
    "paper": {
        "source": "the paper's MNIST tables",
        "whitebox": {
            "table": "Table 2",
            "baseline": {"benign": 98.79, "fgsm@0.2": 23.81, "pgd-10@0.2": 0.0, "cw": 0.0},
            "dml": {
                "benign": 93.66,
                "fgsm@0.2": 68.55,
                "pgd-10@0.2": 62.92,
                "cw": 85.0,
                "bim-10@0.2": 63.08,
            },
        },
        "transfer": {
            "table": "Table 4",
            "dml": {
                "benign": [93.66, 86.56, 69.57, 95.40],
                "untargeted": [58.24, 33.79, 44.96, 66.14],
                "targeted": [83.07, 58.24, 58.03, 84.53],
            },
        },
        "cw_distortion": {
            "table": "Table 5",
            "dml": {
                "accuracy": [66.0, 45.0, 0.0, 8.0, 1.0],
                "distortion": [2.31, 3.79, 1.34, 1.41, 1.52],
            },
        },
        "autoattack": {"table": "Table 7", "dml": {"benign": 93.66, "autoattack@0.2": 73.46}},
    },
}


def build_store(root: Path) -> Path:
    """The fixture store (runs fx-base and fx-dml; every result kind; the recipe JSON)."""
    store = Store(root)
    _run(
        store,
        "fx-base",
        "linear",
        {
            "vote": 98.0,
            "meta-vote": 98.0,
            "sum": 97.5,
            "mean-softmax": 97.0,
            "member:1": 96.0,
            "member:2": 97.0,
            "member:3": 98.0,
        },
    )
    _run(
        store,
        "fx-dml",
        "dml",
        {
            "vote": 95.5,
            "meta-vote": 95.0,
            "sum": 95.25,
            "mean-softmax": 95.0,
            "member:1": 90.0,
            "member:2": 91.0,
            "member:3": 92.0,
        },
    )
    for run, fgsm, pgd, cw in (("fx-base", 5, 0, 1), ("fx-dml", 14, 12, 17)):
        _attack(store, run, "fgsm", 0.2, fgsm, params={"eps": 0.2, "loss": "ce"})
        _attack(store, run, "pgd-10", 0.2, pgd, steps=10, restarts=1)
        _attack(store, run, "pgd-10", 0.3, max(pgd - 4, 0), steps=10, restarts=1)
        _attack(
            store,
            run,
            "cw-200",
            None,
            cw,
            params={"c": 1.0, "steps": 200, "lr": 0.01, "kappa": 0.0},
        )
    # The adaptive picture on fx-dml at eps 0.2: AutoAttack 10/20, two APGD surfaces that
    # break different samples; the worst case over all attacks keeps only the rest.
    _attack(
        store,
        "fx-dml",
        "autoattack-standard",
        0.2,
        10,
        suite="autoattack",
        params={"eps": 0.2, "version": "standard", "steps": 100, "square_queries": 5000,
                "recheck": True},
        # AutoAttack alone (on the sum, scored by the vote) left 12 robust; the re-check broke 2
        meta={"counts": {"aa_sum_wrong_vote_right": 1, "rechecked": 12, "recheck_broke": 2}},
    )  # fmt: skip
    _attack(
        store,
        "fx-dml",
        "apgd-ce",
        0.2,
        0,
        suite="adaptive",
        surface="members",
        steps=100,
        restarts=1,
        broken=[0, 1, 2, 13, 14],
    )
    _attack(
        store,
        "fx-dml",
        "apgd-dlr",
        0.2,
        0,
        suite="adaptive",
        surface="member:1",
        steps=100,
        restarts=1,
        broken=[3, 4, 5, 6, 13, 15],
    )
    # the stored worst case over every attack above, as `dml attack` keeps it
    for run in ("fx-base", "fx-dml"):
        refresh_worst_cases(store, open_run(run, store))
    _transfer(
        store, "fx-dml", {"ensemble": 13, "member:1": 4, "member:2": 16, "member:3": 15}, False
    )
    _transfer(
        store, "fx-dml", {"ensemble": 17, "member:1": 9, "member:2": 18, "member:3": 19}, True
    )
    _cw(store, "fx-dml", "ensemble", 0.0, 12, [2.0, 3.0])
    _cw(store, "fx-dml", "ensemble", 0.1, 8, [4.0])
    for k, (acc, l2) in enumerate([(0, [1.0]), (2, [1.5]), (1, [0.5, 1.5])], start=1):
        _cw(store, "fx-dml", f"member:{k}", 0.0, acc, l2)
    _others(store, "fx-dml", np.array([0.0, 0.0, 0.1, 0.3, 0.5, 0.9, 1.2, 2.0]))
    _others(store, "fx-base", np.array([0.0, 0.0, 0.0, 0.05, 0.1, 0.25]))
    save_recipe_json(root, validate_recipe(RECIPE, Path("recipes/fixture.toml")))
    return root


@pytest.fixture(scope="module")
def fixture_report(tmp_path_factory):
    root = build_store(tmp_path_factory.mktemp("report") / "art")
    report, files = render_report(root, None, ["markdown", "html", "latex", "json"])
    tables = {t.key: t for s in report.sections for t in s.tables}
    return root, report, files, tables


# -- tables: the numbers ------------------------------------------------------------------
def _row(t: tb.Table, model: str, attack: str) -> dict[str, object]:
    """The cells of the row (model, attack) of a table keyed by its first two columns."""
    (row,) = [r for r in t.rows if r[0] == model and r[1] == attack]
    return dict(zip(t.columns, row, strict=True))


def test_whitebox_table_numbers_and_paper_columns(fixture_report):
    _, _, _, tables = fixture_report
    t = tables["whitebox"]
    # one row per (model, attack), one column per eps, the paper's number in the same cell
    assert t.columns == ["Model", "Attack", "eps=0.2", "eps=0.3", "L2 (unbounded)"]
    assert _row(t, "Baseline", "clean (the same samples)")["eps=0.2"] == "100.00 (paper 98.79)"
    assert _row(t, "DML Ensemble", "FGSM")["eps=0.2"] == "70.00 (paper 68.55)"
    assert _row(t, "Baseline", "FGSM")["eps=0.2"] == "25.00 (paper 23.81)"
    pgd = _row(t, "DML Ensemble", "PGD-10")
    assert pgd["eps=0.2"] == "60.00 (paper 62.92)" and pgd["eps=0.3"] == "40.00"
    assert _row(t, "DML Ensemble", "CW-200 c=1")["L2 (unbounded)"] == "85.00 (paper 85.00)"
    # a paper attack we did not run is shown with our cell empty
    assert _row(t, "DML Ensemble", "BIM-10 (not run)")["eps=0.2"] == "- (paper 63.08)"
    # each model's last row is its stored worst case over every attack at that eps (the
    # paper's, AutoAttack and the adaptive suite): at 0.2 only samples 7..9 survive all
    dml = [r for r in t.rows if r[0] == "DML Ensemble"]
    assert dml[-1][1] == "worst case (every stored attack, per sample)"
    # monotone in eps: at 0.3 (PGD-10 leaves samples 0..7) every eps-0.2 attack counts too
    assert dml[-1][2:4] == ["15.00", "5.00"]
    base = [r for r in t.rows if r[0] == "Baseline"]
    assert base[-1][1].startswith("worst case") and base[-1][2] == "0.00"
    assert any("n = 20" in n for n in t.notes) and any("majority vote" in n for n in t.notes)
    assert any("PGD-10: 10 steps, step 0.25 x eps, 1 restart" in n for n in t.notes)


def test_stored_worst_case_is_the_per_sample_minimum(fixture_report):
    root, _, _, _ = fixture_report
    store = Store(root)
    (path,) = store.list_results("worst-case", "fx-dml")[:1] or [None]
    worst, meta = store.read_result(path)
    components = [store.read_result(p)[0] for p in store.list_results("attack", "fx-dml")]
    at = [f for f in components if f["eps"].iloc[0] == worst["eps"].iloc[0]]
    assert len(meta["components"]) == len(at) == 5  # fgsm, pgd-10, autoattack, 2 adaptive
    expected = np.logical_and.reduce([f["robust"].to_numpy() for f in at])
    assert worst["robust"].tolist() == expected.tolist()
    assert worst.loc[~worst["robust"], "broken_by"].str.len().gt(0).all()


def test_transfer_and_cw_tables(fixture_report):
    _, _, _, tables = fixture_report
    t = tables["transfer"]
    assert t.columns[:5] == ["Model", "eps", "Accuracy", "Ensemble", "paper"]
    benign, untargeted, targeted = t.rows
    assert benign[2] == "Benign" and benign[3] == pytest.approx(95.0) and benign[4] == 93.66
    assert untargeted[3] == pytest.approx(65.0) and untargeted[4] == 58.24
    assert untargeted[t.columns.index("Model 1")] == pytest.approx(20.0)
    assert untargeted[t.columns.index("Model 2")] == pytest.approx(80.0)
    assert targeted[t.columns.index("Model 3")] == pytest.approx(95.0)
    cw = tables["cw_distortion"]
    assert cw.columns[2:4] == ["Ensemble kappa=0", "paper"]
    acc, dist = cw.rows
    assert acc[2] == pytest.approx(60.0) and acc[3] == 66.0
    assert dist[2] == pytest.approx(2.5)  # fooled: 2, 3, 2, 3, ... mean 2.5
    assert dist[cw.columns.index("Ensemble kappa=0.1")] == pytest.approx(4.0)
    assert acc[cw.columns.index("Model 3")] == pytest.approx(5.0)
    assert dist[cw.columns.index("Model 3")] == pytest.approx(np.resize([0.5, 1.5], N - 1).mean())


def test_adaptive_worst_case_beside_paper_protocol(fixture_report):
    _, _, _, tables = fixture_report
    t = tables["adaptive"]
    row = next(r for r in t.rows if r[0] == "DML Ensemble" and r[1] == "0.2")
    cell = dict(zip(t.columns, row, strict=True))
    assert cell["paper protocol"] == pytest.approx(60.0)  # min(FGSM 70, PGD-10 60)
    assert cell["its strongest attack"] == "PGD-10"
    assert cell["AutoAttack (re-checked)"] == pytest.approx(50.0)
    # APGD-CE on members breaks 5 samples (75%), APGD-DLR on member:1 breaks 6 (70%)
    assert cell["strongest adaptive attack"] == pytest.approx(70.0)
    assert cell["which"] == "APGD-DLR on member:1"
    # robust under every stored attack at 0.2: samples 7..9 only (AA breaks 10..19)
    assert cell["worst case, all stored attacks"] == pytest.approx(15.0)
    assert cell["attacks; samples"] == "5 on n=20"
    assert cell["change vs paper (pp)"] == pytest.approx(-45.0)
    base = next(r for r in t.rows if r[0] == "Baseline" and r[1] == "0.2")
    assert base[t.columns.index("AutoAttack (re-checked)")] is None


def test_autoattack_benign_clever_certify_detect_tables(fixture_report):
    _, _, _, tables = fixture_report
    aa = tables["autoattack"]
    assert aa.columns == ["Model", "AutoAttack", "eps=0.2"]
    # as the paper scores it (12 robust of 20, beside the paper's number), then re-checked
    (paper_row, rechecked) = [r for r in aa.rows if r[0] == "DML Ensemble"]
    assert paper_row[1].startswith("standard, on the sum, scored by the vote")
    assert paper_row[2] == "60.00 (paper 73.46)"
    assert rechecked[1] == "+ decision-checked APGD-CE/APGD-T" and rechecked[2] == "50.00"
    assert any("honest AutoAttack number" in n for n in aa.notes)
    b = tables["benign"]
    assert b.cell("DML Ensemble", "member mean") == pytest.approx(91.0)
    assert b.cell("Baseline", "member range") == "96.00-98.00"
    cl = tables["clever"]
    assert cl.cell("DML Ensemble", "> 0") == 6 and cl.cell("DML Ensemble", "> 0.2") == 5
    assert cl.cell("Baseline", "median") == pytest.approx(0.025)
    assert cl.cell("DML Ensemble", "capped") == 1  # the first sample's capped fit is flagged
    ce = tables["certify"]
    assert ce.cell("DML Ensemble", "r=0") == pytest.approx(50.0)
    assert ce.cell("DML Ensemble", "r=0.25") == pytest.approx(25.0)
    assert ce.cell("DML Ensemble", "r=0.5") == 0.0
    de = tables["detect"]
    c = de.columns.index
    mine = [r for r in de.rows if r[0] == "DML Ensemble"]
    rows = {r[c("attack")]: r for r in mine if r[c("method")].startswith("vote")}
    assert list(rows) == ["adaptive", "pgd", "worst case"]
    pgd, adaptive, worst = rows["pgd"], rows["adaptive"], rows["worst case"]
    assert pgd[c("AUC")] == 0.875
    assert pgd[c("n")] == N  # the benign rows, stored once, count once
    assert pgd[c("FPR nu=K")] == pytest.approx(10.0)
    assert pgd[c("detected nu=K")] == pytest.approx(75.0)
    assert pgd[c("undetected+wrong nu=K")] == pytest.approx(25.0)
    assert adaptive[c("undetected+wrong nu=K")] == pytest.approx(50.0)
    assert worst[c("undetected+wrong nu=K")] == pytest.approx(75.0)
    # the uncertainty result: one frozen detector, threshold from the fit half's benign rows
    unc = {r[c("attack")]: r for r in mine if r[c("method")].startswith("uncertainty")}
    assert list(unc) == ["adaptive", "fgsm", "worst case"]
    assert unc["fgsm"][c("n")] == N // 2  # eval half only
    assert unc["fgsm"][c("LR detected @5% FPR")] == 100.0
    assert unc["adaptive"][c("LR detected @5% FPR")] == 0.0
    assert unc["adaptive"][c("LR undetected+wrong @5% FPR")] == 100.0
    assert unc["worst case"][c("LR undetected+wrong @5% FPR")] == 100.0
    assert unc["adaptive"][c("AUC")] == 0.6
    fit_notes = [n for n in de.notes if "fit once" in n]
    assert len(fit_notes) == 1 and "benign + noisy inputs vs fgsm, pgd adversarials" in fit_notes[0]
    assert "DML Ensemble" in fit_notes[0] and "Baseline" in fit_notes[0]
    assert "rdml" not in tables  # no R-DML run: skipped, not an error


def test_rendered_formats_carry_the_numbers(fixture_report):
    root, report, files, _ = fixture_report
    out = root / "report"
    assert {str(p.relative_to(out)) for p in files} == {
        "report.md",
        "report.html",
        "report.tex",
        "robustbench.json",
        "robustbench/fx-base.json",
        "robustbench/fx-dml.json",
    }
    md = (out / "report.md").read_text()
    assert "| DML Ensemble | FGSM | 70.00 (paper 68.55) | - | - |" in md
    assert "![CLEVER score distribution (paper Fig. 1, 7, 8)](figures/digits-clever.png)" in md
    assert "DML vs R-DML ensembles" in md and "no R-DML run" in md  # skipped with a note
    for f in (
        "clever",
        "surfaces",
        "roc",
        "uncertainty",
        "gradients",
        "training",
        "certify",
        "distortion",
        "examples",
        "transfer",
    ):
        png = out / "figures" / f"digits-{f}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", f
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 10 and 'src="figures/' not in html
    assert '<td class="txt">70.00 (paper 68.55)</td>' in html
    tex = (out / "report.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"$\epsilon$=0.2" in tex and r"\includegraphics" in tex
    assert "DML Ensemble & FGSM & 70.00 (paper 68.55)" in tex
    entries = json.loads((out / "robustbench.json").read_text())["entries"]
    dml = next(e for e in entries if e["name"] == "fx-dml")
    # the decision-checked number; AutoAttack alone as the paper scores it beside it
    assert dml["autoattack_acc"] == "50.00" and dml["autoattack_acc_sum_scored"] == "60.00"
    assert dml["clean_acc"] == "100.00" and dml["n_eval"] == N and not dml["unreliable"]
    assert json.loads((out / "robustbench" / "fx-dml.json").read_text()) == [dml]  # per eps
    assert dml["eps"] == "0.2" and dml["threat_model"] == "Linf" and dml["reported"] == "73.46"
    assert dml["number_forward_passes"] == 1 and dml["dataset"] == "digits"
    assert "3 x small-cnn" in dml["architecture"]
    base = next(e for e in entries if e["name"] == "fx-base")
    assert base["autoattack_acc"] is None


def test_eps_as_fraction_of_255_and_helpers():
    assert tb.attack_title("pgd-20x5", 8 / 255) == "PGD-20x5 eps=8/255"
    assert tb.attack_title("cw-200", None, 1.0) == "CW-200 c=1"
    assert tb.split_label("autoattack-rand") == ("autoattack", None, None)
    assert tb.fmt(1 / 3) == "0.33" and tb.fmt(None) == "-" and tb.fmt(float("nan")) == "-"


def test_report_of_a_store_with_runs_only_skips_the_rest(tmp_path, cli):
    store = Store(tmp_path / "art")
    _run(store, "only-dml", "dml", {"vote": 90.0})
    res = cli("report", tmp_path / "art", "--format", "html")
    assert res.code == 0, res.err
    assert (tmp_path / "art" / "report" / "report.html").is_file()
    assert "skipped" in res.out and "figure" in res.out
    figures = sorted(p.name for p in (tmp_path / "art" / "report" / "figures").iterdir())
    assert figures == ["digits-training.png"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "pdf"], "unknown report format 'pdf'"),
        (["--out", "FILE"], "is not a directory"),
    ],
)
def test_report_bad_input(tmp_path, cli, args, message):
    build = Store(tmp_path / "art")
    _run(build, "r", "dml", {"vote": 90.0})
    (tmp_path / "FILE").write_text("x")
    args = [str(tmp_path / "FILE") if a == "FILE" else a for a in args]
    res = cli("report", tmp_path / "art", *args)
    assert res.code == 2 and res.err.startswith("error:") and message in res.err
    assert len(res.err.strip().splitlines()) == 1
    assert not (tmp_path / "art" / "report").exists()


def test_report_of_a_missing_store(tmp_path, cli):
    res = cli("report", tmp_path / "nope")
    assert res.code == 2 and "does not exist" in res.err


def test_what_the_commands_compute_is_what_the_schema_names():
    """The rows the evaluation jobs compute on a tiny real model pass through their schemas
    unchanged, so fixtures built through :mod:`dmlcli.results` look like real results."""
    from dmlcli import results
    from dmlcli.eval import robustness as rob
    from dmlcli.eval import transfer as tr
    from dmlcli.models.io import Run

    run = Run("r", tiny_ensemble(members=K), "c" * 64, "digits")
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(6) % 10
    idx = torch.arange(6)
    spec = rob.AttackSpec("fgsm", "fgsm", {"eps": 0.1}, suite="paper")
    jobs = [
        rob.attack_job(run, spec, images, labels, idx, seed=0),
        tr.transfer_job(run, "member:1", "fgsm", {"eps": 0.1}, images, labels, idx, seed=0),
    ]
    for job in jobs:
        frames, _ = job.compute(0, 6, lambda fraction, info: None)
        rows = frames["rows"]
        pd.testing.assert_frame_equal(results.frame(job.kind, rows), rows)
        assert list(dict.fromkeys(rows[job.id_column])) == idx.tolist()
    examples = jobs[0].compute(0, 6, lambda fraction, info: None)[0]["examples"]
    results.frame("adv-examples", examples)


# -- HTML in a real browser --------------------------------------------------------------
CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs /usr/bin/chromium (apt-get install chromium) to render the HTML report headless",
)
def test_html_report_renders_in_headless_chromium(fixture_report, tmp_path):
    root, _, _, _ = fixture_report
    html = root / "report" / "report.html"
    shot = tmp_path / "shot.png"
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1400,3000",
        html.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:4] == b"\x89PNG"
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (3000, 1400)
    assert img.std() > 10  # tables and figures, not a blank page


@pytest.mark.skipif(
    shutil.which("pdflatex") is None,
    reason="needs pdflatex (apt-get install "
    "texlive-latex-base texlive-latex-recommended) to compile the LaTeX report",
)
def test_latex_report_compiles(fixture_report, tmp_path):
    root, _, _, _ = fixture_report
    out = tmp_path / "tex"
    shutil.copytree(root / "report", out)
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (out / "report.pdf").read_bytes()[:4] == b"%PDF"


# -- one run attacked on two sample sets ------------------------------------------------------
def _two_sample_set_store(root: Path, recipe_n: int | None) -> Path:
    """A baseline and a GAL run attacked (FGSM, PGD at eps 0.1) on n = 20; the GAL run also
    on n = 30 (as ``dml attack --n 20`` then ``--n 30`` leave it), with stored worst cases;
    with ``recipe_n`` a stored recipe whose evaluations use that n."""
    store = Store(root)
    benign = {"vote": 90.0, "meta-vote": 90.0, "sum": 90.0, "mean-softmax": 90.0}
    for name, defense in (("ss-base", "baseline"), ("ss-gal", "gal")):
        ens = tiny_ensemble(head="linear", members=K)
        ens.config = ens.config.replace(training={"epochs": 1, "defense": defense})
        save_ensemble(store.checkpoint_path(name), ens, {"benign": benign, "run": name})
    pgd = {"steps": 10, "restarts": 1}
    # n = 20: base FGSM 6, PGD 4 robust; GAL FGSM 10, PGD 8 robust
    for run, fgsm, pgd_robust in (("ss-base", 6, 4), ("ss-gal", 10, 8)):
        _attack(store, run, "fgsm", 0.1, fgsm, params={"eps": 0.1, "loss": "ce"})
        _attack(store, run, "pgd-10", 0.1, pgd_robust, **pgd)
    # n = 30 on GAL only: FGSM 27, PGD 24 robust (80%)
    _attack(store, "ss-gal", "fgsm", 0.1, 27, params={"eps": 0.1, "loss": "ce"}, n=30)
    _attack(store, "ss-gal", "pgd-10", 0.1, 24, n=30, **pgd)
    for run in ("ss-base", "ss-gal"):
        refresh_worst_cases(store, open_run(run, store))
    if recipe_n is not None:
        recipe = {
            "recipe": {"name": "two-sets", "dataset": "digits", "seed": 0, "n": recipe_n},
            "train": {
                "baseline": {"baseline": True, "name": "ss-base", "members": K},
                "gal": {"defense": "gal", "name": "ss-gal", "members": K},
            },
        }
        save_recipe_json(root, validate_recipe(recipe, Path("recipes/two-sets.toml")))
    return root


@pytest.mark.parametrize(
    ("recipe_n", "n", "gal_paper", "base_paper", "why"),
    [
        (None, 20, "40.00", "20.00", "the set most runs were evaluated on"),
        (30, 30, "80.00", None, "the recipe two-sets's"),
    ],
)
def test_report_of_a_run_attacked_on_two_sample_sets_uses_one(
    tmp_path, recipe_n, n, gal_paper, base_paper, why
):
    from dmlcli import api

    root = _two_sample_set_store(tmp_path / "art", recipe_n)
    out = api.report(artifacts=root, format=["markdown", "json"], out=tmp_path / "out")
    rendered = dict(zip(out.rows["item"], out.rows["rendered"], strict=False))
    assert tmp_path / "out" / "report.md" in out.files and out.problems == []
    assert rendered["defenses"] == "table" and rendered["defenses_seeds"] == "table"
    report, _ = render_report(root, tmp_path / "out2", ["markdown"])
    tables = {t.key: t for s in report.sections for t in s.tables}
    table = tables["defenses"]
    col = table.columns.index("paper protocol 0.1")
    cells = {row[0]: row[col] for row in table.rows}
    assert str(cells["gal"]).split(" ± ")[0] == gal_paper  # one set, never a mix of both
    assert cells["baseline"] == base_paper or str(cells["baseline"]).startswith(base_paper)
    (note,) = [x for x in table.notes if x.startswith("Samples")]
    assert f"n = {n}, seed 0 ({why}" in note
    other = 30 if n == 20 else 20
    assert f"left out: n = {other}, seed 0" in note
    seeds = tables["defenses_seeds"]
    assert any(f"n = {n}, seed 0" in x for x in seeds.notes)
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert f"n = {n}, seed 0 ({why}" in markdown
    # the white-box table keeps the other set's attacks as rows of their own, but the GAL
    # run's worst-case row is on the same one set
    white = tables["whitebox"]
    worst = _row(white, "ss-gal", "worst case (every stored attack, per sample)")
    assert worst["eps=0.1"] == gal_paper
    assert any(f"ss-gal's clean and worst-case rows: n = {n}, seed 0" in x for x in white.notes)
