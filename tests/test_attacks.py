"""Attacks: budgets, agreement with torchattacks and AutoAttack, EOT, surfaces, worst case."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from dmlcli import results
from dmlcli.attacks import (
    Attack,
    AttackBase,
    AutoAttack,
    Objective,
    attack_parameters,
    create_attack,
    list_attacks,
    list_losses,
    list_surfaces,
    random_targets,
)
from dmlcli.attacks.losses import create_loss
from dmlcli.data import load_dataset, to_float
from dmlcli.errors import DmlError
from dmlcli.eval import robustness as rob
from dmlcli.models.io import Run
from tests.helpers import attack_rows, tiny_ensemble

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
    "mora": {"eps": EPS, "steps": 3, "targets": 1, "blends": (0.5, 1.0)},
    "arc": {"eps": EPS, "steps": 2},
    "rays": {"eps": EPS, "queries": 30},
}
#: Untargeted only (no ``targeted`` parameter): tests/test_ensemble_attacks.py.
UNTARGETED = {"mora", "arc", "rays"}


def test_registry_names_every_attack_and_rejects_bad_input():
    assert set(list_attacks()) == set(SMALL)
    assert list_losses() == ["ce", "cw", "dlr", "logit"]
    plain = ["sum", "mean-softmax", "members", "member:1", "member:2"]
    assert list_surfaces(2) == [*plain, "agree", "agree:1", "agree:2"]
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
    x, y = digits[0][:24], digits[1][:24]
    if name == "autoattack" and surface == "members":  # no class scores to hand AutoAttack
        with pytest.raises(DmlError, match="class scores"):
            create_attack(name, **SMALL[name])(Objective(tiny_ensemble(), surface), x, y)
        return
    model = tiny_ensemble("dml", 3)
    attack = create_attack(name, **SMALL[name])
    x_adv = attack(Objective(model, surface, "vote"), x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    if attack.eps is not None:
        assert (x_adv - x).abs().max() <= attack.eps + 1e-6
    assert attack.setting()["seed"] == 0


LONG = {"bim", "pgd", "apgd", "apgd-ce", "apgd-dlr", "cw", "cw-l2", "autoattack"}


@pytest.mark.parametrize("name", list_attacks())
def test_every_attack_keeps_the_shared_contract(name, digits):
    """AttackBase's call: shape, [0, 1], the budget, the input untouched, the seed fixing the
    output, progress ending at 1.0 (with intermediate reports for the long attacks) and
    changing nothing, no state left on the attack, and no target for an untargeted one."""
    assert set(SMALL) == set(list_attacks())  # every registered attack has small budgets
    x, y = digits[0][:12].clone(), digits[1][:12]
    model = tiny_ensemble("dml", 3)
    attack = create_attack(name, **SMALL[name])
    assert isinstance(attack, AttackBase) and isinstance(attack, Attack)
    fields, setting = set(vars(attack)), attack.setting()
    clean = x.clone()
    seen: list[tuple[float, str]] = []
    x_adv = attack(Objective(model), x, y, progress=lambda f, info: seen.append((f, info)))
    assert torch.equal(x, clean)  # the input is not modified
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    if attack.eps is not None:
        norm = 2 if attack.norm == "l2" else float("inf")
        assert (x_adv - x).flatten(1).norm(p=norm, dim=1).max() <= attack.eps + 1e-5
    # the same seed gives the same output, with or without a progress callback
    assert torch.equal(create_attack(name, **SMALL[name])(Objective(model), x, y), x_adv)
    fractions = [f for f, _ in seen]
    assert fractions and fractions[-1] == 1.0
    assert fractions == sorted(fractions) and 0.0 <= fractions[0], seen  # in [0, 1], rising
    assert all(isinstance(info, str) and info for _, info in seen)
    if name in LONG:
        assert len(seen) >= 2, seen  # reported along the way, not only at the end
    assert set(vars(attack)) == fields and attack.setting() == setting  # no state gained
    with pytest.raises(DmlError, match="target was given to an untargeted attack"):
        attack(Objective(model), x, y, (y + 1) % 10)


@pytest.mark.parametrize("name", sorted(set(SMALL) - {"autoattack", *UNTARGETED}))
def test_targeted_attacks_draw_their_targets_with_their_seed(name, digits):
    x, y = digits[0][:8], digits[1][:8]
    objective = Objective(tiny_ensemble("dml", 3))
    attack = create_attack(name, **SMALL[name], targeted=True, seed=4)
    drawn = random_targets(y, 10, torch.Generator().manual_seed(4))
    assert torch.equal(attack(objective, x, y), attack(objective, x, y, drawn))


def test_progress_callbacks_cannot_change_an_attack(digits):
    """A callback that draws from torch's RNG runs on a fork of it: the random starts of
    later restarts and the caller's RNG stay as without it."""
    x, y = digits[0][:8], digits[1][:8]
    objective = Objective(tiny_ensemble("rdml", 3, head_samples=2, head_sigma=0.5), eot=2)
    attack = create_attack("pgd", eps=EPS, steps=4, restarts=3, keep="loss")
    torch.manual_seed(1)
    plain = attack(objective, x, y)
    after_plain = torch.rand(3)
    torch.manual_seed(1)
    noisy = attack(objective, x, y, progress=lambda f, info: torch.rand(100))
    assert torch.equal(plain, noisy) and torch.equal(torch.rand(3), after_plain)


def test_autoattack_reports_progress_per_sub_attack(mlp, digits):
    x, y = digits[0][:20], digits[1][:20]
    attack = AutoAttack(eps=0.02, version="custom", attacks=("apgd-ce", "apgd-dlr"), steps=2)
    seen: list[tuple[float, str]] = []
    plain = attack(mlp, x, y)
    assert torch.equal(attack(mlp, x, y, progress=lambda *a: seen.append(a)), plain)
    # pyautoattack's sub-attacks fill the first half, the decision-checked re-check the rest
    assert seen[:5] == [
        (0.0, "autoattack: custom (apgd-ce, apgd-dlr), clean pass"),
        (0.0, "autoattack: apgd-ce (1/2)"),
        (0.25, "autoattack: apgd-ce done"),
        (0.25, "autoattack: apgd-dlr (2/2)"),
        (0.5, "autoattack: apgd-dlr done"),
    ]
    later = [f for f, _ in seen[5:]]
    assert later and all(0.5 <= f <= 1.0 for f in later) and later == sorted(later)
    assert all(info.startswith("apgd") for _, info in seen[5:])
    assert set(attack.counts) == {"aa_sum_wrong_vote_right", "rechecked", "recheck_broke"}
    assert not any(w.startswith("stdout:") for w in attack.warnings), attack.warnings


def test_agreement_pgd_shares_the_call_but_keeps_its_randomness(digits):
    """AgreementPGD derives from AttackBase but does not re-seed the global RNG: its
    randomized-head draws follow the caller's seed (detection seeds each batch)."""
    from dmlcli.attacks.agreement import AgreementPGD

    x, y = digits[0][:8], digits[1][:8]
    model = tiny_ensemble("rdml", 3, head_samples=2, head_sigma=0.5)
    attack = AgreementPGD(eps=EPS, steps=3, eot=2, var_weight=1.0)
    assert isinstance(attack, AttackBase)
    seen: list[float] = []
    outs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outs.append(attack(model, x, y, progress=lambda f, info: seen.append(f)))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    assert seen.count(1.0) >= 3 and seen[-1] == 1.0 and any(0 < f < 1 for f in seen)
    target = (y + 1) % 10  # replaces the runner-up (not refused); an Objective is unwrapped
    torch.manual_seed(0)
    on_objective = attack(Objective(model, "members"), x, y, target)
    torch.manual_seed(0)
    assert torch.equal(on_objective, attack(model, x, y, target))
    assert attack.setting()["norm"] == "linf"


def test_attack_docstring_examples_run(digits):
    """The ``Examples:`` block of every attack class runs as a doctest."""
    import doctest

    from dmlcli.attacks import APGD, BIM, CW, FGSM, PGD
    from dmlcli.attacks.agreement import AgreementPGD

    x, y = digits[0][:8], digits[1][:8]
    globs = {
        "torch": torch,
        "create_attack": create_attack,
        "Objective": Objective,
        "AgreementPGD": AgreementPGD,
        "ensemble": tiny_ensemble("dml", 3),
        "x": x,
        "y": y,
    }
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for cls in (FGSM, BIM, PGD, APGD, CW, AutoAttack, AgreementPGD):
        doc = cls.__doc__ or ""
        assert "Shape:" in doc and "Examples:" in doc and re.search(r"\b20\d\d\b", doc), cls
        (test,) = doctest.DocTestFinder(recurse=False).find(cls, cls.__name__, globs=dict(globs))
        assert test.examples, cls.__name__
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


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
    """Every spec's rows on ``model`` (one batch), as ``dml attack`` computes them."""
    run = Run("t", model, "0" * 64, "digits")
    frames = []
    for spec in specs:
        job = rob.attack_job(run, spec, x_u8, y, idx, seed=0, batch_size=len(idx))
        frames.append(job.compute(0, len(idx), lambda fraction, info: None)[0]["rows"])
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
    worst = results.worst_case(frames)
    expected = frames[0]["robust"] & frames[1]["robust"] & frames[2]["robust"]
    assert worst["robust"].tolist() == expected.tolist()
    assert (worst["attacks"] == 3).all()
    broken = worst["clean_correct"] & ~worst["robust"]
    assert (worst.loc[broken, "broken_by"] != "").all()
    _, robust = results.robust_accuracy(worst)
    assert robust <= min(results.robust_accuracy(f)[1] for f in frames)


def test_worst_case_on_handmade_rows():
    clean = [True, True, True, False]
    a = attack_rows([True, False, True, False], clean=clean, attack="a")
    b = attack_rows([True, True, False, False], clean=clean, attack="b")
    worst = results.worst_case([a, b])
    assert worst["robust"].tolist() == [True, False, False, False]
    assert worst["broken_by"].tolist() == ["", "a (sum)", "b (sum)", ""]
    assert (worst["attacks"] == 2).all()
    with pytest.raises(DmlError, match="same samples"):
        results.worst_case([a, attack_rows([True] * 4, samples=[0, 1, 2, 5])])
