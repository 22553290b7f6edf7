"""Gradient alignment (A.2, A.7) and loss surfaces (Fig. 2): exact cases and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dmlcli import results
from dmlcli.errors import DmlError
from dmlcli.eval import geometry as geo
from dmlcli.files import read_parquet
from dmlcli.models.dml import DMLHead
from dmlcli.store import Store
from tests.helpers import tiny_ensemble


class _Twice(nn.Module):
    """Two 'members' that are the same network: ``[2, B, C]``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return torch.stack([out, out])


class _DisjointDML(nn.Module):
    """Identity backbone (10 pixels -> z) and two DML members whose diagonal M live on
    disjoint coordinates (M_1 M_2 ~ 0, A.2)."""

    def __init__(self, leak: float, shared: bool = False) -> None:
        super().__init__()
        perm = list(range(10))
        sets = [list(range(5)), list(range(5, 10))]
        self.head = DMLHead([perm, perm], sets, m_init="fixed", m_fixed=leak)
        with torch.no_grad():
            self.head.m.fill_(1.0)
            if shared:
                self.head.mask.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1)
        return self.head(z.expand(2, *z.shape))


def test_gradient_cosine_of_a_model_with_itself_is_one() -> None:
    x = torch.rand(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    df = geo.gradient_cosines(_Twice(), x, y, list(range(16)), batch_size=5)
    assert len(df) == 16 and set(zip(df.member_a, df.member_b, strict=True)) == {(1, 2)}
    np.testing.assert_allclose(df["cosine"], 1.0, atol=1e-5)
    np.testing.assert_allclose(df["sign_cosine"], 1.0, atol=1e-6)
    np.testing.assert_allclose(df["norm_a"], df["norm_b"])


def test_orthogonal_m_on_disjoint_coordinates_gives_orthogonal_gradients() -> None:
    x = torch.rand(64, 1, 2, 5, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1))
    ortho = geo.gradient_cosines(_DisjointDML(leak=1e-6), x, y, list(range(64)))
    assert ortho["cosine"].abs().max() < 0.01
    same = geo.gradient_cosines(_DisjointDML(leak=1e-6, shared=True), x, y, list(range(64)))
    np.testing.assert_allclose(same["cosine"], 1.0, atol=1e-5)


def test_member_gradients_match_single_member_autograd() -> None:
    ens = tiny_ensemble(members=3)
    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 3, 5, 9])
    grads = geo.member_input_gradients(ens, x, y)
    assert grads.shape == (3, 4, 64)
    xi = x.clone().requires_grad_(True)
    (g1,) = torch.autograd.grad(F.cross_entropy(ens(xi)[1], y, reduction="sum"), xi)
    torch.testing.assert_close(grads[1], g1.flatten(1))
    df = geo.gradient_cosines(ens, x, y, [7, 8, 9, 10])
    assert len(df) == 3 * 4  # 3 pairs x 4 samples
    summary = results.pair_summary(df)
    assert summary[["member_a", "member_b"]].values.tolist() == [[1, 2], [1, 3], [2, 3]]


def test_loss_surface_grid_and_values() -> None:
    ens = tiny_ensemble(members=3)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([2, 7])
    s = geo.SurfaceSettings(grid=5)
    df = geo.loss_surface(ens, x, y, [11, 12], s, seed=0, batch_size=7)
    assert len(df) == 2 * 4 * 25  # samples x (3 members + sum) x grid^2
    assert sorted(df["r"].unique()) == pytest.approx([0, 0.025, 0.05, 0.075, 0.1])
    assert sorted(df["theta"].unique()) == pytest.approx([-0.1, -0.05, 0, 0.05, 0.1])
    at_x = df[(df.r == 0) & (df.theta.abs() < 1e-9) & (df.idx == 11)].set_index("model")["loss"]
    with torch.no_grad():
        logits = ens(x[:1])
    for k in range(3):
        expected = float(F.cross_entropy(logits[k], y[:1]))
        assert at_x[f"member:{k + 1}"] == pytest.approx(expected, rel=1e-5)
    assert at_x["sum"] == pytest.approx(float(F.cross_entropy(logits.sum(0), y[:1])), rel=1e-5)
    # Along the sign of the ensemble's gradient (theta = 0) its loss goes up at first.
    line = df[(df.model == "sum") & (df.theta.abs() < 1e-9)].pivot(
        index="r", columns="idx", values="loss"
    )
    assert (line.iloc[1] > line.iloc[0]).all()
    again = geo.loss_surface(ens, x, y, [11, 12], s, seed=0)
    np.testing.assert_allclose(again["loss"], df["loss"], rtol=1e-5)


def test_surface_settings_validation() -> None:
    with pytest.raises(DmlError, match="--grid"):
        geo.SurfaceSettings(grid=1).validate()
    with pytest.raises(DmlError, match="sign or normalized"):
        geo.SurfaceSettings(direction="raw").validate()
    with pytest.raises(DmlError, match="--noise-std"):
        geo.SurfaceSettings(noise_std=0).validate()


def _bad(cli, root, *args: str) -> None:
    before = sorted(p.name for p in (root / "results").rglob("*"))
    res = cli("geometry", "digits-dml", "--artifacts", root, *args)
    assert res.code == 2, (args, res.out, res.err)
    assert len(res.err.strip().splitlines()) == 1
    assert sorted(p.name for p in (root / "results").rglob("*")) == before


def test_cli_end_to_end(cli, store_copy) -> None:
    args = ["--n", "30", "--surface-samples", "2", "--grid", "5"]
    res = cli("geometry", "digits-dml", "--artifacts", store_copy, *args)
    assert res.code == 0, res.err
    assert "mean cos" in res.out and "max loss" in res.out
    store = Store(store_copy)
    (grad_path,) = store.list_results("gradients")
    (surf_path,) = store.list_results("surface")
    grads, meta = read_parquet(grad_path)
    assert len(grads) == 30 * 10 and meta["members"] == 5  # 10 pairs of 5 members
    assert grads["cosine"].between(-1, 1).all()
    surf, _ = read_parquet(surf_path)
    assert len(surf) == 2 * 6 * 25
    again = cli("geometry", "digits-dml", "--artifacts", store_copy, *args, "--gradients")
    assert again.code == 0 and "already in" in again.out
    base = cli("geometry", "digits-baseline", "--artifacts", store_copy, *args, "--surface")
    assert base.code == 0, base.err
    assert len(store.list_results("surface")) == 2 and len(store.list_results("gradients")) == 1
    for bad in (
        ["--n", "0"],
        ["--n", "100000"],
        ["--grid", "1"],
        ["--direction", "raw"],
        ["--surface", "--surface-samples", "0"],
        ["--surface", "--surface-samples", "100000"],
        ["--r-max", "-0.1"],
    ):
        _bad(cli, store_copy, *bad)


def test_cosines_of_vanishing_gradients_are_still_cosines():
    """A saturated softmax (e.g. MMC's large logits) gives gradients near 1e-40: their
    squared norms underflow in float32, which once gave cosines of 1e11."""
    import torch

    from dmlcli.eval.geometry import pair_cosines

    g = torch.randn(3, 8, 64, generator=torch.Generator().manual_seed(0))
    for (a, b), (cos, _) in pair_cosines(g).items():
        tiny, _ = pair_cosines(g * 1e-38)[(a, b)]
        assert torch.allclose(cos, tiny, atol=1e-4)
        assert tiny.abs().max() <= 1 + 1e-6
    zero, _ = pair_cosines(torch.zeros(2, 4, 16))[(0, 1)]
    assert torch.equal(zero, torch.zeros(4))
