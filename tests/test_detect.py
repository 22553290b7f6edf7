"""Detection (A.4, A.5, A.5.1): scores, ROC/AUC, the held-out regression (fit once on the
standard attacks, frozen, scored against every attack), the adaptive attack, and ``dml detect``
end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from dmlcli import results
from dmlcli.attacks import create_attack
from dmlcli.attacks.agreement import (
    AgreementPGD,
    agreement_loss,
    member_draws,
    runner_up,
    softmax_variance,
)
from dmlcli.errors import DmlError
from dmlcli.eval import detect as det
from dmlcli.files import read_parquet
from dmlcli.models.aggregate import REJECT, threshold_vote
from dmlcli.models.io import save_ensemble
from dmlcli.store import Store
from tests.helpers import tiny_ensemble


# -- scores and ROC ---------------------------------------------------------------------------
def test_auc_perfect_and_constant_scores_match_sklearn():
    positive = np.array([0, 0, 0, 1, 1, 0, 1, 0], dtype=bool)
    perfect = np.where(positive, 2.0, 1.0) + np.linspace(0, 0.1, 8)
    curve = det.roc(perfect, positive)
    assert curve.auc == 1.0 == roc_auc_score(positive, perfect)
    assert curve.tpr[-1] == 1.0 and curve.fpr[0] == 0.0
    const = det.roc(np.full(8, 3.0), positive)
    assert const.auc == 0.5 == roc_auc_score(positive, np.full(8, 3.0))
    flipped = det.roc(-perfect, positive)
    assert flipped.auc == 0.0
    with pytest.raises(DmlError):
        det.roc(perfect, np.ones(8, dtype=bool))


def test_dissent_and_flags_per_nu():
    # 3 members, 2 samples: sample 0 unanimous on class 1, sample 1 votes 0, 0, 2.
    logits = torch.full((3, 2, 3), -5.0)
    logits[:, 0, 1] = 1.0
    logits[0, 1, 0] = logits[1, 1, 0] = logits[2, 1, 2] = 1.0
    assert det.dissent(logits).tolist() == [0, 1]
    flags = det.flags_per_nu(logits)
    assert flags.tolist() == [[False, False], [False, False], [False, True]]
    for nu in (1, 2, 3):
        assert ((threshold_vote(logits, nu) == REJECT) == flags[nu - 1]).all()


def test_identical_members_never_flagged_at_unanimity():
    torch.manual_seed(0)
    logits = torch.randn(1, 500, 10).expand(5, 500, 10)  # every member says the same
    assert not det.flags_per_nu(logits)[4].any()
    assert (det.dissent(logits) == 0).all()
    probs_var = softmax_variance(logits[None])
    assert torch.allclose(probs_var, torch.zeros(500))


def test_softmax_variance_matches_numpy():
    torch.manual_seed(1)
    d = torch.randn(3, 4, 6, 5)  # T=3, K=4, B=6, C=5
    p = d.softmax(-1).reshape(12, 6, 5).numpy()
    expected = p.var(0).mean(-1)
    assert np.allclose(softmax_variance(d).numpy(), expected, atol=1e-7)


def test_checks_give_clear_errors():
    assert det.default_nu(5) == 3 and det.default_nu(4) == 3
    for bad in (0, 6):
        with pytest.raises(DmlError, match="between 1 and the number of members"):
            det.check_nu(bad, 5)
    with pytest.raises(DmlError, match="randomized head or at least 2 members"):
        det.check_method("uncertainty", 1, False)
    det.check_method("uncertainty", 1, True)
    det.check_method("uncertainty", 2, False)
    with pytest.raises(DmlError, match="choose one of fgsm, pgd, adaptive"):
        det.check_attacks(["pgd", "cw"])
    assert det.check_attacks(["adaptive", "fgsm", "adaptive"]) == ["fgsm", "adaptive"]
    assert det.check_fit_attacks(["pgd", "fgsm"]) == ["fgsm", "pgd"]
    for bad in (["cw"], ["adaptive"]):  # the adaptive attack is never fit on
        with pytest.raises(DmlError, match="--fit-attack .* choose fgsm or pgd"):
            det.check_fit_attacks(bad)
    with pytest.raises(DmlError, match="at least one --fit-attack"):
        det.check_fit_attacks([])
    with pytest.raises(DmlError, match="outside"):
        det.DetectSettings(eps=1.5).validate()


# -- the held-out logistic regression -----------------------------------------------------------
def test_split_keeps_a_sample_and_its_adversarial_together():
    samples = np.repeat(np.arange(10, 30), 3)
    fit = det.split_halves(samples, seed=3)
    assert fit.sum() == 30
    for s in np.unique(samples):
        assert len(set(fit[samples == s])) == 1
    with pytest.raises(DmlError, match="at least 2"):
        det.split_halves(np.array([4, 4, 4]), 0)


def _obs(values: np.ndarray, k: int = 2) -> det.Observation:
    n = len(values)
    logits = torch.zeros(k, n, 3)
    logits[..., 0] = 5.0
    return det.Observation(logits, torch.tensor(values, dtype=torch.float32))


def _pipeline_spy(monkeypatch) -> list[np.ndarray]:
    """Record the features of every fit of the regression's pipeline."""
    from sklearn.pipeline import Pipeline

    seen: list[np.ndarray] = []
    original = Pipeline.fit

    def spy(self, x, y=None, **kw):
        seen.append(np.asarray(x).copy())
        return original(self, x, y, **kw)

    monkeypatch.setattr(Pipeline, "fit", spy)
    return seen


def _detection(n: int = 40, seed: int = 7, attacks=("fgsm", "pgd", "adaptive"), **adv_u):
    """Uncertainty detection on constructed observations: benign/noisy low, FGSM/PGD high,
    the adaptive attack matching the clean uncertainty (it evades the detector)."""
    rng = np.random.default_rng(0)
    samples = np.arange(100, 100 + n)
    y = torch.zeros(n, dtype=torch.long)
    u = {
        "fgsm": rng.uniform(4e-3, 8e-3, n),
        "pgd": rng.uniform(5e-3, 9e-3, n),
        "adaptive": rng.uniform(1e-4, 2e-4, n),
        **adv_u,
    }
    benign = _obs(rng.uniform(1e-4, 2e-4, n))
    noisy = _obs(rng.uniform(1e-4, 3e-4, n))
    adversarial = {a: _wrong(u[a]) for a in ("fgsm", "pgd", "adaptive")}
    zero = torch.zeros(n)
    linf = {"noisy": zero, **{a: zero + 0.3 for a in adversarial}}
    return det.detection_rows(
        "uncertainty", 0.3, samples, y, benign, noisy, adversarial, linf, list(attacks),
        seed=seed,
    )  # fmt: skip


def _wrong(values: np.ndarray, k: int = 2) -> det.Observation:
    """Observations every member answers with class 1 (the label is 0: wrong, unanimous)."""
    n = len(values)
    logits = torch.zeros(k, n, 3)
    logits[..., 1] = 5.0
    return det.Observation(logits, torch.tensor(values, dtype=torch.float32))


def test_regression_is_fit_once_on_fit_half_standard_attacks_only(monkeypatch):
    seen = _pipeline_spy(monkeypatch)
    n = 40
    got = _detection(n)
    df, detector, fit = got.rows, got.detector, got.fit
    assert len(seen) == 1  # one fit for every attack, the adaptive one included
    # what it saw: fit-half benign + noisy and fit-half FGSM/PGD adversarials, nothing else
    assert len(seen[0]) == len(detector.fit_rows) == len(fit) == 4 * (n // 2)
    assert set(fit["half"]) == {"fit"}
    kinds = (fit["kind"] + ":" + fit["attack"]).value_counts().to_dict()
    expected = {"benign:": n // 2, "noisy:": n // 2}
    assert kinds == {**expected, "adversarial:fgsm": n // 2, "adversarial:pgd": n // 2}
    fit_samples = set(fit["sample"])
    eval_samples = set(df.loc[df["half"] == "eval", "sample"])
    assert fit_samples.isdisjoint(eval_samples) and len(eval_samples) == n - n // 2
    assert fit_samples == set(df.loc[df["half"] == "fit", "sample"])
    # the features it saw are those of exactly these rows
    rows = df.set_index(["sample", "kind", "attack"])
    u = rows.loc[list(zip(fit["sample"], fit["kind"], fit["attack"], strict=True)), "uncertainty"]
    assert np.array_equal(seen[0], det.uncertainty_features(u.to_numpy()))
    # the stored rows: benign and noisy once, one adversarial row per sample and attack
    assert len(df) == 5 * n and (df.loc[df["kind"] != "adversarial", "attack"] == "").all()
    assert results.detect_attacks(df) == ["fgsm", "pgd", "adaptive"]
    # the standard attacks are separable from the clean inputs: AUC 1 on the eval half
    for a in ("fgsm", "pgd"):
        ev = results.attack_rows(df[df["half"] == "eval"], a)
        assert got.rocs[a].auc == 1.0 == roc_auc_score(ev["kind"] == "adversarial", ev["lr_score"])
    assert got.rocs["adaptive"].auc < 0.75  # the adaptive one looks clean to this detector


def test_fit_attacks_not_evaluated_are_crafted_and_fit_on_but_not_stored(monkeypatch):
    seen = _pipeline_spy(monkeypatch)
    got = _detection(attacks=["adaptive"])
    assert len(seen) == 1
    assert set(got.fit.loc[got.fit["kind"] == "adversarial", "attack"]) == {"fgsm", "pgd"}
    assert results.detect_attacks(got.rows) == ["adaptive"] and list(got.rocs) == ["adaptive"]
    # the same detector as when every attack is evaluated: the adaptive rows score the same
    every = _detection()
    pick = lambda d: d[d["attack"] == "adaptive"]["lr_score"].to_numpy()  # noqa: E731
    assert np.array_equal(pick(got.rows), pick(every.rows))
    assert got.detector.params() == every.detector.params()


def test_one_frozen_detector_scores_every_attack():
    """The adaptive adversarials never move the detector: change them and every other row's
    score, the coefficients and the 5% FPR threshold stay; an adversarial that appears
    identically in two attacks' rows gets the same score."""
    n = 40
    base = _detection(n)
    shared = np.random.default_rng(0).uniform(4e-3, 8e-3, n)  # fgsm's values of _detection
    moved = _detection(n, adaptive=shared)
    assert base.detector.params() == moved.detector.params()
    other = lambda d: d[d["attack"] != "adaptive"]["lr_score"].to_numpy()  # noqa: E731
    assert np.array_equal(other(base.rows), other(moved.rows))
    assert results.fpr_threshold(base.rows, 0.05) == results.fpr_threshold(moved.rows, 0.05)
    df = moved.rows
    fgsm = df[df["attack"] == "fgsm"].set_index("sample")
    adaptive = df[df["attack"] == "adaptive"].set_index("sample")
    assert np.array_equal(fgsm["uncertainty"], adaptive["uncertainty"])
    assert np.array_equal(fgsm["lr_score"], adaptive["lr_score"])
    assert np.array_equal(fgsm["flagged_lr"], adaptive["flagged_lr"])
    # the stored coefficients reproduce every score
    p = moved.detector.params()
    f = det.uncertainty_features(df["uncertainty"].to_numpy())[:, 0]
    z = (f - p["mean"][0]) / p["scale"][0]
    expected = 1.0 / (1.0 + np.exp(-(p["coef"][0] * z + p["intercept"][0])))
    assert np.allclose(df["lr_score"], expected)


def test_worst_case_row_uses_one_detector_and_a_fit_half_threshold():
    n = 40
    got = _detection(n)
    df = got.rows
    threshold = results.fpr_threshold(df, 0.05)
    fit_benign = df[(df["half"] == "fit") & (df["kind"] == "benign")]["lr_score"]
    assert threshold == np.quantile(fit_benign, 0.95, method="higher")
    table = results.detector_table(df, 2, 0.05, {a: c.auc for a, c in got.rocs.items()})
    assert list(table["attack"]) == ["fgsm", "pgd", "adaptive", "worst case"]
    rows = table.set_index("attack")
    assert rows.loc["fgsm", "auc"] == 1.0 and rows.loc["fgsm", "detected_at"] == 100.0
    assert rows.loc["adaptive", "detected_at"] < 50.0
    # per sample of the eval half: any attack's adversarial under the one threshold and wrong
    ev = df[(df["half"] == "eval") & (df["kind"] == "adversarial")]
    lost = (ev["lr_score"] <= threshold) & (ev["vote"] != ev["label"])
    expected = 100.0 * lost.groupby(ev["sample"]).any().mean()
    assert rows.loc["worst case", "undetected_wrong_at"] == pytest.approx(expected)
    worst = rows.loc["worst case", "undetected_wrong_at"]
    assert worst >= rows.loc["adaptive", "undetected_wrong_at"]
    assert np.isnan(rows.loc["worst case", "auc"])
    # eval-half scores never move the threshold
    shifted = df.copy()
    shifted.loc[shifted["half"] == "eval", "lr_score"] += 0.5
    assert results.fpr_threshold(shifted, 0.05) == threshold


def test_nu_table_of_one_result_has_a_worst_case_row_per_nu():
    got = _detection(20)
    table = results.detect_nu_table(got.rows)
    assert list(table.columns[:2]) == ["nu", "attack"]
    assert len(table) == 2 * 4  # K = 2 thresholds x (3 attacks + worst case)
    worst = table[table["attack"] == "worst case"]
    assert list(worst["nu"]) == [1, 2] and (worst["undetected_wrong"] == 100.0).all()
    assert worst["fpr"].isna().all()
    one = results.detect_nu_table(_detection(20, attacks=["pgd"]).rows)
    assert list(one["attack"]) == ["pgd", "pgd"]  # a single attack: no worst case row


def test_vote_rows_columns_and_rates():
    n = 6
    samples = np.arange(n)
    y = torch.zeros(n, dtype=torch.long)
    benign = _obs(np.zeros(n), k=3)
    adv_logits = torch.zeros(3, n, 3)
    adv_logits[0, :, 1] = adv_logits[1, :, 1] = 5.0  # two members fooled to 1
    adv_logits[2, :3, 0] = 5.0  # member 3 correct on samples 0-2 ...
    adv_logits[2, 3:, 1] = 5.0  # ... and fooled too on 3-5 (unanimous)
    adv = det.Observation(adv_logits, torch.zeros(n))
    zero = torch.zeros(n)
    got = det.detection_rows(
        "vote", 0.1, samples, y, benign, benign, {"adaptive": adv},
        {"noisy": zero, "adaptive": zero},
    )  # fmt: skip
    df, curve = got.rows, got.rocs["adaptive"]
    assert got.detector is None and got.fit is None and (df["half"] == "all").all()
    assert {"pred_member_1", "pred_member_3", "flagged_nu_1", "flagged_nu_3"} <= set(df.columns)
    table = results.nu_table(df).set_index("nu")
    assert table.loc[3, "detected"] == 50.0 and table.loc[3, "undetected_wrong"] == 50.0
    assert table.loc[2, "detected"] == 0.0 and table.loc[2, "undetected_wrong"] == 100.0
    assert (table["benign_acc"] == 100.0).all() and (table["fpr"] == 0.0).all()
    # dissent: 0 on all negatives, 1 on half the adversarials -> AUC = 0.75
    assert curve.auc == pytest.approx(0.75)
    # two attacks in one result: benign rows once, each attack's ROC against all of them
    clean = det.Observation(benign.logits.clone(), torch.zeros(n))
    both = det.detection_rows(
        "vote", 0.1, samples, y, benign, benign, {"pgd": clean, "adaptive": adv},
        {"noisy": zero, "pgd": zero, "adaptive": zero},
    )  # fmt: skip
    assert len(both.rows) == 4 * n and list(both.rocs) == ["pgd", "adaptive"]
    assert both.rocs["adaptive"].auc == pytest.approx(0.75) and both.rocs["pgd"].auc == 0.5
    aucs = {a: c.auc for a, c in both.rocs.items()}
    table = results.detector_table(both.rows, 3, 0.05, aucs).set_index("attack")
    assert table.loc["pgd", "undetected_wrong"] == 0.0  # pgd's "adversarials" are right
    assert table.loc["adaptive", "undetected_wrong"] == 50.0
    assert table.loc["worst case", "undetected_wrong"] == 50.0
    roc = det.roc_frame("vote", 0.1, both.rocs)
    assert list(dict.fromkeys(roc["attack"])) == ["pgd", "adaptive"]
    assert roc.groupby("attack")["auc"].first().to_dict() == aucs


def test_operating_point_at_fpr_is_set_on_the_fit_half_only():
    """The threshold is the fit half's benign (1 - fpr) quantile: it flags at most 5% of the
    benign fit rows, and moving eval-half scores never moves it."""
    rng = np.random.default_rng(0)
    n = 400
    rows = []
    for half in ("fit", "eval"):
        for kind, loc in (("benign", 0.0), ("noisy", 0.5), ("adversarial", 2.0)):
            for i in range(n):
                rows.append(
                    {
                        "sample": i + (n if half == "eval" else 0),
                        "kind": kind,
                        "half": half,
                        "lr_score": float(rng.normal(loc, 1.0)),
                        "vote": 0,
                        "label": 0 if kind != "adversarial" else 1,
                    }
                )
    df = pd.DataFrame(rows)
    ev = results.flag_at_fpr(df, 0.05)
    assert set(ev["half"]) == {"eval"}
    fit_benign = df[(df["half"] == "fit") & (df["kind"] == "benign")]["lr_score"]
    threshold = np.quantile(fit_benign, 0.95, method="higher")
    assert (fit_benign > threshold).mean() <= 0.05
    assert ev["flagged_fpr"].equals(ev["lr_score"] > threshold)
    r = results.lr_rates_at_fpr(df, 0.05)
    assert 1.0 <= r["fpr"] <= 10.0 and r["detected"] > 50.0  # ~5%; ~TPR of a 2-sigma shift
    moved = df.copy()
    moved.loc[moved["half"] == "eval", "lr_score"] += 100.0
    assert results.flag_at_fpr(moved, 0.05)["flagged_fpr"].all()  # same threshold, all above it
    with pytest.raises(DmlError, match="--fpr"):
        results.flag_at_fpr(df, 1.0)


def test_worst_case_takes_any_attack_per_sample():
    """Attack A wins on samples 0-1, attack B on 1-2: the worst case is 3 of 4 samples, more
    than either attack alone; flagged or right answers never count."""

    def frame(flagged: list[bool], vote: list[int]) -> pd.DataFrame:
        benign = pd.DataFrame(
            {"sample": range(4), "kind": "benign", "flagged_nu_3": False, "vote": 0, "label": 0}
        )
        adv = pd.DataFrame(
            {
                "sample": range(4),
                "kind": "adversarial",
                "flagged_nu_3": flagged,
                "vote": vote,
                "label": 0,
            }
        )
        return pd.concat([benign, adv], ignore_index=True)

    a = frame([False, False, False, True], [1, 1, 0, 1])  # wins on 0, 1
    b = frame([True, False, False, False], [1, 2, 2, 0])  # wins on 1, 2
    assert results.worst_case_undetected_wrong([a], "flagged_nu_3") == 50.0
    assert results.worst_case_undetected_wrong([b], "flagged_nu_3") == 50.0
    assert results.worst_case_undetected_wrong([a, b], "flagged_nu_3") == 75.0
    assert results.worst_case_undetected_wrong([a, a], "flagged_nu_3") == 50.0


# -- the adaptive attack --------------------------------------------------------------------------
class Constructed(nn.Module):
    """Three linear members on 2 pixels around (0.5, 0.5), classes 0 (true), 1, 2.

    Member A has a large gain and dominates the summed logits, whose gradient pushes pixel 2
    *down*; members B and C only flip (to class 1) when pixel 2 goes *up*. PGD on the sum
    therefore fools A alone (B, C keep the vote right), while an attacker that pushes every
    member to class 1 (the runner-up of the sum) can fool all three within eps = 0.2.
    """

    num_members, randomized, trainable_sets = 3, False, [[], [], []]

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.flatten(1) - 0.5
        d1, d2 = d[:, 0], d[:, 1]
        zero = torch.zeros_like(d1) + 0 * self.dummy
        a = torch.stack([zero, 100 * d1 - 30 * d2 - 0.9, -100 * d1 - 1], -1)
        b = torch.stack([zero, 10 * d2 - 1, zero - 5], -1)
        return torch.stack([a, b, b.clone()])


def _undetected_wrong(model: nn.Module, x: torch.Tensor, y: torch.Tensor, nu: int) -> float:
    pred = threshold_vote(model(x).detach(), nu)
    return ((pred != REJECT) & (pred != y)).float().mean().item()


def test_adaptive_attack_beats_pgd_on_constructed_ensemble():
    model = Constructed()
    x = torch.full((8, 1, 1, 2), 0.5)
    y = torch.zeros(8, dtype=torch.long)
    assert (model(x).argmax(-1) == 0).all()
    assert runner_up(member_draws(model, x), y).tolist() == [1] * 8
    pgd = create_attack("pgd", eps=0.2, steps=40, keep="loss")(model, x, y)  # on the sum
    adaptive = AgreementPGD(eps=0.2, steps=40, seed=0)(model, x, y)
    for adv in (pgd, adaptive):
        assert (adv - x).abs().max() <= 0.2 + 1e-6
    assert (model(pgd)[0].argmax(-1) != 0).all()  # PGD did fool the dominant member ...
    for nu in (1, 2, 3):
        assert _undetected_wrong(model, pgd, y, nu) == 0.0  # ... but never the vote
        assert _undetected_wrong(model, adaptive, y, nu) == 1.0
    # the per-member margin zig-zags between members under sign steps: no random start here
    margin = AgreementPGD(eps=0.2, steps=40, loss="margin", random_start=False)(model, x, y)
    assert _undetected_wrong(model, margin, y, 3) == 1.0


class TwoRoutes(nn.Module):
    """Three identical members; class 0 is right, class 1 the runner-up of the sum but
    constant (unreachable), class 2 reachable by raising pixel 1 within eps = 0.2."""

    num_members, randomized, trainable_sets = 3, False, [[], [], []]

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = x.flatten(1)[:, 0] - 0.5
        one = torch.ones_like(d1) + 0 * self.dummy
        z = torch.stack([one, 0.5 * one, 10 * d1], -1)
        return torch.stack([z, z.clone(), z.clone()])


def test_adaptive_tries_more_targets_than_the_runner_up():
    model = TwoRoutes()
    x = torch.full((4, 1, 1, 2), 0.5)
    y = torch.zeros(4, dtype=torch.long)
    assert runner_up(member_draws(model, x), y).tolist() == [1] * 4
    one = AgreementPGD(eps=0.2, steps=10, targets=1)(model, x, y)
    two = AgreementPGD(eps=0.2, steps=10, targets=2)(model, x, y)
    assert _undetected_wrong(model, one, y, 3) == 0.0  # class 1 cannot be reached
    assert _undetected_wrong(model, two, y, 3) == 1.0  # class 2 can
    assert (two - x).abs().max() <= 0.2 + 1e-6
    with pytest.raises(DmlError, match="adaptive-targets"):
        AgreementPGD(eps=0.2, targets=0)


def test_agreement_loss_and_variance_term():
    logits = torch.tensor([[[4.0, 0.0, 0.0]], [[0.0, 4.0, 0.0]]])[None]  # T=1, K=2, B=1
    target = torch.tensor([1])
    ce = agreement_loss(logits, target, "ce")
    assert ce.item() == pytest.approx(2 * np.log(1 + 2 * np.exp(-4)) + 4, rel=1e-5)
    assert agreement_loss(logits, target, "margin", kappa=10).item() == pytest.approx(0.0)
    model = tiny_ensemble("rdml", members=2, head_sigma=0.5, head_samples=2)
    x = torch.rand(4, 1, 8, 8)
    y = torch.zeros(4, dtype=torch.long)
    torch.manual_seed(0)
    adv = AgreementPGD(eps=0.1, steps=3, var_weight=1.0, eot=3)(model, x, y)
    assert adv.shape == x.shape and (adv - x).abs().max() <= 0.1 + 1e-6
    with pytest.raises(DmlError):
        AgreementPGD(eps=0.1, loss="hinge")


# -- the command ----------------------------------------------------------------------------------
def _results(root) -> list:
    return sorted((root / "results").glob("*/detect*.parquet"))


def _split(files) -> tuple:
    """The one ``detect`` and the one ``detect-roc`` file of ``files``."""
    rows = [f for f in files if f.name.startswith("detect-") and "roc" not in f.name]
    rocs = [f for f in files if f.name.startswith("detect-roc-")]
    assert len(rows) == 1 and len(rocs) == 1, files
    return rows[0], rocs[0]


def test_cli_vote_writes_rows_and_roc_and_is_a_noop_after(cli, store_copy):
    args = ["detect", "digits-dml", "--artifacts", store_copy, "--n", "60", "--eps", "0.2"]
    args += ["--attack", "pgd", "--attack", "adaptive", "--steps", "5"]
    r = cli(*args)
    assert r.code == 0, r.err
    assert "threshold-nu vote detector" in r.out and "AUC" in r.out and "worst case" in r.out
    files = _results(store_copy)
    assert len(files) == 2  # one detect result with every attack, one detect-roc
    path, roc_path = _split(files)
    df, meta = read_parquet(path)
    assert meta["kind"] == "detect" and meta["setting"]["method"] == "vote"
    assert meta["setting"]["attacks"] == ["pgd", "adaptive"]
    assert "fit_attacks" not in meta["setting"]
    assert set(df["kind"]) == {"benign", "noisy", "adversarial"}
    assert results.detect_attacks(df) == ["pgd", "adaptive"]
    assert (df.loc[df["kind"] != "adversarial", "attack"] == "").all()
    n = meta["n_correct"]
    assert len(df) == 4 * n and (df["kind"] == "benign").sum() == n
    assert [f"flagged_nu_{v}" for v in range(1, 6)] == [
        c for c in df.columns if c.startswith("flagged_nu_")
    ]
    adv = df[df["kind"] == "adversarial"]
    assert adv["linf"].max() <= 0.2 + 1e-6
    assert (df[df["kind"] == "benign"]["vote"] == df[df["kind"] == "benign"]["label"]).all()
    assert not df["flagged_nu_1"].any()
    roc_df, roc_meta = read_parquet(roc_path)
    assert roc_meta["kind"] == "detect-roc" and roc_meta["setting"] == meta["setting"]
    assert {"fpr", "tpr", "threshold"} <= set(roc_df.columns)
    for attack in ("pgd", "adaptive"):
        part = results.attack_rows(df, attack)
        expected = roc_auc_score(part["kind"] == "adversarial", part["dissent"])
        assert meta["aucs"][attack] == pytest.approx(expected)
        assert (roc_df.loc[roc_df["attack"] == attack, "auc"] == meta["aucs"][attack]).all()
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = cli(*args)
    assert again.code == 0 and "already in" in again.out
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    # each attack's crafting is seeded by itself: PGD alone gives the same adversarials
    alone = cli(*args[:-6], "--attack", "pgd", "--steps", "5")
    assert alone.code == 0, alone.err
    new = [f for f in _results(store_copy) if f not in files]
    pgd_only, _ = read_parquet(_split(new)[0])
    cols = ["sample", "vote", "dissent", "uncertainty", "linf"]
    pd.testing.assert_frame_equal(
        pgd_only.loc[pgd_only["attack"] == "pgd", cols].reset_index(drop=True),
        adv.loc[adv["attack"] == "pgd", cols].reset_index(drop=True),
    )


def test_cli_uncertainty_adaptive_only_is_scored_by_the_detector_fit_on_fgsm_pgd(cli, store_copy):
    args = ["detect", "digits-dml", "--artifacts", store_copy, "--method", "uncertainty"]
    args += ["--n", "40", "--attack", "adaptive", "--steps", "3"]
    r = cli(*args)
    assert r.code == 0, r.err
    assert "fit once on fgsm, pgd" in r.out and "det @5%" in r.out
    files = _results(store_copy)
    path, roc_path = _split(files)
    df, meta = read_parquet(path)
    s = meta["setting"]
    assert s["attacks"] == ["adaptive"] and s["fit_attacks"] == ["fgsm", "pgd"]
    assert s["keep"] == "loss"  # PGD was crafted for the fit: its parameters are identity
    assert results.detect_attacks(df) == ["adaptive"]
    assert set(df["half"]) == {"fit", "eval"}
    n, half = meta["n_correct"], meta["n_correct"] // 2
    # the regression saw the fit half's clean inputs and FGSM/PGD adversarials, no adaptive
    assert meta["lr_fit_rows"] == {
        "benign": half, "noisy": half, "adversarial:fgsm": half, "adversarial:pgd": half
    }  # fmt: skip
    assert set(meta["lr_fit_samples"]) == set(df.loc[df["half"] == "fit", "sample"])
    assert len(meta["lr_fit_samples"]) == half and len(df) == 3 * n
    assert set(meta["detector"]) == {"mean", "scale", "coef", "intercept"}
    roc_df, _ = read_parquet(roc_path)
    assert set(roc_df["attack"]) == {"adaptive"}
    ev = df[df["half"] == "eval"]
    assert meta["aucs"]["adaptive"] == pytest.approx(
        roc_auc_score(ev["kind"] == "adversarial", ev["lr_score"])
    )
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = cli(*args)
    assert again.code == 0 and "already in" in again.out
    assert [f.stat().st_mtime_ns for f in _results(store_copy)] == mtimes
    assert not list((store_copy / "results").glob("*/.parts/*"))


def test_cli_uncertainty_with_swapped_rdml_head(cli, store_copy):
    r = cli(
        "detect", "digits-dml", "--artifacts", store_copy, "--method", "uncertainty",
        "--head", "rdml", "--head-sigma", "0.5", "--draws", "4", "--eot", "2",
        "--attack", "fgsm", "--attack", "adaptive", "--fit-attack", "fgsm",
        "--n", "60", "--steps", "3", "--eps", "0.2",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert "LR det" in r.out and "worst case" in r.out
    path, _ = _split(_results(store_copy))
    df, meta = read_parquet(path)
    assert meta["setting"]["head"] == "rdml" and meta["setting"]["draws"] == 4
    assert meta["setting"]["fit_attacks"] == ["fgsm"] and "keep" not in meta["setting"]
    assert set(df["half"]) == {"fit", "eval"}
    fit_samples = set(meta["lr_fit_samples"])
    assert fit_samples == set(df.loc[df["half"] == "fit", "sample"])
    assert set(meta["lr_fit_rows"]) == {"benign", "noisy", "adversarial:fgsm"}
    assert (df["uncertainty"] > 0).all()


def _save(ensemble, root, name: str) -> None:
    store = Store(root)
    save_ensemble(store.checkpoint_path(name), ensemble)


def test_cli_bad_input_exits_2_and_writes_nothing(cli, store_copy, tmp_path):
    from dmlcli.data import eval_indices, load_dataset
    from dmlcli.models.config import resolve_config
    from dmlcli.models.ensemble import Ensemble

    base = ["detect", "digits-dml", "--artifacts", store_copy, "--n", "20", "--steps", "2"]
    bad = [
        (["--nu", "0"], "--nu must be between 1"),
        (["--nu", "6"], "--nu must be between 1"),
        (["--eps", "1.5"], "outside [0, 1]"),
        (["--attack", "cw"], "unknown attack"),
        (["--fit-attack", "cw"], "unknown --fit-attack"),
        (["--method", "uncertainty", "--fit-attack", "adaptive"], "unknown --fit-attack"),
        (["--method", "entropy"], "unknown detection method"),
        (["--fpr", "0"], "--fpr must be in (0, 1)"),
        (["--fpr", "1.5"], "--fpr must be in (0, 1)"),
    ]
    for extra, message in bad:
        r = cli(*base, *extra)
        assert r.code == 2 and message in r.err and "Traceback" not in r.err, (extra, r.err)
        assert len(r.err.strip().splitlines()) == 1
    # one member, deterministic head: no variance to measure
    config = resolve_config("digits", members=2, head="linear")
    config = config.replace(members=1, trainable_sets=((),))
    _save(Ensemble(config).eval(), store_copy, "single")
    r = cli("detect", "single", "--artifacts", store_copy, "--method", "uncertainty")
    assert r.code == 2 and "at least 2 members" in r.err
    # a model that always answers one class, on a sample of another class: nothing correct
    _, y = load_dataset("digits", "test")
    label = int(y[eval_indices(len(y), 1, 0)][0])
    config = resolve_config("digits", members=2, head="linear")
    wrong = Ensemble(config).eval()
    with torch.no_grad():
        for name, p in wrong.named_parameters():
            p.zero_()
            if name.endswith("classifier__3__bias"):
                p[:, (label + 1) % 10] = 5.0
    _save(wrong, store_copy, "wrong")
    r = cli("detect", "wrong", "--artifacts", store_copy, "--n", "1")
    assert r.code == 2 and "classified correctly" in r.err
    assert _results(store_copy) == []


def test_api_detect_returns_the_operating_points_and_aucs_as_fields(store_copy):
    from dmlcli import api
    from dmlcli.api.detection import DetectOutcome
    from dmlcli.runs import open_run

    out = api.detect("digits-dml", method="uncertainty", attack="pgd", n=20, steps=2,
                     fpr=0.1, artifacts=store_copy)  # fmt: skip
    assert isinstance(out, DetectOutcome) and out.rows.attrs == {} and len(out.rows)
    k = open_run("digits-dml", Store(store_copy)).num_members
    assert out.method == "uncertainty" and out.eps == pytest.approx(0.3) and out.fpr == 0.1
    assert out.nu == k // 2 + 1
    assert out.attacks == ["pgd"] and out.fit_attacks == ["fgsm", "pgd"]
    [result] = out.results
    assert result.kind == "detect" and result.status == "new"
    assert "pgd" in out.aucs and out.aucs == result.meta["aucs"]
    vote = api.detect("digits-dml", attack=["fgsm"], nu=1, n=20, artifacts=store_copy)
    assert vote.method == "vote" and vote.fit_attacks == [] and vote.attacks == ["fgsm"]
    assert vote.nu == 1 and vote.new_files == [vote.results[0].path]
