"""Numbers that hold under review: one success rule (decision != y) for targeted iterates,
one rule for stopping and scoring randomized decisions, honest ties, a worst case monotone in
eps and current after every write (merge, concurrent writers), group summaries that never
mix sample sets, and the detector's adaptive attacker keeping wrong votes first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from dmlcli import api, results
from dmlcli.attacks import Objective, create_attack
from dmlcli.attacks.agreement import AgreementPGD
from dmlcli.eval import robustness as rob
from dmlcli.files import read_parquet
from dmlcli.models.aggregate import REJECT, create_decision, majority_over_draws, vote
from dmlcli.store import Store
from tests.helpers import attack_rows


# -- 1. targeted attacks keep iterates that fool the decision -------------------------------
class Window(nn.Module):
    """One pixel p: class 0 (the label) wins outside [0.25, 0.45), class 2 inside it; class 1
    (the target, the runner-up at p = 0.1) has logit p and never wins. Ascending the targeted
    loss toward class 1 walks p up through class 2's window and out of it again."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x.flatten(1)[:, 0]
        inside = ((p >= 0.25) & (p < 0.45)).float()
        return torch.stack([torch.full_like(p, 2.0), p, 20 * inside - 10], dim=1)


@pytest.mark.parametrize("name", ["bim", "pgd"])
def test_a_targeted_run_keeps_an_iterate_whose_decision_is_another_wrong_class(name):
    """BIM/PGD toward the runner-up (class 1) from p = 0.1 with steps of 0.2: the iterate at
    p = 0.3 is class 2 (wrong), the last one (p = 0.9) class 0 again. Before, success meant
    "decision == target", the class-2 iterate was dropped and the sample stayed robust."""
    x, y = torch.full((1, 1, 1, 1), 0.1), torch.zeros(1, dtype=torch.long)
    extra = {"random_start": False} if name == "pgd" else {}
    attack = create_attack(name, eps=0.9, steps=4, step_size=0.2, target_classes=1, **extra)
    x_adv = attack(Objective(Window(), "sum", "vote"), x, y)
    with torch.no_grad():
        assert Window()(x_adv).argmax(-1).item() == 2
    assert (x_adv - x).abs().max() <= 0.9 + 1e-6


def test_a_targeted_attack_stops_on_any_wrong_decision():
    """--targeted toward class 1: the stored outcome counts any wrong decision, so the kept
    point is the class-2 iterate, not the last (correct) one."""
    x, y = torch.full((1, 1, 1, 1), 0.1), torch.zeros(1, dtype=torch.long)
    attack = create_attack("bim", eps=0.9, steps=4, step_size=0.2, targeted=True)
    x_adv = attack(Objective(Window(), "sum", "vote"), x, y, torch.ones(1, dtype=torch.long))
    with torch.no_grad():
        assert Window()(x_adv).argmax(-1).item() != 0


# -- 2, 3. one rule for stopping and scoring over draws; ties --------------------------------
class Cycle(nn.Module):
    """A randomized classifier whose answer cycles through ``labels`` (one per forward
    pass), whatever the input."""

    randomized = True

    def __init__(self, labels: list[int], classes: int = 10) -> None:
        super().__init__()
        self.labels, self.classes, self.calls = labels, classes, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label = self.labels[self.calls % len(self.labels)]
        self.calls += 1
        out = torch.zeros(len(x), self.classes)
        out[:, label] = 1.0
        return out + 0.0 * x.flatten(1).sum(1, keepdim=True)


def test_the_stop_rule_is_the_scoring_rule():
    """Draws of 40% y, 30% a, 30% b: y wins the plurality, so the sample scores as robust and
    an attack must not stop there. Before, "more than half not y" stopped it as a success."""
    model = Cycle([0, 0, 0, 0, 3, 3, 3, 5, 5, 5])
    objective = Objective(model, "sum", "vote", confirm=20)
    x, y = torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long)
    model.calls = 4  # the logits handed in are one draw of class 3: a candidate success
    logits = objective.logits(x)
    assert objective.fooled(logits, y).item()
    model.calls = 0
    assert not objective.success(x, logits, y).item()
    model.calls = 0
    label, _, rate = rob.decide_over_draws(objective, x, y, draws=20)
    assert label.item() == 0 and rate.item() == pytest.approx(0.4)


@pytest.mark.parametrize("y_label, other", [(0, 5), (5, 0)])
def test_a_tie_over_draws_is_wrong_whatever_the_label_index(y_label, other):
    """A 10/10 split between y and another class: wrong either way. Before, the smaller
    label won the mode, so the tie counted as correct when y was the smaller one."""
    objective = Objective(Cycle([y_label, other]), "sum", "vote")
    x, y = torch.zeros(1, 1, 2, 2), torch.full((1,), y_label)
    label, _, rate = rob.decide_over_draws(objective, x, y, draws=20)
    assert label.item() == other and rate.item() == 0.5


def test_majority_over_draws():
    labels = torch.tensor([[0, 1, 2, REJECT], [0, 1, 3, REJECT], [4, 2, 2, 2]])  # [R=3, B=4]
    y = torch.tensor([0, 1, 3, 2])
    label, correct = majority_over_draws(labels, y, 10)
    assert correct.tolist() == [True, True, False, False]
    assert label.tolist() == [0, 1, 2, REJECT]  # ties: the smaller other answer


def test_vote_strict_counts_a_tie_as_no_answer():
    """Two members vote 0, two vote 1; the summed logits favour 0. ``vote`` says 0,
    ``vote-strict`` says no answer (never correct); a clear majority is the same for both."""
    logits = torch.zeros(4, 2, 3)
    logits[:2, 0, 0] = 5.0
    logits[2:, 0, 1] = 1.0
    logits[:3, 1, 2] = 1.0
    assert vote(logits).tolist() == [0, 2]
    assert create_decision("vote-strict", [[]] * 4)(logits).tolist() == [REJECT, 2]


def test_vote_strict_through_the_cli(store_copy, cli):
    args = ["--decision", "vote", "--decision", "vote-strict", "--artifacts", store_copy]
    res = cli("attack", "digits-dml", "--attack", "fgsm", "--eps", "0.1", "--n", "20", *args)
    assert res.code == 0, res.err
    worst = {}
    for path in Store(store_copy).list_results("worst-case", "digits-dml"):
        df, meta = read_parquet(path)
        worst[meta["setting"]["decision"]] = df
    assert set(worst) == {"vote", "vote-strict"}
    assert (worst["vote-strict"]["robust"] <= worst["vote"]["robust"]).all()


# -- 4. the worst case is monotone in eps -----------------------------------------------------
def test_the_worst_case_plan_includes_every_smaller_eps():
    s = {"decision": "vote", "n": 4, "seed": 0, "score_draws": 1}
    entries = [
        ("a", {**s, "params": {"eps": 0.1, "norm": "linf"}}),
        ("b", {**s, "params": {"eps": 0.3, "norm": "linf"}}),
        ("c", {**s, "seed": 1, "params": {"eps": 0.1, "norm": "linf"}}),
        ("d", {**s, "params": {"eps": None, "norm": "l2"}}),
    ]
    plan = rob.worst_case_plan(entries)
    assert plan[(0.1, "vote", 4, 0, 1)] == ["a"]
    assert plan[(0.3, "vote", 4, 0, 1)] == ["a", "b"]
    assert plan[(0.1, "vote", 4, 1, 1)] == ["c"]
    low = attack_rows([False, True, True, True], eps=0.1)
    high = attack_rows([True, True, True, False], eps=0.3, attack="fgsm")
    wc = results.worst_case([low, high], 0.3)
    assert wc["robust"].tolist() == [False, True, True, False]
    assert wc["broken_by"].tolist() == ["pgd-10 (sum) at eps 0.1", "", "", "fgsm (sum)"]
    assert wc["broken_eps"].tolist()[0] == 0.1 and wc["eps"].eq(0.3).all()


def test_a_run_attacked_at_two_eps_has_a_monotone_worst_case(store_copy):
    """PGD at eps 0.1 and a zero-step BIM at eps 0.3 (it moves nothing): before, the eps-0.3
    worst case held only the BIM and every clean-correct sample was "robust" there."""
    common = {"n": 30, "artifacts": store_copy}
    api.attack("digits-dml", attack=["pgd"], eps=["0.1"], steps=5, **common)
    api.attack("digits-dml", attack=["bim"], eps=["0.3"], steps=1, step_size=0.0, **common)
    store = Store(store_copy)
    by_eps = {}
    for path in store.list_results("worst-case", "digits-dml"):
        df, meta = read_parquet(path)
        by_eps[meta["setting"]["eps"]] = df.set_index("sample")
    low, high = by_eps[0.1], by_eps[0.3]
    assert (high["robust"] <= low["robust"]).all()
    assert high["robust"].sum() < high["clean_correct"].sum()
    assert (high.loc[~high["robust"] & high["clean_correct"], "broken_eps"] == 0.1).all()


def test_unknown_decision_exits_2_with_one_line(store_copy, cli):
    before = sorted(p.name for p in Path(store_copy).rglob("*"))
    res = cli("attack", "digits-dml", "--attack", "fgsm", "--eps", "0.1", "--n", "10",
              "--decision", "vote-strictly", "--artifacts", store_copy)  # fmt: skip
    assert res.code == 2 and res.err.strip().count("\n") == 0
    assert "vote-strict" in res.err and res.err.startswith("error:")
    assert sorted(p.name for p in Path(store_copy).rglob("*")) == before


# -- 5, 6. current after merge and with concurrent writers ------------------------------------
def _expected_worst(store: Store, run: str, eps: float) -> pd.Series:
    frames = []
    for path in store.list_results("attack", run):
        df, meta = read_parquet(path)
        e = meta["setting"]["params"].get("eps")
        if e is not None and e <= eps + 1e-12:
            frames.append(df.set_index("sample")["robust"])
    return pd.concat(frames, axis=1).all(axis=1)


def _stored_worst(store: Store, run: str, eps: float) -> pd.Series:
    (df,) = [
        read_parquet(p)[0]
        for p in store.list_results("worst-case", run)
        if read_parquet(p)[1]["setting"]["eps"] == eps
    ]
    return df.set_index("sample")["robust"]


def test_a_merge_refreshes_the_worst_case(store_copy):
    """FGSM unsharded, then PGD in two shards and ``dml merge``: the stored worst case is
    the per-sample minimum over both (before, the merge left the FGSM-only worst case)."""
    common = {"eps": ["0.1"], "n": 40, "batch_size": 10, "artifacts": store_copy}
    api.attack("digits-dml", attack=["fgsm"], **common)
    for shard in ("1/2", "2/2"):
        api.attack("digits-dml", attack=["pgd"], steps=5, shard=shard, **common)
    merged = api.merge(artifacts=store_copy)
    assert len(merged.rows) == 1 and merged.new_files[0].is_file()
    store = Store(store_copy)
    stored, expected = (
        _stored_worst(store, "digits-dml", 0.1),
        _expected_worst(store, "digits-dml", 0.1),
    )
    assert len(store.list_results("attack", "digits-dml")) == 2
    assert stored.tolist() == expected.tolist()
    (path,) = store.list_results("worst-case", "digits-dml")
    assert read_parquet(path)[1]["attacks"] == 2


@pytest.mark.slow
def test_two_processes_finishing_together_leave_the_full_worst_case(store_copy):
    """Two ``dml attack`` processes on one run with different attacks, started together:
    afterwards the stored worst case is the per-sample minimum over every stored row. (The
    rebuild runs under the run's lock and reads the store inside it; without it the later
    writer can miss the other's result when both finish in the same moment.)"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    common = ["--eps", "0.1", "--n", "60", "--artifacts", str(store_copy)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "dmlcli", "attack", "digits-dml", *args, *common],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for args in (["--attack", "fgsm"], ["--attack", "bim", "--steps", "2"])
    ]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    store = Store(store_copy)
    stored = _stored_worst(store, "digits-dml", 0.1)
    assert stored.tolist() == _expected_worst(store, "digits-dml", 0.1).tolist()
    (path,) = store.list_results("worst-case", "digits-dml")
    assert read_parquet(path)[1]["attacks"] == 2


def test_a_report_recomputes_a_worst_case_older_than_its_attacks(store_copy):
    """A worst case whose stored components are not the current attack results (written
    before an attack landed) is recomputed for the report, and noted."""
    from dmlcli.report.collect import collect

    common = {"eps": ["0.1"], "n": 20, "artifacts": store_copy}
    api.attack("digits-dml", attack=["fgsm"], **common)
    store = Store(store_copy)
    (wc_path,) = store.list_results("worst-case", "digits-dml")
    old = wc_path.read_bytes()
    api.attack("digits-dml", attack=["pgd"], steps=5, **common)
    wc_path.write_bytes(old)  # as if the second writer's refresh had been lost
    col = collect(store)
    (res,) = col.of("worst-case")
    assert res.meta["attacks"] == 2
    assert res.df["robust"].tolist() == _expected_worst(store, "digits-dml", 0.1).tolist()
    assert any("recomputed" in p for p in col.problems)


# -- 7. group summaries never mix sample sets ---------------------------------------------
def test_the_group_summary_keeps_sample_sets_apart(store_copy):
    """A group attacked on 4 samples, then on 2: the second call's summary is of its own 2
    samples (before, an older n = 4 worst case could overwrite it)."""
    api.train("digits", members=3, epochs=1, name="g", seeds="0,1", artifacts=store_copy)
    api.attack("g", attack=["fgsm"], eps=["0.1"], n=4, artifacts=store_copy)
    out = api.attack("g", attack=["fgsm"], eps=["0.1"], n=2, artifacts=store_copy)
    df, groups = out.rows, out.groups
    assert groups and {g.n for g in groups} == {2}
    for g in groups:
        if g.attack == "worst case":
            for run, value in g.runs.items():
                rows = df[(df["run"] == run) & (df["attack"] == "fgsm")]
                assert value == pytest.approx(100.0 * rows["robust"].mean())


# -- 10. the detector's adaptive attacker keeps a wrong vote first ----------------------------
class Agreeing(nn.Module):
    """Three members on one pixel p. At p = 0 every member says 0 (the label). Moving p up
    first puts member 1 on class 2 (the attack's target: [t, y, y], vote still y), further up
    members 1 and 2 on class 1 ([o, o, y]: the vote is wrong, no member on the target), and
    at the top every member back on 0."""

    num_members = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x.flatten(1)[:, 0]
        out = torch.zeros(3, len(p), 3)
        out[:, :, 0] = 1.0
        out[0, :, 2] = 3.0 * ((p > 0.15) & (p < 0.35)).float() + 0.1 * p  # the target
        both = ((p >= 0.35) & (p < 0.75)).float()
        out[0, :, 1] = 3.0 * both
        out[1, :, 1] = 3.0 * both
        out[2, :, 2] = 0.5 * p  # pulls p up: toward the target for member 3
        return out


def test_the_agreement_attack_keeps_a_wrong_vote_over_members_on_the_target():
    """Iterates p = 0.2 ([t, y, y], vote right, one member on the target) and p = 0.4
    ([o, o, y], vote wrong): the kept one must be p = 0.4. Before, the most members on the
    target won and the attack returned a point the vote still got right."""
    x, y = torch.zeros(1, 1, 1, 1), torch.zeros(1, dtype=torch.long)
    attack = AgreementPGD(eps=0.9, steps=5, step_size=0.2, random_start=False)
    x_adv = attack(Agreeing(), x, y, torch.full((1,), 2))
    with torch.no_grad():
        assert vote(Agreeing()(x_adv)).item() != 0


def test_eps_lists_that_cannot_be_compared_exit_2(store_copy, cli):
    """0.1 and 1/10 are one ball: two results of it would enter the worst case as one eps."""
    before = sorted(p.name for p in Path(store_copy).rglob("*"))
    res = cli("attack", "digits-dml", "--attack", "fgsm", "--eps", "0.1", "--eps", "1/10",
              "--n", "10", "--artifacts", store_copy)  # fmt: skip
    assert res.code == 2 and res.err.startswith("error:") and res.err.strip().count("\n") == 0
    assert "same budget" in res.err
    assert sorted(p.name for p in Path(store_copy).rglob("*")) == before
