"""``dml check``: sanity checks for gradient masking and failed attacks (Carlini et al. 2019,
AutoAttack's checks, Pintor et al. 2022) on modules, on synthetic evidence and end to end."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from dmlcli import api, results
from dmlcli.attacks import Objective, Trace, create_attack
from dmlcli.data import dataset_info, eval_set, to_float
from dmlcli.errors import DmlError
from dmlcli.eval import check as chk
from dmlcli.runs import open_run
from dmlcli.store import Store
from tests.helpers import tree_listing

#: Small budgets that keep every test to a few seconds on two CPU cores.
FAST = {"steps": 10, "queries": 100}


class Rounded(nn.Module):
    """A deliberately masked model: inputs quantized to 5 levels (``round(4x) / 4``) before
    the ensemble, so no gradient reaches the input (``torch.round`` has zero derivative)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.num_members = inner.num_members
        self.trainable_sets = inner.trainable_sets
        self.randomized = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 4) / 4)


def _by_check(rows: pd.DataFrame) -> dict[str, str]:
    return dict(zip(rows["check"], rows["status"], strict=True))


@pytest.fixture(scope="module")
def digits(trained_store):
    """(digits-dml, digits-baseline, x, y): 40 seeded test samples of the trained store."""
    store = Store(trained_store)
    images, labels, idx = eval_set("digits", 40, 0)
    dml, base = open_run("digits-dml", store), open_run("digits-baseline", store)
    return dml.model, base.model, to_float(images[idx]), labels[idx]


# -- settings ----------------------------------------------------------------------------------
def test_settings_are_checked_and_the_large_eps_follows_the_registry():
    assert chk.default_large_eps(dataset_info("digits"), 0.2) == 0.5
    assert chk.default_large_eps(dataset_info("cifar10"), 8 / 255) == pytest.approx(0.124)
    assert chk.default_large_eps(dataset_info("digits"), 0.6) == 1.0  # at least twice eps
    s = chk.CheckSettings(eps=0.2, large_eps=0.5).validate()
    assert s.sweep[chk.SWEEP_AT_EPS] == 0.2 and s.sweep[-1] == 0.5
    assert list(s.sweep) == sorted(s.sweep)
    for bad, match in (
        ({"eps": 0.0, "large_eps": 0.5}, "above 0"),
        ({"eps": 0.3, "large_eps": 0.2}, "--large-eps"),
        ({"eps": 0.1, "large_eps": 0.5, "steps": 0}, "--steps"),
        ({"eps": 0.1, "large_eps": 0.5, "queries": 0}, "--queries"),
    ):
        with pytest.raises(DmlError, match=match):
            chk.CheckSettings(**bad).validate()


# -- thresholds on synthetic evidence ---------------------------------------------------------
def _evidence(n: int = 100, **override: object) -> tuple[pd.DataFrame, chk.CheckSettings]:
    """Per-sample evidence of an honest model: 90% clean, PGD 10%, FGSM 50%, large eps 0%."""
    s = chk.CheckSettings(eps=0.2, large_eps=0.5)
    rng = np.arange(n)
    cols: dict[str, object] = {
        "sample": rng,
        "label": rng % 10,
        "clean_correct": rng < 90,
        "robust_fgsm": rng < 50,
        "robust_pgd": rng < 10,
        "robust_pgd2": rng < 10,
        "robust_blackbox": rng < 10,
        "logit_change": np.zeros(n),
        "decision_change": np.zeros(n, dtype=bool),
        "grad_sum": np.ones(n),
        "grad_dlr_sum": np.ones(n),
        "robust_traced": rng < 10,
        "silent_success": np.zeros(n, dtype=bool),
        "loss_change": np.where(rng < 90, 0.0, np.nan),  # wrong samples are not attacked
    }
    for i, top in enumerate((80, 60, 10, 3, 0)):  # eps/4, eps/2, eps, halfway, large eps
        cols[f"robust_sweep_{i}"] = rng < top
    cols.update(override)
    return pd.DataFrame(cols), s


def test_an_honest_evaluation_passes_every_check():
    ev, s = _evidence()
    rows, meta = chk.summarize(ev, s)
    assert set(rows["status"]) == {"pass"}, rows.to_string()
    assert meta["sweep"]["robust"] == [90.0, 80.0, 60.0, 10.0, 3.0, 0.0]
    assert rows.set_index("check").loc["iterative vs single-step", "value"] == -40.0


def test_each_check_flags_its_failure():
    n = 100
    rng = np.arange(n)
    ev, s = _evidence(
        robust_pgd=rng < 30,  # PGD leaves 30%, FGSM 50%... but 5 samples only FGSM breaks
        robust_fgsm=(rng < 25) | ((rng >= 30) & (rng < 50)),
        robust_pgd2=rng < 20,  # doubling the budget gains 10 points
        robust_blackbox=rng < 15,  # RayS breaks 5 samples the white-box attacks left robust
        robust_sweep_3=rng < 12,
        robust_sweep_4=rng < 40,  # the large eps leaves 40% and accuracy rises
        grad_sum=np.where(rng < 5, 0.0, 1.0),  # 5 zero gradients (CE saturation: DLR > 0)
        logit_change=np.full(n, 1e-3),  # a randomized model
        decision_change=rng < 7,
    )
    ev["robust_sweep_2"] = ev["robust_pgd"]
    rows, meta = chk.summarize(ev, s)
    status = _by_check(rows)
    value = dict(zip(rows["check"], rows["value"], strict=True))
    assert status["iterative vs single-step, per sample"] == "warn" and meta["samples"][
        "fgsm_not_pgd"
    ] == [25, 26, 27, 28, 29]
    assert status["more budget"] == "warn" and value["more budget"] == 10.0
    assert status["large eps"] == "fail" and value["large eps"] == 40.0
    assert status["monotone in eps"] == "warn" and value["monotone in eps"] == 28.0
    assert status["black-box vs white-box"] == "fail" and value["black-box vs white-box"] == 5.0
    assert meta["samples"]["blackbox_only"] == [15, 16, 17, 18, 19]
    assert status["zero gradients: sum"] == "warn"  # 5 of 90 correct: above 1%, below 10%
    assert "saturates" in rows.set_index("check").loc["zero gradients: sum", "detail"]
    assert status["randomness"] == "warn" and value["randomness"] == 7.0
    # PGD weaker than FGSM by more than 10 points fails
    ev2, _ = _evidence(robust_pgd=np.arange(n) < 70)
    assert _by_check(chk.summarize(ev2, s)[0])["iterative vs single-step"] == "fail"
    # one flat step of the eps sweep is noise; a plateau (two steps, no sample falls) warns
    ev3, _ = _evidence(robust_sweep_0=np.arange(n) < 90)
    assert _by_check(chk.summarize(ev3, s)[0])["monotone in eps"] == "pass"
    ev4, _ = _evidence(robust_sweep_0=np.arange(n) < 90, robust_sweep_1=np.arange(n) < 90)
    rows = chk.summarize(ev4, s)[0].set_index("check")
    assert rows.loc["monotone in eps", "status"] == "warn"
    assert "no sample falls from eps 0 to 0.1" in rows.loc["monotone in eps", "detail"]


def test_each_indicator_of_attack_failure_flags_its_failure():
    """Pintor et al.'s silent success and incomplete optimization on synthetic evidence of
    the traced PGD (keep='loss'): 10 samples robust to it, 80 broken, 10 wrong."""
    n = 100
    rng = np.arange(n)
    change = np.where(rng < 90, 0.0, np.nan)
    change[:5] = 0.2  # 5 robust samples whose best loss still rose by 20% of its range
    change[10:13] = 0.9  # silent successes: the attack found an adversarial, not incomplete
    change[50:90] = 0.9  # broken samples: a rising loss there is no failure
    ev, s = _evidence(
        robust_traced=rng < 13,
        silent_success=(rng >= 10) & (rng < 13),  # crossed, yet the returned point is right
        loss_change=change,
    )
    rows, meta = chk.summarize(ev, s)
    by = rows.set_index("check")
    assert by.loc["silent success", "status"] == "warn"
    assert by.loc["silent success", "value"] == 3.0 and by.loc["silent success", "threshold"] == 0
    assert meta["samples"]["silent_success"] == [10, 11, 12]
    assert by.loc["silent success", "detail"].startswith("3 of 100 samples")
    assert by.loc["incomplete optimization", "status"] == "warn"
    assert by.loc["incomplete optimization", "value"] == 5.0
    assert by.loc["incomplete optimization", "threshold"] == 2.0
    assert meta["samples"]["incomplete"] == [0, 1, 2, 3, 4]
    assert by.loc["incomplete optimization", "detail"].startswith("5 of the 10 samples")
    # the other checks do not move
    new = ("silent success", "incomplete optimization")
    others = {k: v for k, v in _by_check(rows).items() if k not in new}
    assert len(others) == len(rows) - 2 and set(others.values()) == {"pass"}
    # two samples of 100 sit on the threshold (pass); at the tolerance itself a trace is flat
    change2 = np.where(rng < 90, 0.0, np.nan)
    change2[:2], change2[2:4] = 0.2, s.thresholds.incomplete_tolerance
    rows2 = chk.summarize(_evidence(loss_change=change2)[0], s)[0].set_index("check")
    assert rows2.loc["incomplete optimization", "status"] == "pass"
    assert rows2.loc["incomplete optimization", "value"] == 2.0
    # evidence without the indicator columns (parts of an older check) has no such rows
    old = ev.drop(columns=["robust_traced", "silent_success", "loss_change"])
    assert "silent success" not in set(chk.summarize(old, s)[0]["check"])


def test_loss_change_is_the_rise_of_the_running_best_over_the_last_iterates():
    rising = np.arange(21.0)  # a loss still climbing: the last 10% (3 iterates) rose 2 of 20
    assert chk.loss_change(rising, 0.1) == pytest.approx(0.1)
    flat_end = np.r_[np.arange(10.0), np.full(11, 9.0)]
    assert chk.loss_change(flat_end, 0.1) == 0.0
    oscillating = np.r_[np.arange(10.0), [9.0, 8.0] * 5 + [9.0]]  # best reached, then zigzag
    assert chk.loss_change(oscillating, 0.1) == 0.0
    assert chk.loss_change(np.full(5, 3.0), 0.1) == 0.0  # no range
    assert chk.loss_change(np.array([1.0, 2.0, np.nan, np.nan]), 0.1) == 1.0  # left the batch
    assert chk.loss_change(np.array([1.0]), 0.1) == 0.0


def test_one_sample_never_decides_a_small_evaluation():
    ev, s = _evidence(robust_pgd2=np.arange(100) < 9)  # 1 of 100 samples: below 2 points
    assert _by_check(chk.summarize(ev, s)[0])["more budget"] == "pass"
    small = ev.iloc[:30].copy()
    small["robust_pgd"] = np.arange(30) < 10
    small["robust_pgd2"] = np.arange(30) < 9  # 3.3 points = one sample of 30
    rows = chk.summarize(small, s)[0].set_index("check")
    assert rows.loc["more budget", "status"] == "pass"
    assert rows.loc["more budget", "threshold"] == pytest.approx(100 / 30)


def test_checks_make_the_rows_in_order_and_a_new_check_is_one_function(monkeypatch):
    """summarize is a loop over CHECKS: the rows come in its order, and a check appended to
    it is a row (and its samples a metadata entry) without touching summarize."""
    ev, s = _evidence()
    rows, meta = chk.summarize(ev, s)
    assert list(rows["check"]) == [
        "iterative vs single-step",
        "iterative vs single-step, per sample",
        "more budget",
        "silent success",
        "incomplete optimization",
        "large eps",
        "monotone in eps",
        "black-box vs white-box",
        "zero gradients: sum",
        "randomness",
    ]
    assert len({key for key, _ in chk.CHECKS}) == len(chk.CHECKS)
    assert all(check.__doc__ for _, check in chk.CHECKS)

    def odd_labels(ev: pd.DataFrame, s: chk.CheckSettings) -> list[chk.Finding]:
        odd = ev["label"] % 2 == 1
        samples = {"odd_labels": [int(v) for v in ev.loc[odd, "sample"][:3]]}
        return [chk.Finding("odd labels", "warn", 50.0, 0.0, "a throwaway check.", samples)]

    monkeypatch.setattr(chk, "CHECKS", (*chk.CHECKS, ("odd_labels", odd_labels)))
    rows2, meta2 = chk.summarize(ev, s)
    assert rows2.iloc[:-1].equals(rows)
    assert rows2.iloc[-1].tolist() == ["odd labels", "warn", 50.0, 0.0, "a throwaway check."]
    assert meta2["samples"] == {**meta["samples"], "odd_labels": [1, 3, 5]}
    assert meta2["sweep"] == meta["sweep"]


# -- modules -----------------------------------------------------------------------------------
def test_a_masked_ensemble_fails_the_gradient_check_and_another(digits):
    dml, base, x, y = digits
    s = chk.CheckSettings(eps=0.2, large_eps=0.5, **FAST).validate()
    rows = chk.check_model(Rounded(dml), x[:30], y[:30], s, seed=0, baseline=base)
    status = _by_check(rows)
    for surface in ("sum", "mean-softmax", "members"):
        assert status[f"zero gradients: {surface}"] == "fail", rows.to_string()
    assert (
        "no gradient reaches the input"
        in rows.set_index("check").loc["zero gradients: sum", "detail"]
    )
    # RayS queries only the vote: it breaks samples the gradient attacks cannot touch
    assert status["black-box vs white-box"] == "fail", rows.to_string()
    assert status["randomness"] == "pass"
    assert status["baseline broken"] == "pass"  # the attacks do break the undefended baseline


def test_a_plain_dml_ensemble_passes_gradient_randomness_and_iterative_checks(digits):
    """The trained digits-dml: no zero gradients on any surface, deterministic, PGD at least
    as strong as FGSM overall and per sample. (Its large eps, eps sweep and black-box checks
    pass too on this store; the budget check depends on the small budget used here.)"""
    dml, _, x, y = digits
    s = chk.CheckSettings(eps=0.2, large_eps=0.5, **FAST).validate()
    rows = chk.check_model(dml, x, y, s, seed=0)
    status = _by_check(rows)
    passing = [
        "zero gradients: sum",
        "zero gradients: mean-softmax",
        "zero gradients: members",
        "randomness",
        "iterative vs single-step",
        "iterative vs single-step, per sample",
        "large eps",
    ]
    assert all(status[c] == "pass" for c in passing), rows.to_string()
    assert set(rows["status"]) <= set(chk.STATUSES)
    assert "baseline broken" not in status and "transfer vs white-box" not in status
    assert {"silent success", "incomplete optimization"} <= set(status)


def test_a_randomized_head_asks_for_eot(digits):
    dml, _, x, y = digits
    noisy = dml.with_head("rdml", 0.5, 4).eval()
    s = chk.CheckSettings(eps=0.2, large_eps=0.5, steps=2, queries=10, eot=2).validate()
    rows = chk.check_model(noisy, x[:8], y[:8], s, seed=0).set_index("check")
    assert rows.loc["randomness", "status"] == "warn"
    assert "EOT" in rows.loc["randomness", "detail"]


# -- the command -------------------------------------------------------------------------------
def test_the_command_is_the_api_settings_and_shows_in_a_few_lines():
    """Every field of api.check's settings is one ``dml check`` option (same name, order and
    default as the API's keyword), and the command's closing table is a short ``show``."""
    import typer

    from dmlcli.api.checks import CheckSettings
    from dmlcli.cli import check as cli_check
    from dmlcli.cli.app import app

    assert api.check.settings is CheckSettings
    fields = CheckSettings.declared()
    params = inspect.signature(api.check).parameters
    assert [f.name for f in fields] == [p for p in params if p not in ("settings", "progress")]
    options = {p.name: p for p in typer.main.get_command(app).commands["check"].params}
    assert list(options) == [f.name for f in fields]
    for f in fields:
        if f.name == "run":
            assert options["run"].required and params["run"].default is inspect.Parameter.empty
            continue
        assert options[f.name].opts == ["--" + f.name.replace("_", "-")], f.name
        assert options[f.name].default == params[f.name].default == f.default, f.name
    assert params["n"].default == 200 and params["seed"].default == 0
    assert params["decision"].default == "vote"
    node = ast.parse(inspect.getsource(cli_check.show)).body[0]
    body = node.body[1:] if isinstance(node.body[0], ast.Expr) else node.body
    assert body[-1].end_lineno - body[0].lineno + 1 <= 40


def test_bad_check_settings_are_refused_before_any_run_is_opened(tmp_path):
    for options, message in (({"n": 0}, "--n must be at least 1"),
                             ({"batch_size": 0}, "--batch-size must be at least 1"),
                             ({"eps": "-1"}, "eps")):  # fmt: skip
        with pytest.raises(DmlError, match=message):
            api.check("no-such-run", artifacts=tmp_path, **options)


@pytest.mark.slow
def test_check_end_to_end_writes_one_result_then_is_a_no_op(cli, store_copy):
    args = ["check", "digits-dml", "--baseline", "digits-baseline", "--surrogate",
            "digits-baseline", "--n", "30", "--steps", "10", "--queries", "100",
            "--artifacts", store_copy]  # fmt: skip
    res = cli(*args)
    assert res.code == 0, res.err
    out = " ".join(res.out.split())
    assert "digits-dml: sanity checks at eps 0.2" in out and "iterative" in out
    assert " pass, " in out and " warn, " in out and " fail; " in out
    files = Store(store_copy).list_results(kind="check")
    assert len(files) == 1
    df, meta = Store(store_copy).read_result(files[0])
    assert set(df["status"]) <= {"pass", "warn", "fail"} and len(df) == 14
    assert results.first(df, "eps") == 0.2 and results.first(df, "n") == 30
    assert meta["setting"]["baseline"][0] == "digits-baseline"
    assert meta["setting"]["checkpoint"] == open_run("digits-dml", Store(store_copy)).checkpoint
    assert not list((store_copy / "results" / "digits-dml").glob(".parts/*"))
    before = tree_listing(store_copy)
    again = cli(*args)
    assert again.code == 0 and "already in" in again.out
    assert tree_listing(store_copy) == before
    report = cli("report", store_copy)
    assert report.code == 0, report.err
    text = (store_copy / "report" / "report.md").read_text()
    assert "Sanity checks" in text and "iterative vs single-step" in text
    assert text.count("| iterative vs single-step |") == 1
    # another setting writes a second result: the report shows the newest, each row once
    assert cli(*args[:-4], "--queries", "50", "--artifacts", store_copy).code == 0
    assert len(Store(store_copy).list_results(kind="check")) == 2
    assert cli("report", store_copy).code == 0
    text = (store_copy / "report" / "report.md").read_text()
    assert text.count("| iterative vs single-step |") == 1
    assert "1 older sanity-check result(s) of the same run, eps and decision" in text


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["--eps", "1.5"], "outside [0, 1]"),
        (["--eps", "-0.1"], "outside [0, 1]"),
        (["--eps", "0"], "above 0"),
        (["--n", "0"], "--n"),
        (["--baseline", "nope"], "no run named"),
        (["--large-eps", "0.1"], "--large-eps"),
        (["--decision", "nope"], "decision"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(cli, store_copy, argv, expect):
    before = tree_listing(store_copy)
    res = cli("check", "digits-dml", *argv, "--artifacts", store_copy)
    lines = res.err.strip().splitlines()
    assert res.code == 2 and len(lines) == 1 and lines[0].startswith("error:"), res.err
    assert expect in lines[0] and "Traceback" not in res.out + res.err
    assert tree_listing(store_copy) == before


class SumWrongVoteRightRounded(nn.Module):
    """Members 1-3 vote 0 by a margin that pixel 0 erases once it rounds to 0.75 (x >= 0.625
    after ``round(4x) / 4``); members 4-5 vote 5 so strongly that the summed logits say 5.
    The vote is right, the sum wrong, and no gradient reaches the input."""

    num_members = 5
    randomized = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = (torch.round(x * 4) / 4).flatten(1)
        out = torch.zeros(5, len(p), 10)
        out[:3, :, 0] = 1.0
        out[:3, :, 5] = 0.9 + 5.0 * (p[:, 0] - 0.5)
        out[3:, :, 5] = 10.0
        return out


def test_the_black_box_check_attacks_the_decision_itself():
    """Square through AutoAttack judged success on the summed logits: on a vote whose sum is
    already wrong it attacked nothing and the check passed. RayS queries the vote and breaks
    the samples the (gradient-masked) white-box attacks leave robust: the check fails."""
    model = SumWrongVoteRightRounded()
    x, y = torch.full((12, 1, 4, 4), 0.5), torch.zeros(12, dtype=torch.long)
    s = chk.CheckSettings(eps=0.14, large_eps=0.5, steps=5, queries=200).validate()
    rows = chk.check_model(model, x, y, s, seed=0).set_index("check")
    assert rows.loc["black-box vs white-box", "status"] == "fail", rows.to_string()
    assert rows.loc["black-box vs white-box", "value"] > 50.0


# -- indicators of attack failure (Pintor et al. 2022) on constructed models ------------------
class CrossThenBack(nn.Module):
    """Three members on the mean pixel p, label 0. Member 1 says class 1 for p > 0.5 with a
    steep margin, member 2 for 0.29 < p < 0.61, member 3 never: the vote is wrong only for
    0.5 < p < 0.61, while the summed margin (and its CE) rises with p all the way. PGD on
    the sum from p = 0.4 with eps 0.35 walks up through the wrong window to p = 0.75,
    where the loss is highest and the vote right again."""

    num_members = 3
    randomized = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x.flatten(1).mean(1)
        out = torch.zeros(3, len(p), 3)
        out[0, :, 1] = 50.0 * (p - 0.5)
        out[1, :, 1] = 1.0 - 40.0 * (p - 0.45) ** 2
        out[2, :, 1] = -1.0
        out[:, :, 2] = -5.0
        return out


class Rising(nn.Module):
    """One classifier whose CE rises linearly with the mean pixel and whose boundary (mean
    0.9) lies outside every ball the tests use: no attack succeeds, the loss never stalls
    before the ball's corner."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x.flatten(1).mean(1)
        out = torch.zeros(len(p), 3)
        out[:, 1] = 10.0 * (p - 0.9)
        out[:, 2] = -5.0
        return out


def _gray(n: int = 6, value: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n, 1, 8, 8), value), torch.zeros(n, dtype=torch.long)


def test_a_trace_changes_no_result_and_records_every_iterate():
    model, (x, y) = CrossThenBack(), _gray()
    for keep in ("loss", "adversarial"):
        pgd = create_attack("pgd", eps=0.35, steps=6, restarts=2, keep=keep, seed=3)
        trace = Trace()
        assert torch.equal(pgd(model, x, y), pgd(model, x, y, trace=trace))
        runs = trace.restarts(len(x))
        if keep == "loss":  # every sample runs every step of both restarts (+ the last point)
            assert [tuple(loss.shape) for loss, _ in runs] == [(7, 6), (7, 6)]
            assert not any(loss.isnan().any() for loss, _ in runs)
            assert all(fooled.any(0).all() for _, fooled in runs)
        else:  # fooled samples leave: one restart, NaN after the first success
            assert len(runs) == 1
            loss, fooled = runs[0]
            first = fooled.int().argmax(0)
            assert fooled.any(0).all() and all(
                loss[first[i] + 1 :, i].isnan().all() for i in range(6)
            )
    assert "trace" not in pgd.setting() and "traceable" not in pgd.setting()
    with pytest.raises(DmlError, match="no loss trace"):
        create_attack("fgsm", eps=0.1)(model, x, y, trace=Trace())


def test_silent_success_fires_when_the_highest_loss_point_is_right_again():
    """PGD keeping the first wrong iterate breaks every sample; kept by loss it returns the
    corner p = 0.75, classified correctly: every sample is a silent success."""
    model, (x, y) = CrossThenBack(), _gray()
    s = chk.CheckSettings(eps=0.35, large_eps=0.7, steps=20, queries=20).validate()
    cols = chk.evidence(model, x, y, s, seed=0)
    assert cols["clean_correct"] == [True] * 6 and cols["robust_pgd"] == [False] * 6
    assert cols["robust_traced"] == [True] * 6 and cols["silent_success"] == [True] * 6
    rows, meta = chk.summarize(pd.DataFrame({"sample": range(6), **cols}), s)
    by = rows.set_index("check")
    assert by.loc["silent success", "status"] == "warn" and by.loc["silent success", "value"] == 100
    assert meta["samples"]["silent_success"] == list(range(6))
    # a silent success is no failure to converge: the attack did find adversarials
    assert by.loc["incomplete optimization", "status"] == "pass"
    assert by.loc["incomplete optimization", "value"] == 0.0


def test_incomplete_optimization_fires_on_too_few_steps_and_passes_when_converged():
    model, (x, y) = Rising(), _gray()
    objective = Objective(model)
    correct = objective.predict(x) == y
    s = chk.CheckSettings(eps=0.1, large_eps=0.5, steps=20, queries=20).validate()
    status = {}
    for steps in (5, 100):  # 5 steps of 0.005 cover a quarter of the ball; 100 reach its corner
        pgd = create_attack("pgd", eps=0.1, steps=steps, step_size=0.005, keep="loss", seed=0)
        cols = chk.indicators(objective, pgd, x, y, correct, 0, s.thresholds.incomplete_window)
        assert cols["robust_traced"] == [True] * 6 and cols["silent_success"] == [False] * 6
        if steps == 5:  # each step adds ~1/5 of the loss range
            assert all(0.15 < c < 0.25 for c in cols["loss_change"]), cols["loss_change"]
        else:
            assert cols["loss_change"] == [0.0] * 6
        ev, _ = _evidence(n=6, **{k: np.array(v) for k, v in cols.items()})
        rows = chk.summarize(ev, s)[0].set_index("check")
        status[steps] = rows.loc["incomplete optimization", ["status", "value"]].tolist()
    assert status == {5: ["warn", 100.0], 100: ["pass", 0.0]}
    # the check's own PGD (Madry's step 2.5 eps / steps) reaches the corner: converged
    rows = chk.check_model(model, x, y, s, seed=0).set_index("check")
    assert rows.loc["incomplete optimization", "status"] == "pass"
    assert rows.loc["silent success", "status"] == "pass"
