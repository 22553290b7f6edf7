"""Randomized smoothing (Cohen et al. 2019): analytic radius, abstentions, head swap, CLI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

from dmlcli import results
from dmlcli.errors import DmlError
from dmlcli.eval import certify as ce
from dmlcli.files import read_parquet
from dmlcli.store import Store
from tests.helpers import tiny_ensemble


def _linear_classifier(w: torch.Tensor, b: float):
    """Two classes: 1 where ``w . x + b > 0``; its smoothed probability is known exactly."""

    def classify(x: torch.Tensor) -> torch.Tensor:
        return ((x.flatten(1) @ w.flatten() + b) > 0).long()

    return classify


def test_lower_confidence_bound() -> None:
    # All n draws agree: the one-sided Clopper-Pearson bound is alpha^(1/n).
    assert ce.lower_confidence_bound(1000, 1000, 0.001) == pytest.approx(0.001 ** (1 / 1000))
    assert ce.lower_confidence_bound(0, 100, 0.01) == 0.0
    assert ce.lower_confidence_bound(500, 1000, 0.001) < 0.5


def test_certify_linear_classifier_matches_analytic_radius() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1, 4, 4, generator=gen)
    x = torch.rand(1, 4, 4, generator=gen)
    sigma, n, alpha = 0.5, 20_000, 0.001
    # Put x at distance 0.4 from the hyperplane on the class-1 side.
    distance = 0.4
    b = float(distance * w.norm() - (w * x).sum())
    classify = _linear_classifier(w, b)
    s = ce.CertifySettings(sigma=sigma, n0=100, n=n, alpha=alpha, batch_size=5000)
    p_a = norm.cdf(distance / sigma)  # P(f(x + delta) = 1) exactly
    assert sigma * norm.ppf(p_a) == pytest.approx(distance)
    label, radius, p_lower = ce.certify(classify, x, s, 2, torch.Generator().manual_seed(1))
    assert label == 1
    sd = math.sqrt(p_a * (1 - p_a) / n)
    slack_low = ce.lower_confidence_bound(int(n * (p_a - 4 * sd)), n, alpha)
    assert p_lower <= p_a + 4 * sd
    assert sigma * norm.ppf(slack_low) <= radius <= distance + sigma * 4 * sd / norm.pdf(0.8)
    assert radius == pytest.approx(distance, abs=0.03)


def test_max_certifiable_radius_is_what_a_constant_classifier_gets() -> None:
    """A classifier that always answers 1 gets every vote: its radius is the ceiling of n draws
    (sigma 0.25, n = 100000, alpha 0.001: about 0.95, as in Cohen et al.)."""
    assert ce.max_certifiable_radius(0.25, 100_000, 0.001) == pytest.approx(0.9529, abs=1e-3)
    assert ce.max_certifiable_radius(0.25, 10_000, 0.001) == pytest.approx(0.7996, abs=1e-3)

    def always_one(batch: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(batch), dtype=torch.long)

    s = ce.CertifySettings(sigma=0.25, n0=10, n=10_000, alpha=0.001, batch_size=5000)
    label, radius, _ = ce.certify(always_one, torch.zeros(1, 2, 2), s, 2, torch.Generator())
    assert label == 1 and radius == pytest.approx(ce.max_certifiable_radius(0.25, 10_000, 0.001))


def test_certify_and_predict_abstain_on_the_boundary() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1, 4, 4, generator=gen)
    x = torch.rand(1, 4, 4, generator=gen)
    b = float(-(w * x).sum())  # x on the hyperplane: p_A = 1/2
    classify = _linear_classifier(w, b)
    s = ce.CertifySettings(sigma=0.25, n0=100, n=4000, alpha=0.001, predict_n=4000)
    label, radius, p_lower = ce.certify(classify, x, s, 2, torch.Generator().manual_seed(2))
    assert (label, radius) == (ce.ABSTAIN, 0.0) and p_lower < 0.5
    assert ce.predict(classify, x, s, 2, torch.Generator().manual_seed(3)) == ce.ABSTAIN
    far = _linear_classifier(w, b + 3.0 * float(w.norm()))
    assert ce.predict(far, x, s, 2, torch.Generator().manual_seed(4)) == 1


def test_certified_accuracy_counts_abstentions_as_wrong() -> None:
    rows = pd.DataFrame(
        {
            "idx": [0, 1, 2, 3],
            "label": [3, 4, 5, 6],
            "predict": [3, -1, 1, 6],
            "radius": [0.3, 0.0, 0.9, 0.6],
            "correct": [1, 1, 0, 1],  # a bogus "correct" on the abstention must not count
        }
    )
    acc = results.certified_accuracy(rows, [0.0, 0.25, 0.5, 0.75])
    assert acc["accuracy"].tolist() == [0.5, 0.5, 0.25, 0.0]
    grid = results.fine_radii(rows, 0.05)
    assert grid[0] == 0.0 and grid[-1] >= 0.9
    assert results.certified_accuracy(rows, grid)["accuracy"].is_monotonic_decreasing


def test_bad_settings() -> None:
    for kw, match in (
        ({"sigma": 0.0}, "sigma"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": 0.0}, "alpha"),
        ({"n": -3}, "--n "),
        ({"n0": 0}, "--n0"),
    ):
        with pytest.raises(DmlError, match=match):
            ce.CertifySettings(**kw).validate()


def test_swap_head_keeps_weights() -> None:
    ens = tiny_ensemble("dml", members=3)
    x = torch.rand(8, 1, 8, 8)
    rdml = ens.with_head("rdml", sigma=0.0, samples=2)
    assert rdml.randomized and rdml.config.head_sigma == 0.0
    with torch.no_grad():
        torch.testing.assert_close(rdml(x), ens(x))  # sigma 0: R-DML is the DML
        noisy = ens.with_head("augdml", sigma=0.5)
        assert not torch.allclose(noisy(x), ens(x))
    with pytest.raises(DmlError, match="linear"):
        tiny_ensemble("linear", members=2).with_head("rdml")
    with pytest.raises(DmlError, match="choose dml, rdml or augdml"):
        ens.with_head("linear")


def test_certify_samples_rows_are_independent_of_the_subset() -> None:
    ens = tiny_ensemble("dml", members=3)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 2, 3])
    s = ce.CertifySettings(sigma=0.25, n0=20, n=200, predict_n=40, batch_size=256)
    full = ce.certify_samples(ens, "vote", x, y, [10, 11, 12], s, seed=5)
    part = ce.certify_samples(ens, "vote", x[1:], y[1:], [11, 12], s, seed=5)
    cols = ["idx", "label", "predict", "radius", "correct", "smoothed"]
    pd.testing.assert_frame_equal(full[cols].iloc[1:].reset_index(drop=True), part[cols])
    assert list(full.columns[:6]) == ["idx", "label", "predict", "radius", "correct", "seconds"]
    assert (full["radius"] >= 0).all()
    assert np.all((full["predict"] == -1) <= (full["radius"] == 0))


def _bad(cli, root, *args: str) -> None:
    before = sorted(p.name for p in (root / "results").rglob("*"))
    res = cli("certify", *args, "--artifacts", root)
    assert res.code == 2, (args, res.out, res.err)
    assert len(res.err.strip().splitlines()) == 1
    assert sorted(p.name for p in (root / "results").rglob("*")) == before


def test_cli_end_to_end(cli, store_copy) -> None:
    args = ["--n-samples", "4", "--n0", "20", "--n", "400", "--predict-n", "100"]
    res = cli("certify", "digits-dml", "--artifacts", store_copy, *args)
    assert res.code == 0, res.err
    assert "certified accuracy" in res.out
    (path,) = Store(store_copy).list_results("certify")
    df, meta = read_parquet(path)
    assert list(df.columns[:6]) == ["idx", "label", "predict", "radius", "correct", "seconds"]
    assert len(df) == 4 and meta["setting"]["decision"] == "vote"
    assert meta["curve"]["radius"][0] == 0.0
    again = cli("certify", "digits-dml", "--artifacts", store_copy, *args)
    assert again.code == 0 and "already in" in again.out
    swapped = cli(
        "certify", "digits-dml", "--artifacts", store_copy, *args,
        "--head", "rdml", "--head-sigma", "0.5", "--decision", "sum",
    )  # fmt: skip
    assert swapped.code == 0, swapped.err
    paths = Store(store_copy).list_results("certify")
    assert len(paths) == 2
    metas = [read_parquet(p)[1]["setting"] for p in paths]
    assert {m["head"] for m in metas} == {"dml", "rdml"}
    root = store_copy
    for bad in (
        ["digits-dml", "--sigma", "0"],
        ["digits-dml", "--sigma", "-0.5"],
        ["digits-dml", "--alpha", "1.5"],
        ["digits-dml", "--n", "-1"],
        ["digits-dml", "--n0", "0"],
        ["digits-dml", "--n-samples", "100000"],
        ["digits-dml", "--decision", "member:6"],
        ["digits-dml", "--decision", "median"],
        ["digits-dml", "--head", "linear"],
        ["digits-baseline", "--head", "rdml"],
        ["digits-dml", "--head-sigma", "0.5"],
    ):
        _bad(cli, root, *bad)
