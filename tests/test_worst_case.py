"""The honest worst case: targeted agreement attacks, AutoAttack re-checked on the decision,
randomized decisions scored over draws, and one stored worst case over every stored attack."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from dmlcli import api, results
from dmlcli.attacks import Objective, create_attack
from dmlcli.eval import robustness as rob
from dmlcli.files import read_parquet
from dmlcli.models.aggregate import vote
from dmlcli.store import Store

C = 10  # classes
EPS = 0.1


class DiverseWeakMembers(nn.Module):
    """Five members on 16x16 images split into four blocks of 64 pixels; every sample is
    labelled 0 at x = 0.5, and ``m_j`` is the mean of block j minus 0.5 (in [-0.1, 0.1]).

    Members 4-5 always vote 0 (logit 2; 1 for classes 1 and 2, so that the summed logits
    rank the wrong classes 1, 2, 4, 3). Weak member k (k = 1..3) has logit 1 for class 0, a
    class k of its own (``0.9 + 8 m_k``) and class 4 shared by all weak members
    (``0.7 + 6.4 m_4 - 3.2 m_k``). Pushed away from 0 (one by one, or through the summed or
    averaged scores), the weak members end on different wrong classes and the vote stays 0
    (two votes against at most one each). Pulled toward class 4 together (m_4 up, every m_k
    down), three members agree on 4 and the vote falls. Random starts move a block's mean by
    ~0.01 (64 pixels average out), far from the coordinated 0.1 an agreement needs.
    """

    num_members = 5
    num_classes = C
    randomized = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).view(len(x), 4, 64).mean(-1) - 0.5  # [B, 4]
        out = torch.zeros(5, len(x), C, dtype=x.dtype, device=x.device)
        for k in range(3):
            out[k, :, 0] = 1.0
            out[k, :, k + 1] = 0.9 + 8.0 * m[:, k]
            out[k, :, 4] = 0.7 + 6.4 * m[:, 3] - 3.2 * m[:, k]
        out[3:, :, 0] = 2.0
        out[3:, :, 1:3] = 1.0
        return out


def _samples(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n, 1, 16, 16), 0.5), torch.zeros(n, dtype=torch.long)


def _fooled(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vote(model(x_adv)) != y


UNTARGETED = [("pgd", {"steps": 20}), ("apgd-ce", {"steps": 20}), ("apgd-dlr", {"steps": 20})]


@pytest.mark.parametrize("surface", ["sum", "mean-softmax", "members", "member:1", "member:4"])
@pytest.mark.parametrize(("name", "params"), UNTARGETED)
def test_untargeted_surfaces_leave_the_diverse_vote_standing(surface, name, params):
    model = DiverseWeakMembers()
    x, y = _samples()
    x_adv = create_attack(name, eps=EPS, **params)(Objective(model, surface, "vote"), x, y)
    assert not _fooled(model, x_adv, y).any()
    with torch.no_grad():  # the weak members did flip, each to a class of its own
        tops = model(x_adv).argmax(-1)[:3]
    assert (tops != 0).any()


@pytest.mark.parametrize("surface", ["agree", "agree:3"])
@pytest.mark.parametrize("name", ["apgd", "pgd"])
def test_targeted_agreement_attack_fools_the_vote_where_untargeted_ones_fail(surface, name):
    model = DiverseWeakMembers()
    x, y = _samples()
    attack = create_attack(name, eps=EPS, steps=20, loss="cw", target_classes=3)
    x_adv = attack(Objective(model, surface, "vote"), x, y)
    assert _fooled(model, x_adv, y).all()
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    with torch.no_grad():
        assert (vote(model(x_adv)) == 4).all()  # the shared class, the sum's runner-up


def test_few_samples_run_their_targets_in_one_batch_and_fall_as_one_at_a_time(monkeypatch):
    """Fewer samples than TARGET_BATCH_ROWS: the three targets run in one call on stacked
    copies (18 rows), each copy with the full budget; with the rule off, one call per target
    (6 rows each). The same samples fall, on the same class (the third target, 4)."""
    from dmlcli.attacks import base
    from dmlcli.attacks.apgd import APGD

    model = DiverseWeakMembers()
    x, y = _samples()
    rows: list[int] = []
    forward = APGD.forward

    def counting(self, objective, xs, *args, **kwargs):
        rows.append(len(xs))
        return forward(self, objective, xs, *args, **kwargs)

    monkeypatch.setattr(APGD, "forward", counting)
    results, default = {}, base.TARGET_BATCH_ROWS
    for batch_rows in (default, 1):
        monkeypatch.setattr(base, "TARGET_BATCH_ROWS", batch_rows)
        rows.clear()
        attack = create_attack("apgd", eps=EPS, steps=20, loss="cw", target_classes=3)
        x_adv = attack(Objective(model, "agree", "vote"), x, y)
        assert (x_adv - x).abs().max() <= EPS + 1e-6
        with torch.no_grad():
            results[batch_rows] = (list(rows), vote(model(x_adv)))
    assert results[default][0] == [18] and results[1][0] == [6, 6, 6]
    assert (results[default][1] == 4).all() and (results[1][1] == 4).all()


def test_agreement_needs_a_target_and_the_adaptive_suite_runs_it():
    model = DiverseWeakMembers()
    x, y = _samples(2)
    with pytest.raises(Exception, match="target"):
        create_attack("pgd", eps=EPS, steps=2)(Objective(model, "agree", "vote"), x, y)
    budgets = rob.Budgets(apgd_steps=5, independent=True)  # --targets (a cascade tries all)
    specs = rob.adaptive_suite([EPS], budgets, "vote", 5, False)
    agree = [(s.label, s.surface, s.params.get("target_classes")) for s in specs]
    assert ("apgd-agree", "agree", 3) in agree and ("apgd-agree", "agree:3", 3) in agree
    assert ("apgd-t", "sum", 3) in agree and ("pgd-agree-5", "agree", 3) in agree
    with pytest.raises(Exception, match="--targets must be at least 1"):
        rob.Budgets(targets=0).validate()


class SumWrongVoteRight(nn.Module):
    """Members 1-3 vote 0 by a small margin that x_1 can erase; members 4-5 vote 5 so
    strongly that the summed logits say 5: the vote is right and the sum is wrong."""

    num_members = 5
    num_classes = C
    randomized = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x.flatten(1)
        out = torch.zeros(5, len(p), C, dtype=x.dtype, device=x.device)
        out[:3, :, 0] = 1.0
        out[:3, :, 5] = 0.9 + 5.0 * (p[:, 0] - 0.5)
        out[3:, :, 5] = 10.0
        return out


def test_autoattack_is_rechecked_on_the_decision():
    model = SumWrongVoteRight()
    x, y = _samples(4)
    objective = Objective(model, "sum", "vote")
    with torch.no_grad():
        assert (objective.predict(x) == y).all() and (model(x).sum(0).argmax(-1) != y).all()
    plain = create_attack(
        "autoattack", eps=EPS, version="custom", attacks=("apgd-ce",), steps=5, recheck=False
    )
    assert not _fooled(model, plain(objective, x, y), y).any()  # AutoAttack skipped them
    attack = create_attack("autoattack", eps=EPS, version="custom", attacks=("apgd-ce",), steps=5)
    x_adv = attack(objective, x, y)
    assert _fooled(model, x_adv, y).all()
    assert attack.counts == {"aa_sum_wrong_vote_right": 4, "rechecked": 4, "recheck_broke": 4}
    assert attack.setting()["recheck"] is True


class CoinFlip(nn.Module):
    """A randomized one-member classifier whose answer at x is wrong with probability
    ``p`` per draw (Gaussian noise on the wrong class's logit)."""

    num_members = 1
    num_classes = C
    randomized = True

    def __init__(self, margin: float = 0.5) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = len(x)
        out = torch.zeros(1, b, C, dtype=x.dtype)
        out[0, :, 0] = self.margin
        out[0, :, 1] = torch.randn(b)  # wrong (class 1) in ~31% of draws for margin 0.5
        return out + 0.0 * x.flatten(1).sum(1)[None, :, None]


def test_a_single_noisy_success_is_not_a_broken_sample():
    model = CoinFlip()
    x, y = torch.full((200, 1, 2, 2), 0.5), torch.zeros(200, dtype=torch.long)
    objective = Objective(model, "sum", "vote", confirm=15)
    torch.manual_seed(0)
    with torch.no_grad():
        one_draw = objective.fooled(objective.logits(x), y, None)
        confirmed = objective.success(x, objective.logits(x), y, None)
    assert 0.15 < one_draw.float().mean() < 0.5  # a single draw is often "fooled"
    assert confirmed.float().mean() < 0.05  # a majority of fresh draws says otherwise
    torch.manual_seed(1)
    pred, _, rate = rob.decide_over_draws(objective, x, y, draws=21)
    assert (pred == y).float().mean() > 0.95 and 0.5 < rate.mean() < 0.85


def test_scoring_over_draws_is_deterministic_given_the_seed():
    model = CoinFlip(margin=0.3)
    images = torch.full((40, 1, 2, 2), 128, dtype=torch.uint8)
    labels = torch.zeros(40, dtype=torch.long)
    idx = torch.arange(40)
    spec = rob.AttackSpec("fgsm", "fgsm", {"eps": EPS})
    rows = [
        rob.attack_batch(
            model, spec, images, labels, idx, 0, 40, seed=3, batch_size=40, score_draws=11
        )[0]  # fmt: skip
        for _ in range(2)
    ]
    for r in rows:
        r.pop("seconds")
    assert rows[0] == rows[1]
    assert set(rows[0]["score_draws"]) == {11}
    assert all(0.0 <= r <= 1.0 for r in rows[0]["adv_correct_rate"])
    other = rob.attack_batch(model, spec, images, labels, idx, 0, 40, seed=4, batch_size=40,
                             score_draws=11)[0]  # fmt: skip
    assert other["adv_correct_rate"] != rows[0]["adv_correct_rate"]


def _worst(store: Store) -> pd.DataFrame:
    (path,) = [p for p in store.list_results("worst-case")]
    return read_parquet(path)[0]


def test_the_stored_worst_case_covers_every_invocation(store_copy):
    """Paper, AutoAttack and adaptive suites in separate invocations: the stored worst case
    equals the per-sample minimum over every stored row of the checkpoint at that eps."""
    common = {"eps": ["0.1"], "n": 30, "artifacts": store_copy}
    api.attack("digits-dml", suite=["paper"], pgd_restarts=1, cw_steps=5, **common)
    store = Store(store_copy)
    first = _worst(store)
    assert first["attacks"].iloc[0] == 5  # FGSM, BIM, PGD-10/20/40 (CW is L2: left out)
    api.attack("digits-dml", suite=["autoattack"], aa_version="custom",
               aa_attack=["apgd-ce"], aa_steps=3, **common)  # fmt: skip
    api.attack("digits-dml", suite=["adaptive"], apgd_steps=3, surface=["sum", "agree"],
               surrogate="digits-baseline", **common)  # fmt: skip
    worst = _worst(store)
    frames = []
    for path in store.list_results("attack", "digits-dml"):
        df, meta = read_parquet(path)
        if meta["setting"]["params"].get("eps") == 0.1:
            frames.append(df)
    assert worst["attacks"].iloc[0] == len(frames) >= 10
    expected = pd.concat([f["robust"] for f in frames], axis=1).all(axis=1)
    assert worst["robust"].tolist() == expected.tolist()
    assert worst["robust"].sum() <= first["robust"].sum()
    broken = worst[worst["clean_correct"] & ~worst["robust"]]
    assert len(broken) and (broken["broken_by"] != "").all()
    names = {results.attack_name(f) for f in frames}
    assert set(broken["broken_by"]) <= names
    # the CLI prints it
    again = api.attack("digits-dml", suite=["paper"], pgd_restarts=1, cw_steps=5, **common)
    kinds = [r.kind for r in again.results]
    assert kinds[-1] == "worst-case" and {r.status for r in again.results} == {"cached"}
    ((stored, rows),) = again.worst_cases  # the typed outcome names the headline result
    assert stored.kind == "worst-case" and rows["robust"].tolist() == worst["robust"].tolist()
    assert len(again.of_kind("attack")) == len(kinds) - 1


def test_results_of_an_older_checkpoint_are_stale_and_left_out(store_copy, cli):
    common = {"eps": ["0.1"], "n": 20, "artifacts": store_copy}
    api.attack("digits-dml", attack=["fgsm"], **common)
    api.train("digits", members=5, epochs=1, prior="digits-baseline", force=True,
              artifacts=store_copy)  # fmt: skip
    listing = api.ls(artifacts=store_copy)
    row = listing.rows.set_index("run").loc["digits-dml"]
    assert row["stale"] >= 3 and row["results"] == 0  # fgsm, its examples, the worst case
    assert len(listing.stale) == row["stale"] and all(p.is_file() for p in listing.stale)
    api.attack("digits-dml", attack=["pgd"], steps=2, **common)
    worst = _worst_of_checkpoint(Store(store_copy), "digits-dml")
    assert worst["attacks"].iloc[0] == 1  # only the new checkpoint's PGD
    res = cli("ls", "--remove-stale", "--artifacts", store_copy)
    assert res.code == 0 and "removed" in res.out
    assert api.ls(artifacts=store_copy).rows.set_index("run").loc["digits-dml", "stale"] == 0


def _worst_of_checkpoint(store: Store, run: str) -> pd.DataFrame:
    digest = store.checkpoint_path(run)
    from dmlcli.files import read_tensor_digest

    current = read_tensor_digest(digest)
    for path in store.list_results("worst-case", run):
        df, meta = read_parquet(path)
        if meta["setting"]["checkpoint"] == current:
            return df
    raise AssertionError("no worst case of the current checkpoint")


def test_cw_distortion_counts_only_samples_the_model_got_right():
    from dmlcli.eval import transfer as tr

    model = SumWrongVoteRight()
    x = torch.full((4, 1, 2, 2), 0.5)
    y = torch.tensor([0, 0, 3, 3])  # the last two are wrong on the clean input
    params = tr.cw_params(1.0, 0.0, 20, 0.1, False)
    rows = tr.cw_batch(model, "ensemble", params, x, y, torch.arange(4), None, seed=0)
    assert not rows.loc[2:, "fooled"].any()
    assert rows.loc[2:, "clean_correct"].eq(False).all()
