"""CLEVER (Weng et al. 2018): exact on linear models, ART agreement, Weibull fit, Lemma 1, CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dmlcli.errors import DmlError
from dmlcli.eval import clever as cl
from dmlcli.files import read_parquet
from dmlcli.results import score_quantiles
from dmlcli.store import Store
from tests.helpers import tiny_ensemble, tree_listing


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()


def _exact_linear_score(model: nn.Module, x: torch.Tensor, p: float, radius: float) -> np.ndarray:
    """Distance to the nearest decision hyperplane in L_p: min_j margin_j / ||w_c - w_j||_q."""
    w = model[1].weight.detach().double()
    q = cl.dual_order(p)
    with torch.no_grad():
        logits = model(x).double()
    out = []
    for row in logits:
        c = int(row.argmax())
        d = [float((row[c] - row[j]) / (w[c] - w[j]).norm(p=q)) for j in range(10) if j != c]
        out.append(min(min(d), radius))
    return np.array(out)


@pytest.mark.parametrize("norm", ["2", "inf", "1"])
def test_linear_model_matches_exact_lipschitz_value(norm: str) -> None:
    model = _linear()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    p = cl.parse_norm(norm)
    radius = 10.0
    s = cl.CleverSettings(norm=p, radius=radius, nb_batches=20, batch_size=32, pool_factor=2)
    ours = np.array([r.score for r in cl.clever_u(model, x, s)])
    exact = _exact_linear_score(model, x, p, radius)
    assert (exact < radius).all()  # the radius cap does not hide the comparison
    np.testing.assert_allclose(ours, exact, rtol=0.05)


def test_radius_caps_the_score() -> None:
    model = _linear()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    s = cl.CleverSettings(norm=2.0, radius=1e-3, nb_batches=5, batch_size=8, pool_factor=1)
    assert [r.score for r in cl.clever_u(model, x, s)] == pytest.approx([1e-3] * 3)


def test_sample_ball_inside_and_uniform() -> None:
    gen = torch.Generator().manual_seed(0)
    d = 16
    for p, q in ((2.0, 2), (math.inf, math.inf), (1.0, 1)):
        pts = cl.sample_ball(4000, (1, 4, 4), 0.5, p, gen).flatten(1)
        norms = pts.norm(p=q, dim=1)
        assert (norms <= 0.5 + 1e-5).all()
        if p != math.inf:  # uniform in volume: E[||x|| / R] = d / (d + 1)
            assert float((norms / 0.5).mean()) == pytest.approx(d / (d + 1), abs=0.01)
    signs = cl.sample_ball(4000, (16,), 1.0, 1.0, gen).sign()
    assert abs(float(signs.mean())) < 0.02


def test_weibull_fit_recovers_endpoint() -> None:
    rng = np.random.default_rng(0)
    for shape in (2.0, 5.0):
        maxima = 3.0 - 0.5 * rng.weibull(shape, 500)
        fit = cl.fit_reverse_weibull(maxima)
        assert fit.location >= maxima.max()
        assert fit.location == pytest.approx(3.0, abs=0.1)  # 0.2 of the Weibull scale
        assert fit.shape == pytest.approx(shape, rel=0.35)
        assert fit.status == "ok" and fit.ks_pvalue > 0.01
    const = cl.fit_reverse_weibull(np.full(50, 1.25))
    assert const.status == "degenerate" and const.location == 1.25


def test_pooled_maxima_keep_the_fit_instead_of_the_observed_max() -> None:
    """Batch maxima resampled from a 1000-point pool repeat its top values; the KS test then
    rejects, and the fallback to the observed maximum would raise the score. Without the
    fallback (what a pooled run uses) L stays at the fit, above every observed maximum."""
    rng = np.random.default_rng(1)
    pool = 3.0 - 0.5 * rng.weibull(3.0, 1000)
    maxima = pool[rng.integers(0, 1000, (50, 200))].max(1)
    assert len(np.unique(maxima)) < 20  # ties
    old = cl.fit_reverse_weibull(maxima)
    assert old.status == "ill-conditioned" and old.location == maxima.max()
    new = cl.fit_reverse_weibull(maxima, ks_fallback=False)
    assert new.status != "ill-conditioned" and new.location > maxima.max()
    assert new.ks_pvalue == pytest.approx(old.ks_pvalue)
    margins = np.array([0.0, 1.0])
    pooled = cl.score_sample(margins, 0, np.stack([maxima, maxima], 1), cl.CleverSettings())
    fresh = cl.CleverSettings(pool_factor=0)
    assert pooled.score == pytest.approx(1.0 / new.location)
    assert cl.score_sample(margins, 0, np.stack([maxima] * 2, 1), fresh).score == pytest.approx(
        1.0 / maxima.max()
    )


def test_multi_start_fit_beats_a_single_bad_start() -> None:
    """Weng et al. fit from several shape starts and keep the best KS p-value: from shape 0.1
    alone the fit ends on the boundary (L = the observed maximum, a poor fit); from the
    reference's seven starts it finds the interior optimum, closer to the true endpoint."""
    true_loc = 1.7
    for seed in (1, 2, 4):
        rng = np.random.default_rng(seed)
        maxima = true_loc - 0.4 * rng.weibull(8.0, 200)  # reverse Weibull, shape 8
        bad = cl.fit_reverse_weibull(maxima, 0.1)  # one start is still accepted
        best = cl.fit_reverse_weibull(maxima)
        assert bad.status == "boundary" and bad.location == pytest.approx(maxima.max())
        assert best.status == "ok" and best.start != 0.1
        assert best.ks_pvalue > max(bad.ks_pvalue, 0.5)
        assert abs(best.location - true_loc) < abs(bad.location - true_loc)
        assert best.location > maxima.max()
        # the kept fit is the best of the single-start fits
        singles = [cl.fit_reverse_weibull(maxima, c) for c in cl.SHAPE_STARTS]
        assert best.ks_pvalue == pytest.approx(max(f.ks_pvalue for f in singles))
    rng = np.random.default_rng(2)
    fit = cl.fit_reverse_weibull(true_loc - 0.4 * rng.weibull(8.0, 200))
    assert fit.location == pytest.approx(true_loc, abs=0.05)
    assert fit.shape == pytest.approx(8.0, rel=0.25)


def test_c_init_is_a_list_of_starts_recorded_in_the_setting() -> None:
    assert cl.CleverSettings().validate().c_init == cl.SHAPE_STARTS == (0.1, 1, 5, 10, 20, 50, 100)
    assert cl.CleverSettings(c_init=5).validate().c_init == (5.0,)
    assert cl.CleverSettings(c_init=[20, 1, 20]).validate().c_init == (1.0, 20.0)
    setting = cl.CleverSettings().validate().setting()
    assert setting["c_init"] == [0.1, 1, 5, 10, 20, 50, 100]
    assert setting["fit"] == cl.FIT_RULE and setting["max_offset"] == cl.MAX_OFFSET
    one = cl.CleverSettings(c_init=1.0).validate().setting()
    assert one["c_init"] == [1.0]  # another setting: another stored result
    for bad in (0, -1, math.inf, math.nan, [1, 0], []):
        with pytest.raises(DmlError, match="--c-init"):
            cl.CleverSettings(c_init=bad).validate()


def _fit(location: float, status: str) -> cl.WeibullFit:
    return cl.WeibullFit(location, 3.0, 0.5, 0.5, status, location)


def _handmade_rows():
    """Four samples of 3 classes: labels 0 1 2 0, predictions 0 1 1 0 (the third is wrong:
    score 0.9 but score_label 0); the first sample's fit of class 2 is capped."""
    margins = [[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [2.0, 0.0, 1.0], [0.0, 2.0, 2.0]]
    scores = [0.5, 0.1, 0.9, 0.3]
    res = []
    for i, (m, score) in enumerate(zip(margins, scores, strict=True)):
        pred = 1 if i in (1, 2) else 0
        fits = [None if j == pred else _fit(2.0, "ok") for j in range(3)]
        if i == 0:
            fits[2] = _fit(4.0, "capped")
        res.append(cl.CleverResult(score, pred, 2, m, fits, 0.1))
    return cl.results_frame(res, np.arange(10, 14), np.array([0, 1, 2, 0]), "sum")


def test_non_zero_count_is_of_score_label() -> None:
    """The paper's non-zero count (Fig. 1) and the count above 0.2 (Fig. 7, 8) are of
    score_label: a wrong prediction has a positive score but counts as 0."""
    rows = _handmade_rows()
    assert rows["score"].tolist() == [0.5, 0.1, 0.9, 0.3]
    assert rows["score_label"].tolist() == [0.5, 0.1, 0.0, 0.3]
    for column in ("score", "score_label"):
        q = score_quantiles(rows, column)
        assert q["counted"] == "score_label" and q["column"] == column and q["n"] == 4
        assert q["score_label>0"] == 3  # not 4: the wrong prediction's 0.9 is not counted
        assert q["score_label>0.2"] == 2  # 0.5 and 0.3; not 0.9
        assert q["capped"] == 1 and q["capped_fits"] == 1 and q["fits"] == 8
    assert score_quantiles(rows, "score")["q50"] == pytest.approx(0.4)
    assert score_quantiles(rows, "score_label")["q50"] == pytest.approx(0.2)


def test_fit_forced_onto_the_cap_is_marked_and_counted(monkeypatch) -> None:
    """A location that hits MAX_OFFSET ranges above the observed maximum is marked capped
    and counted in the rows' summary (the CLI and the report tables use it)."""
    rng = np.random.default_rng(2)
    maxima = 1.7 - 0.4 * rng.weibull(8.0, 200)  # endpoint ~0.6 ranges above the maximum
    assert cl.fit_reverse_weibull(maxima).status == "ok"
    monkeypatch.setattr(cl, "MAX_OFFSET", 0.1)
    fit = cl.fit_reverse_weibull(maxima)
    top, spread = maxima.max(), np.ptp(maxima)
    assert fit.status == "capped"
    assert fit.location == pytest.approx(top + 0.1 * spread, rel=1e-4)
    s = cl.CleverSettings(nb_batches=200)
    ok = np.stack([np.zeros(200), maxima, np.full(200, 1.0)], 1)  # class 2: degenerate
    res = cl.score_sample(np.array([0.0, 1.0, 5.0]), 0, ok, s)
    assert [f.status for f in res.fits[1:]] == ["capped", "degenerate"]
    assert res.score == pytest.approx(1.0 / fit.location)
    rows = cl.results_frame([res, res], np.array([3, 4]), np.array([0, 1]), "sum")
    assert rows["fit_status"].iloc[0] == ["", "capped", "degenerate"]
    q = score_quantiles(rows)
    assert (q["capped"], q["capped_fits"], q["fits"]) == (2, 2, 4)


def test_cli_and_report_tables_count_score_label_and_capped(tmp_path, capsys, monkeypatch):
    from dmlcli.api.outcome import Outcome, StoredResult
    from dmlcli.cli import clever as cli_clever
    from dmlcli.cli import common
    from dmlcli.report.collect import collect
    from dmlcli.report.tables import clever_table

    rows = _handmade_rows()
    setting = {**cl.CleverSettings().validate().setting(), "n": 4, "seed": 0, "target": "sum"}
    store = Store(tmp_path / "art")
    path = store.write_result("clever", "fx-dml", setting, rows, {"dataset": "digits"})
    table = clever_table(collect(store), "digits")
    assert table.cell("fx-dml", "> 0") == 3 and table.cell("fx-dml", "> 0.2") == 2
    assert table.cell("fx-dml", "capped") == 1 and table.cell("fx-dml", "n") == 4
    assert table.cell("fx-dml", "median") == pytest.approx(0.2)  # of score_label
    notes = " ".join(table.notes)
    assert "score_label" in notes and "capped" in notes and "0.1 1 5 10 20 50 100" in notes

    stored, meta = read_parquet(path)
    result = StoredResult("clever", "fx-dml", "clever", path, "cached", 0, 4, meta=meta)
    stored = Outcome(stored, [result])
    monkeypatch.setattr(common.console, "width", 200)
    capsys.readouterr()
    cli_clever.print_summary(stored, "sum", "2", 2.0)
    out = capsys.readouterr().out
    cells = {
        row[1]: row[-5:-1]
        for row in ([c.strip() for c in x.split("│")] for x in out.splitlines())
        if len(row) > 5
    }
    assert cells["score_label"] == ["3", "2", "1", "4"]  # > 0, > 0.2, capped, n
    assert cells["score"] == ["", "", "", "4"]  # counts are of score_label only
    text = " ".join(out.split())
    assert "capped: samples with a Weibull fit" in text and "1 of 8 fits" in text


def test_parse_norm_and_dual() -> None:
    assert cl.parse_norm("inf") == math.inf and cl.dual_order(math.inf) == 1.0
    assert cl.dual_order(1.0) == math.inf and cl.dual_order(2.0) == 2.0
    with pytest.raises(DmlError, match="choose 1, 2 or inf"):
        cl.parse_norm("3")


def test_bad_settings_and_targets() -> None:
    with pytest.raises(DmlError, match="radius"):
        cl.CleverSettings(radius=0.0).validate()
    with pytest.raises(DmlError, match="nb-batches"):
        cl.CleverSettings(nb_batches=-1).validate()
    with pytest.raises(DmlError, match="members are numbered"):
        cl.ScoredModel(tiny_ensemble(members=3), "member:4")


def test_scored_model_sum_and_member() -> None:
    ens = tiny_ensemble(members=3)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        logits = ens(x)
        assert torch.allclose(cl.ScoredModel(ens, "sum")(x), logits.sum(0))
        assert torch.allclose(cl.ScoredModel(ens, "member:2")(x), logits[1])


def test_margin_gradients_match_autograd_per_point() -> None:
    ens = tiny_ensemble(members=2)
    model = cl.ScoredModel(ens)
    pts = torch.rand(5, 1, 8, 8)
    pred = torch.tensor([0, 1, 2, 3, 4])
    fast = cl.margin_grad_norms(model, pts, pred, 2.0, 10)
    for i in range(5):
        xi = pts[i : i + 1].clone().requires_grad_(True)
        out = model(xi)[0]
        (g,) = torch.autograd.grad(out[pred[i]] - out[7], xi)
        assert float(fast[i, 7]) == pytest.approx(float(g.norm()), rel=1e-4)
    assert torch.all(fast[torch.arange(5), pred] == 0)


def test_scores_do_not_depend_on_gradient_batching() -> None:
    """Draws come in fixed chunks per sample, so --grad-batch and the other samples in a
    batch change speed only: the same scores and fits (before, they moved by ~10%)."""
    ens = tiny_ensemble(members=2)
    model = cl.ScoredModel(ens)
    x = torch.rand(3, 1, 8, 8)
    base = dict(nb_batches=10, batch_size=30, pool_factor=20)  # 600 points: 3 draw chunks
    runs = [
        cl.clever_u(model, x, cl.CleverSettings(**base, grad_batch=gb), seeds=[5, 6, 7])
        for gb in (7, 512, 4096)
    ]
    alone = cl.clever_u(model, x[1:2], cl.CleverSettings(**base), seeds=[6])[0]
    # float32 kernels may round differently at other batch sizes: equal up to that
    for other in runs[1:]:
        assert [r.score for r in other] == pytest.approx([r.score for r in runs[0]], rel=1e-5)
        locs = [f.location for f in runs[0][2].fits if f]
        assert [f.location for f in other[2].fits if f] == pytest.approx(locs, rel=1e-5)
    assert alone.score == pytest.approx(runs[0][1].score, rel=1e-5)


def test_head_lipschitz_lemma1() -> None:
    ens = tiny_ensemble(members=3)
    bounds = cl.head_lipschitz(ens)
    m = ens.head.diag_m().detach()
    for k, b in enumerate(bounds):
        assert b["p_spectral"] == pytest.approx(float(m[k].max().sqrt()), rel=1e-6)
        assert b["lemma1"] == pytest.approx(math.sqrt(2) * b["p_spectral"])
        assert b["paper_diag_upper"] == pytest.approx(float(m[k].max()) ** 0.25, rel=1e-6)
    # Each distance d_c(z) is ||P||_2-Lipschitz: check on random pairs of embeddings.
    z1, z2 = torch.randn(2, 3, 200, 10).unbind(0)
    with torch.no_grad():
        diff = (ens.head.distances(z1) - ens.head.distances(z2)).abs().amax(-1)  # [K, B]
    step = (z1 - z2).norm(dim=-1)
    for k, b in enumerate(bounds):
        assert (diff[k] <= b["p_spectral"] * step[k] + 1e-5).all()
    assert cl.head_lipschitz(tiny_ensemble("linear", members=2)) is None


@pytest.mark.slow
def test_agrees_with_art_clever_u() -> None:
    """Same settings as ART's ``clever_u``: the median score agrees within 10%.

    Per sample the two agree to a few percent except where ART's unconstrained scipy fit
    runs off to a huge location (score ~0); the median is robust to those.
    """
    art_metrics = pytest.importorskip(
        "art.metrics", reason="adversarial-robustness-toolbox is a test-only dependency"
    )
    from art.estimators.classification import PyTorchClassifier

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ART backpropagates 10 points at a time: threads only hurt
    try:
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(512, 10),
        ).eval()
        x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(3))
        nb, bs, radius = 100, 25, 1.0
        s = cl.CleverSettings(norm=2.0, radius=radius, nb_batches=nb, batch_size=bs)
        ours = np.array([r.score for r in cl.clever_u(net, x, s)])
        clf = PyTorchClassifier(
            net, nn.CrossEntropyLoss(), (1, 8, 8), nb_classes=10, clip_values=(0.0, 1.0)
        )
        np.random.seed(0)
        art = np.array(
            [art_metrics.clever_u(clf, xi.numpy(), nb, bs, radius, 2, verbose=False) for xi in x]
        )
    finally:
        torch.set_num_threads(threads)
    assert (art < radius).mean() > 0.5  # most scores are not just the cap
    assert np.median(ours) == pytest.approx(np.median(art), rel=0.10)


def _bad(cli, root, *args: str) -> None:
    before = sorted(p.name for p in (root / "results").rglob("*"))
    res = cli("clever", "digits-dml", "--artifacts", root, *args)
    assert res.code == 2, (args, res.out, res.err)
    assert len(res.err.strip().splitlines()) == 1
    assert sorted(p.name for p in (root / "results").rglob("*")) == before


def test_cli_end_to_end(cli, store_copy) -> None:
    args = ["--nb-batches", "10", "--batch-size", "16", "--pool-factor", "2", "--n", "6"]
    res = cli("clever", "digits-dml", "--artifacts", store_copy, *args)
    assert res.code == 0, res.err
    assert "Lemma 1" in res.out and "median" in res.out
    paths = Store(store_copy).list_results("clever")
    assert len(paths) == 1
    df, meta = read_parquet(paths[0])
    assert len(df) == 6 and set(df["model"]) == {"sum"}
    assert (df["score"] > 0).all() and (df["score"] <= 2.0).all()
    assert len(df["location"].iloc[0]) == 10
    assert len(meta["head_lipschitz"]) == 5 and meta["setting"]["nb_batches"] == 10
    again = cli("clever", "digits-dml", "--artifacts", store_copy, *args)
    assert again.code == 0 and "already in" in again.out
    assert meta["setting"]["c_init"] == [0.1, 1, 5, 10, 20, 50, 100]
    assert meta["setting"]["fit"] == cl.FIT_RULE
    assert "capped" in res.out and "score_label" in res.out
    member = cli(
        "clever", "digits-dml", "--artifacts", store_copy, *args, "--target", "member:2",
        "--c-init", "5",
    )  # fmt: skip
    assert member.code == 0, member.err
    (member_path,) = set(Store(store_copy).list_results("clever")) - set(paths)
    assert read_parquet(member_path)[1]["setting"]["c_init"] == [5.0]
    base = cli("clever", "digits-baseline", "--artifacts", store_copy, *args, "--norm", "inf")
    assert base.code == 0 and "n/a (linear head)" in base.out
    for bad in (
        ["--n", "0"],
        ["--n", "100000"],
        ["--norm", "3"],
        ["--radius", "-1"],
        ["--nb-batches", "-5"],
        ["--batch-size", "0"],
        ["--target", "member:6"],
        ["--target", "vote"],
    ):
        _bad(cli, store_copy, *bad)


def test_cli_rejects_bad_c_init(cli, store_copy) -> None:
    """--c-init 0 and -1: exit 2, one error line, nothing written."""
    before = tree_listing(store_copy)
    for bad in ("0", "-1"):
        res = cli("clever", "digits-dml", "--artifacts", store_copy, "--n", "2", "--c-init", bad)
        assert res.code == 2, (bad, res.out, res.err)
        lines = res.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "--c-init" in lines[0]
        assert tree_listing(store_copy) == before
