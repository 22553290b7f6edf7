"""MORA, ARC and RayS: each breaks a hand-built case that the gradient attacks leave robust,
keeps the budget and the pixel range, is fixed by its seed, and refuses bad parameters."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dmlcli.attacks import Objective, attack_parameters, create_attack, list_attacks
from dmlcli.attacks.losses import create_loss
from dmlcli.errors import DmlError

ENSEMBLE_ATTACKS = ("mora", "arc", "rays")


class LinearMembers(nn.Module):
    """K fixed affine members on flattened pixels: ``[B, C, H, W]`` -> ``[K, B, classes]``,
    ``logits_k = W_k x + b_k`` (``W`` ``[K, classes, D]``, ``b`` ``[K, classes]``)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w)
        self.register_buffer("b", b)
        self.num_members = w.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("kcd,bd->kbc", self.w, x.flatten(1)) + self.b[:, None, :]


class NoisyMembers(LinearMembers):
    """:class:`LinearMembers` plus Gaussian noise on the logits (a randomized head)."""

    randomized = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out + 0.3 * torch.randn_like(out)


class Quantized(nn.Module):
    """``round(4 x) / 4`` then a linear layer: ``[B, 1, 2, 2]`` -> ``[B, 2]``. Autograd gives
    it a zero gradient everywhere (``round`` has derivative 0). It counts the rows it is asked
    about and the calls made with gradients enabled."""

    def __init__(self) -> None:
        super().__init__()
        # logit_1 - logit_0 = w . q - 0.9 with w = (1, -1, 1, -1): at x = 0.5 (q = 0.5) the
        # margin is 0.9; within eps = 0.15 only q = (0.75, 0.25, 0.75, 0.25) (every pixel past
        # its rounding threshold 0.5 +- 0.125 in the sign pattern + - + -) gives w . q = 1.
        self.register_buffer("w", torch.tensor([[0.0, 0, 0, 0], [1.0, -1, 1, -1]]))
        self.register_buffer("b", torch.tensor([0.0, -0.9]))
        self.rows = 0
        self.grad_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        self.grad_calls += int(torch.is_grad_enabled())
        q = torch.round(x * 4) / 4
        return q.flatten(1) @ self.w.t() + self.b


def hidden_vote() -> tuple[LinearMembers, torch.Tensor, torch.Tensor, float]:
    """Three members on ``[1, 1, 2, 2]`` pixels, 3 classes, ``x = 0.5``, ``y = 0``, eps 0.1.

    With ``d = x_adv - x``, ``u = (1, 1, 1, 1)``, ``v_B = (1, 1, -1, -1)``,
    ``v_C = (1, -1, 1, -1)``:

    - A (dominant): logits ``(0, -1000, -8 + 10 u.d)``. Its class-1 logit is 1000 below,
      and its margin to class 2 is at least ``8 - 10 * 0.4 = 4``: A votes 0 in the whole ball.
    - B: ``(0, 10 (v_B.d - 0.1), -5)``; C: ``(0, 10 (v_C.d - 0.1), -5)``. Each votes 1 once
      ``v.d > 0.1``, possible for both at once (e.g. ``d = 0.1 (1, 0, 0, -1)`` gives 0.2).

    Vote: A's 0 against B's and C's 1 when both flip, so the vote is wrong there. Summed
    logits: class 1 stays about 1000 below (``softmax_1 = 0`` in float32), so the sum's CE
    gradient is ``softmax_2 * 10 u``: A's direction alone. Sign steps push every pixel to
    ``+eps``, where ``v_B.d = v_C.d = 0``: B and C keep their margin of 1 and the vote its
    three votes for 0. The sum's argmax is 0 in the whole ball (sum margin >= 14).
    """
    z = torch.zeros(4)
    u = torch.ones(4)
    v_b = torch.tensor([1.0, 1, -1, -1])
    v_c = torch.tensor([1.0, -1, 1, -1])
    w = torch.stack(
        [
            torch.stack([z, z, 10 * u]),
            torch.stack([z, 10 * v_b, z]),
            torch.stack([z, 10 * v_c, z]),
        ]
    )
    # biases at x = 0.5: u.x = 2 and v.x = 0
    b = torch.tensor([[0.0, -1000, -8 - 20], [0, -1, -5], [0, -1, -5]])
    x = torch.full((1, 1, 2, 2), 0.5)
    return LinearMembers(w, b).eval(), x, torch.tensor([0]), 0.1


def _check_box(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> None:
    assert x_adv.shape == x.shape
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float((x_adv - x).abs().max()) <= eps + 1e-6


def test_mora_and_arc_break_a_vote_that_apgd_on_the_sum_leaves_robust():
    """See :func:`hidden_vote` for the construction. APGD-CE on the summed logits follows A's
    gradient and never moves B or C; MORA (its member term reweighs toward B and C, A's
    weight vanishes as A puts no mass on the runner-up) and ARC (a boundary step per member)
    flip B and C together, which flips the vote."""
    model, x, y, eps = hidden_vote()
    objective = Objective(model, "sum", "vote")
    with torch.no_grad():
        clean = model(x)
    assert clean.argmax(-1).flatten().tolist() == [0, 0, 0] and objective.predict(x).item() == 0
    # the sum's CE gradient is A's class-2 direction: every pixel up, nothing along v_B, v_C
    _, grad, _ = objective.loss_grad(x, y, create_loss("ce"))
    assert torch.equal(grad.sign().flatten(), torch.ones(4)), grad

    apgd = create_attack("apgd-ce", eps=eps, steps=20, restarts=2)(objective, x, y)
    _check_box(apgd, x, eps)
    assert objective.predict(apgd).item() == 0  # robust for APGD on the sum
    assert model(apgd).argmax(-1).flatten().tolist() == [0, 0, 0]
    # MORA's ensemble term alone (blend 0) is the sum's problem again
    alone = create_attack("mora", eps=eps, steps=20, blends=(0.0,), targets=0)(objective, x, y)
    assert objective.predict(alone).item() == 0

    for name, params in (("mora", {"steps": 20}), ("arc", {"steps": 10})):
        x_adv = create_attack(name, eps=eps, **params)(objective, x, y)
        _check_box(x_adv, x, eps)
        assert objective.predict(x_adv).item() != 0, name  # the vote is wrong
        assert model(x_adv).argmax(-1).flatten().tolist() == [0, 1, 1], name  # B, C flipped


def test_mora_runs_batched_together_each_take_their_own_gradient(monkeypatch):
    """Few samples: MORA stacks its runs (blends and targets) in one batch. Each row's
    gradient equals the gradient of that run alone (blend 0.5, blend 1, toward class 1,
    toward class 2), and the batched attack breaks the same vote as one run at a time."""
    from dmlcli.attacks import base

    model, x, y, eps = hidden_vote()
    objective = Objective(model, "sum", "vote")
    mora = create_attack("mora", eps=eps, steps=20)
    x_in = (x + 0.03 * torch.tensor([1.0, -1, 1, -1]).view(1, 1, 2, 2)).repeat(4, 1, 1, 1)
    blends = torch.tensor([0.5, 1.0, float("nan"), float("nan")])
    targets = torch.tensor([-1, -1, 1, 2])
    together, _ = mora._loss(objective, x_in, y.repeat(4), blends, targets)
    for row in range(4):
        alone, _ = mora._loss(objective, x_in[row : row + 1], y, blends[row : row + 1],
                              targets[row : row + 1])  # fmt: skip
        torch.testing.assert_close(together[row : row + 1], alone)
    assert not torch.equal(together[0], together[2])  # the rows did differ
    batched = mora(objective, x, y)
    monkeypatch.setattr(base, "TARGET_BATCH_ROWS", 1)  # one run at a time
    sequential = create_attack("mora", eps=eps, steps=20)(objective, x, y)
    for x_adv in (sequential, batched):
        _check_box(x_adv, x, eps)
        assert model(x_adv).argmax(-1).flatten().tolist() == [0, 1, 1]


def test_rays_breaks_a_zero_gradient_model_within_eps_and_the_query_budget(monkeypatch):
    """:class:`Quantized`: autograd's gradient is exactly zero, so PGD never leaves its random
    start (which lands in the adversarial orthant with odds about (1/12)^4); RayS only asks
    for labels and finds the sign pattern + - + - by its block flips (the corner of
    (1, -1, 1, 1) is already adversarial) at radius about 0.125 <= eps. One trial at a
    time, the model answers at most ``queries`` rows; trials asked ahead together (one
    sample fills a batch) give the very same point."""
    from dmlcli.attacks import base

    model, eps = Quantized(), 0.15
    x, y = torch.full((1, 1, 2, 2), 0.5), torch.tensor([0])
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(nn.functional.cross_entropy(model(x_req), y), x_req)
    assert torch.equal(grad, torch.zeros_like(x))
    pgd = create_attack("pgd", eps=eps, steps=20, restarts=2)(model, x, y)
    _check_box(pgd, x, eps)
    assert model(pgd).argmax(-1).item() == 0  # PGD fails

    batched = create_attack("rays", eps=eps, queries=100)(model, x, y)
    monkeypatch.setattr(base, "TARGET_BATCH_ROWS", 1)  # one trial at a time
    model.rows, model.grad_calls = 0, 0
    x_adv = create_attack("rays", eps=eps, queries=100)(model, x, y)
    used, grad_calls = model.rows, model.grad_calls
    _check_box(x_adv, x, eps)
    assert model(x_adv).argmax(-1).item() == 1
    assert 0 < used <= 100 and grad_calls == 0  # within the budget, never with gradients
    radius = float((x_adv - x).abs().max())
    assert 0.125 < radius < 0.126  # the rounding threshold, to the search's tolerance
    assert torch.equal(batched, x_adv)
    # a budget too small to reach the pattern: no point found, x itself comes back
    model.rows = 0
    short = create_attack("rays", eps=eps, queries=10)(model, x, y)
    assert model.rows <= 10 and torch.equal(short, x)


def _small_case(noisy: bool) -> tuple[Objective, torch.Tensor, torch.Tensor]:
    """A random 3-member, 4-class linear ensemble on ``[6, 1, 4, 4]`` pixels (some at 0 and
    1, so clipping matters); ``noisy``: a randomized head (2 EOT draws, 3 confirmations)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 16, generator=gen)
    b = torch.randn(3, 4, generator=gen)
    x = torch.rand(6, 1, 4, 4, generator=gen)
    x[0] = 0.0
    x[1] = 1.0
    model = (NoisyMembers if noisy else LinearMembers)(w, b).eval()
    with torch.no_grad():
        y = LinearMembers(w, b)(x).sum(0).argmax(-1)
    return Objective(model, "sum", "vote", eot=2, confirm=3), x, y


SMALL = {
    "mora": {"steps": 3, "targets": 1, "blends": (0.5, 1.0)},
    "arc": {"steps": 3},
    "arc-l2": {"steps": 3, "norm": "l2"},
    "rays": {"queries": 40},
}


@pytest.mark.parametrize("noisy", [False, True], ids=["deterministic", "randomized"])
@pytest.mark.parametrize("key", sorted(SMALL))
def test_each_attack_keeps_the_budget_the_range_and_its_seed(key, noisy):
    objective, x, y = _small_case(noisy)
    name = key.split("-")[0]
    eps = 0.5 if key == "arc-l2" else 0.1
    attack = create_attack(name, eps=eps, seed=3, **SMALL[key])
    clean = x.clone()
    x_adv = attack(objective, x, y)
    assert torch.equal(x, clean)  # the input is untouched
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    norm = 2 if key == "arc-l2" else math.inf
    assert float((x_adv - x).flatten(1).norm(p=norm, dim=1).max()) <= eps + 1e-5
    again = create_attack(name, eps=eps, seed=3, **SMALL[key])(objective, x, y)
    assert torch.equal(again, x_adv)  # the same seed, the same output


def test_the_registry_names_them_and_bad_parameters_fail_in_one_line():
    assert set(ENSEMBLE_ATTACKS) <= set(list_attacks())
    assert attack_parameters("rays") == ["eps", "queries", "seed"]
    assert attack_parameters("arc") == ["eps", "steps", "step_size", "norm", "random_start", "seed"]
    assert attack_parameters("mora") == ["eps", "steps", "blends", "targets", "temperature", "seed"]
    bad = [
        ("rays", {"eps": 0.1, "queries": 0}, "queries must be an integer >= 1; got 0"),
        ("rays", {"eps": 0.1, "queries": -5}, "queries must be an integer >= 1"),
        ("rays", {"eps": 0.1, "queries": 2.5}, "queries must be an integer >= 1"),
        ("mora", {"eps": 0.1, "steps": 0}, "steps must be an integer >= 1"),
        ("mora", {"eps": 0.1, "blends": (0.5, 1.5)}, "blends must be one or more numbers"),
        ("mora", {"eps": 0.1, "blends": ()}, "blends must be one or more numbers"),
        ("mora", {"eps": 0.1, "targets": -1}, "targets must be a count >= 0"),
        ("arc", {"eps": 0.1, "step_size": 0.0}, "step size must be > 0"),
        ("arc", {"eps": 0.1, "norm": "l1"}, "unknown norm 'l1'"),
        ("arc", {"eps": 0.1, "targeted": True}, "has no parameter 'targeted'"),
    ]
    for name in ENSEMBLE_ATTACKS:
        for eps in (-0.1, 1.5, float("nan")):
            bad.append((name, {"eps": eps}, "outside \\[0, 1\\]"))
        bad.append((name, {}, "missing 1 required positional argument: 'eps'"))
    for name, params, message in bad:
        with pytest.raises(DmlError, match=message) as info:
            create_attack(name, **params)
        assert "\n" not in str(info.value), (name, params)
        assert str(info.value).startswith(f"{name}:") or "attack" in str(info.value)


def test_rays_asking_trials_ahead_changes_nothing(monkeypatch):
    """Six samples of a linear ensemble: RayS with trials asked ahead (6 samples fill a batch
    of 64 with 11 trials each) returns exactly the points of one trial at a time."""
    from dmlcli.attacks import base

    objective, x, y = _small_case(noisy=False)
    ahead = create_attack("rays", eps=0.2, queries=300)(objective, x, y)
    monkeypatch.setattr(base, "TARGET_BATCH_ROWS", 1)
    one = create_attack("rays", eps=0.2, queries=300)(objective, x, y)
    assert torch.equal(ahead, one)
    assert 0 < int((objective.predict(one) != y).sum()) < len(y)  # some found, some not
