"""Attacks: budgets, agreement with torchattacks and AutoAttack, EOT, surfaces, worst case."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from dmlcli.attacks import (
    AutoAttack,
    Objective,
    attack_parameters,
    create_attack,
    list_attacks,
    list_losses,
    list_surfaces,
)
from dmlcli.attacks.losses import create_loss
from dmlcli.data import load_dataset, to_float
from dmlcli.errors import DmlError
from dmlcli.eval import robustness as rob
from tests.conftest import tiny_ensemble

EPS = 0.1


@pytest.fixture(scope="module")
def digits():
    x, y = load_dataset("digits", "test")
    return to_float(x), y


@pytest.fixture(scope="module")
def mlp():
    """A plain classifier ``[B, 1, 8, 8] -> [B, 10]`` trained on digits (~95% test accuracy)."""
    x, y = load_dataset("digits", "train")
    x = to_float(x)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _fooled(model, x, y):
    with torch.no_grad():
        return model(x).argmax(-1) != y


SMALL = {
    "fgsm": {"eps": EPS},
    "bim": {"eps": EPS, "steps": 3},
    "pgd": {"eps": EPS, "steps": 3, "restarts": 2},
    "apgd": {"eps": EPS, "steps": 4},
    "apgd-ce": {"eps": EPS, "steps": 4},
    "apgd-dlr": {"eps": EPS, "steps": 4},
    "cw": {"steps": 5, "lr": 0.1},
    "cw-l2": {"steps": 5, "lr": 0.1},
    "autoattack": {"eps": EPS, "version": "custom", "attacks": ("apgd-ce",), "steps": 3},
}


def test_registry_names_every_attack_and_rejects_bad_input():
    assert set(list_attacks()) == set(SMALL)
    assert list_losses() == ["ce", "cw", "dlr", "logit"]
    assert list_surfaces(2) == ["sum", "mean-softmax", "members", "member:1", "member:2"]
    assert "eps" in attack_parameters("pgd") and "kappa" in attack_parameters("cw")
    with pytest.raises(DmlError, match="unknown attack 'nope'; choose one of fgsm"):
        create_attack("nope", eps=0.1)
    with pytest.raises(DmlError, match="has no parameter 'kappa'"):
        create_attack("pgd", eps=0.1, kappa=1)
    for bad in (-0.1, 1.5):
        with pytest.raises(DmlError, match="outside"):
            create_attack("pgd", eps=bad)
    with pytest.raises(DmlError, match="unknown loss"):
        create_attack("pgd", eps=0.1, loss="hinge")
    with pytest.raises(DmlError, match="unknown surface 'bad'"):
        Objective(tiny_ensemble(), surface="bad")
    with pytest.raises(DmlError, match="unknown decision"):
        Objective(tiny_ensemble(), decision="member:9")


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("surface", ["sum", "members"])
def test_every_attack_respects_its_budget_and_the_pixel_range(name, surface, digits):
    if name == "autoattack" and surface == "members":
        pytest.skip("AutoAttack needs class scores")
    x, y = digits[0][:24], digits[1][:24]
    model = tiny_ensemble("dml", 3)
    attack = create_attack(name, **SMALL[name])
    x_adv = attack(Objective(model, surface, "vote"), x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    if attack.eps is not None:
        assert (x_adv - x).abs().max() <= attack.eps + 1e-6
    assert attack.setting()["seed"] == 0


def test_targeted_attack_hits_random_wrong_targets(mlp, digits):
    x, y = digits[0][:100], digits[1][:100]
    gen = torch.Generator().manual_seed(0)
    from dmlcli.attacks import random_targets

    t = random_targets(y, 10, gen)
    assert (t != y).all()
    x_adv = create_attack("pgd", eps=0.3, steps=20, targeted=True)(mlp, x, y, t)
    with torch.no_grad():
        hit = (mlp(x_adv).argmax(-1) == t).float().mean().item()
    assert hit > 0.6
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6


def test_pgd_agrees_with_torchattacks(mlp, digits):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = digits[0][:300], digits[1][:300]
    eps, alpha, steps = 0.08, 0.02, 10
    ours = create_attack("pgd", eps=eps, steps=steps, step_size=alpha, seed=3)(mlp, x, y)
    torch.manual_seed(3)
    ref = torchattacks.PGD(mlp, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
    acc_ours = 100 * (~_fooled(mlp, ours, y)).float().mean().item()
    acc_ref = 100 * (~_fooled(mlp, ref, y)).float().mean().item()
    assert 10 < acc_ref < 90, acc_ref  # a budget where the comparison means something
    assert abs(acc_ours - acc_ref) <= 2.0, (acc_ours, acc_ref)
    assert acc_ours <= acc_ref  # ours keeps every fooling iterate


def test_apgd_agrees_with_autoattack_apgd(mlp, digits):
    from pyautoattack.autopgd_base import APGDAttack

    x, y = digits[0][:300], digits[1][:300]
    eps = 0.06
    for loss in ("ce", "dlr"):
        ours = create_attack(f"apgd-{loss}", eps=eps, steps=25, seed=0)(mlp, x, y)
        ref = APGDAttack(mlp, n_iter=25, eps=eps, loss=loss, seed=0, device="cpu")
        ref_adv = ref.perturb(x, y)
        acc_ours = 100 * (~_fooled(mlp, ours, y)).float().mean().item()
        acc_ref = 100 * (~_fooled(mlp, ref_adv, y)).float().mean().item()
        assert 10 < acc_ref < 90, acc_ref
        assert abs(acc_ours - acc_ref) <= 2.0, (loss, acc_ours, acc_ref)


def test_cw_needs_less_l2_than_fgsm(mlp, digits):
    x, y = digits[0][:150], digits[1][:150]
    fgsm = create_attack("fgsm", eps=0.2)(mlp, x, y)
    cw = create_attack("cw", c=1.0, steps=100, lr=0.05)(mlp, x, y)
    both = _fooled(mlp, fgsm, y) & _fooled(mlp, cw, y) & ~_fooled(mlp, x, y)
    assert both.sum() > 30
    l2_fgsm = (fgsm - x).flatten(1).norm(dim=1)[both]
    l2_cw = (cw - x).flatten(1).norm(dim=1)[both]
    assert l2_cw.mean() <= l2_fgsm.mean()
    assert (l2_cw <= l2_fgsm + 1e-6).float().mean() >= 0.9
    # A failed CW returns the clean image (distortion 0), so it counts as robust.
    missed = ~_fooled(mlp, cw, y)
    assert torch.equal(cw[missed], x[missed])


def test_cw_binary_search_never_worse_than_its_fixed_c(mlp, digits):
    """With c too small, fixed-c CW fails on most samples and calls them robust; the search
    starts from the same c (its first round is that run), so every sample it returns is at
    least as close, and it fools many more."""
    x, y = digits[0][:100], digits[1][:100]
    right = ~_fooled(mlp, x, y)
    fixed = create_attack("cw", c=0.01, steps=60, lr=0.05)(mlp, x, y)
    search = create_attack("cw", c=0.01, steps=60, lr=0.05, search_steps=5)(mlp, x, y)
    ok_fixed = _fooled(mlp, fixed, y) & right
    ok_search = _fooled(mlp, search, y) & right
    assert ok_search.sum() >= ok_fixed.sum() + 20, (ok_fixed.sum(), ok_search.sum())
    assert bool((ok_search | ~ok_fixed).all())  # nothing the fixed run fooled is lost
    l2 = lambda a: (a - x).flatten(1).norm(dim=1)  # noqa: E731
    assert bool((l2(search)[ok_fixed] <= l2(fixed)[ok_fixed] + 1e-6).all())
    assert torch.equal(search[~ok_search & right], x[~ok_search & right])
    spec = create_attack("cw", search_steps=5).setting()
    assert spec["search_steps"] == 5 and "search_steps" not in create_attack("cw").setting()
    with pytest.raises(DmlError, match="search_steps"):
        create_attack("cw", search_steps=-1)


def test_searched_cw_is_labelled_apart_from_the_papers_fixed_c():
    from dmlcli.report.tables import attack_title

    fixed = [s for s in rob.paper_suite([0.1], rob.Budgets(), "vote") if s.attack == "cw"]
    searched = rob.paper_suite([0.1], rob.Budgets(cw_search_steps=3), "vote")
    searched = [s for s in searched if s.attack == "cw"]
    assert [s.label for s in fixed] == ["cw-200"] and [s.label for s in searched] == [
        "cw-search-200"
    ]
    assert searched[0].params["search_steps"] == 3
    assert attack_title("cw-200", None, 1.0) == "CW-200 c=1"
    assert attack_title("cw-search-200", None, 1.0) == "CW (c searched)-200"


def test_eot_matters_only_for_a_randomized_head(digits):
    x, y = digits[0][:16], digits[1][:16]
    attack = create_attack("pgd", eps=EPS, steps=3, keep="loss")
    for head, differs in (("rdml", True), ("dml", False)):
        model = tiny_ensemble(head, 3, head_samples=2, head_sigma=0.5)
        one = attack(Objective(model, eot=1), x, y)
        many_obj = Objective(model, eot=4)
        many = attack(many_obj, x, y)
        assert many_obj.eot == (4 if differs else 1)
        assert (not torch.equal(one, many)) == differs


def test_members_surface_fools_the_vote_where_sum_cannot():
    class Lopsided(nn.Module):
        """Member 1: huge gain, unfoolable; members 2, 3: tiny gain, flip when p > 0.55.

        The summed logits follow member 1 (p goes down), so the vote never changes; the
        members surface ignores member 1's saturated loss and pushes members 2 and 3 over.
        """

        num_members = 3

        def forward(self, x):
            p = x[:, 0, 0, 0] - 0.5
            zero = torch.zeros_like(p)
            big = torch.stack([100 * (1 + p), zero, zero - 500], -1)
            small = torch.stack([0.05 - p, zero, zero - 5], -1)
            return torch.stack([big, small, small])

    model = Lopsided()
    x = torch.full((32, 1, 1, 2), 0.5)
    x[:, 0, 0, 0] = torch.linspace(0.45, 0.54, 32)
    y = torch.zeros(32, dtype=torch.long)
    assert (Objective(model).predict(x) == y).all()
    attack = create_attack("bim", eps=0.2, steps=10)  # no random start: only gradients act
    by_sum = attack(Objective(model, "sum", "vote"), x, y)
    by_members = attack(Objective(model, "members", "vote"), x, y)
    assert (Objective(model).predict(by_sum) == y).all()
    assert (Objective(model).predict(by_members) != y).all()


def test_losses_have_the_documented_sign():
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0]])
    y, t = torch.tensor([0]), torch.tensor([1])
    assert create_loss("cw")(z, y, None).item() == pytest.approx(-2.0)
    assert create_loss("cw")(z, y, t).item() == pytest.approx(-2.0)
    assert create_loss("logit")(z, y, None).item() == pytest.approx(-3.0)
    assert create_loss("dlr")(z, y, None).item() == pytest.approx(-2.0 / 3.0)
    assert create_loss("ce")(z, y, None).item() < create_loss("ce")(z, t, None).item()


def test_autoattack_warnings_are_captured_not_swallowed(digits):
    x, y = digits[0][:20], digits[1][:20]
    model = tiny_ensemble("rdml", 3, head_samples=2, head_sigma=1.0)
    attack = AutoAttack(eps=EPS, version="custom", attacks=("apgd-ce",), steps=2)
    x_adv = attack(Objective(model), x, y)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    assert any("randomized defense" in w for w in attack.warnings), attack.warnings
    assert AutoAttack(eps=EPS).resolved_version(randomized=True) == "rand"
    with pytest.raises(DmlError, match="class scores"):
        attack(Objective(model, "members"), x, y)


def _frames(model, x_u8, y, idx, specs):
    frames = []
    context = {"run": "t", "checkpoint": "0", "dataset": "digits", "n": len(idx), "seed": 0}
    for spec in specs:
        df, _, _ = rob.run_spec(model, spec, x_u8, y, idx, seed=0, batch_size=32)
        frames.append(rob.describe(df, spec, spec.build(0), context))
    return frames


def test_robust_never_exceeds_clean_and_worst_case_is_the_rowwise_and():
    x_u8, y = load_dataset("digits", "test")
    idx = torch.arange(0, 80)
    model = tiny_ensemble("rdml", 3, head_samples=2, head_sigma=0.5)
    specs = [
        rob.AttackSpec("fgsm", "fgsm", {"eps": 0.05}),
        rob.AttackSpec("pgd-3", "pgd", {"eps": 0.05, "steps": 3}, surface="members", eot=2),
        rob.AttackSpec("apgd-dlr", "apgd-dlr", {"eps": 0.05, "steps": 3}, "member:2"),
    ]
    frames = _frames(model, x_u8, y, idx, specs)
    for f in frames:
        assert (f["robust"] <= f["clean_correct"]).all()
        assert list(f["sample"]) == idx.tolist()
        assert {"member_1", "member_3", "linf", "l2", "x_adv"} - set(f.columns) == {"x_adv"}
    worst = rob.worst_case(frames)
    expected = frames[0]["robust"] & frames[1]["robust"] & frames[2]["robust"]
    assert worst["robust"].tolist() == expected.tolist()
    assert (worst["attack"] == "worst-case").all()
    broken = worst["clean_correct"] & ~worst["robust"]
    assert (worst.loc[broken, "broken_by"] != "").all()
    _, robust = rob.robust_accuracy(worst)
    assert robust <= min(rob.robust_accuracy(f)[1] for f in frames)


def test_worst_case_on_handmade_rows():
    def frame(robust, name):
        return pd.DataFrame(
            {
                "sample": [0, 1, 2, 3],
                "clean_correct": [True, True, True, False],
                "robust": robust,
                "adv_correct": robust,
                "adv_pred": [9, 9, 9, 9],
                "member_1": [1, 1, 1, 1],
                "linf": [0.1] * 4,
                "l2": [1.0] * 4,
                "attack": name,
                "seconds": [1.0] * 4,
            }
        )

    a = frame([True, False, True, False], "a")
    b = frame([True, True, False, False], "b")
    worst = rob.worst_case([a, b])
    assert worst["robust"].tolist() == [True, False, False, False]
    assert worst["broken_by"].tolist() == ["", "a", "b", ""]
    with pytest.raises(DmlError, match="same samples"):
        rob.worst_case([a, frame([True] * 4, "c").assign(sample=[0, 1, 2, 5])])
