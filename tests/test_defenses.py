"""The competing ensemble defenses (dmlcli/defenses.py): each regularizer does what its paper
says on a tiny model, the MMC centers have the Max-Mahalanobis geometry, DVERGE's distilled
features move toward the other image's, and ``--defense`` / ``--seeds`` fail in one line."""

from __future__ import annotations

import math

import pytest
import torch

from dmlcli.data import load_dataset, to_float
from dmlcli.defenses import (
    adp_terms,
    distill,
    input_gradients,
    list_defenses,
    pairwise_cosines,
    resolve_defense_args,
)
from dmlcli.errors import DmlError
from dmlcli.models.dml import mm_centers
from dmlcli.train import Trainer, TrainerSettings, run_training
from tests.helpers import tiny_ensemble

TRAIN = load_dataset("digits", "train")
TEST = load_dataset("digits", "test")
X_EVAL, Y_EVAL = to_float(TEST[0][:200]), TEST[1][:200]


def _trained(defense: str, n: int = 512, epochs: int = 2, lr: float = 1e-3, **over):
    """Three small CNNs (same init for every defense) trained on ``n`` digits."""
    head = "mmc" if defense == "mmc" else "linear"
    ens = tiny_ensemble(head=head, members=3).train()
    settings = TrainerSettings(
        epochs=epochs,
        batch_size=64,
        lr=lr,
        defense=defense,
        defense_args=resolve_defense_args(defense, over),
    )
    trainer = Trainer(ens, (TRAIN[0][:n], TRAIN[1][:n]), (TEST[0][:64], TEST[1][:64]), settings)
    run_training(trainer)
    return ens.eval(), trainer.history


def _mean_cosine(ens) -> float:
    x = X_EVAL.clone().requires_grad_(True)
    grads = input_gradients(ens(x), Y_EVAL, x, create_graph=False)
    return pairwise_cosines(grads).mean().item()


def _vote_accuracy(ens) -> float:
    with torch.no_grad():
        return (ens(X_EVAL).sum(0).argmax(-1) == Y_EVAL).float().mean().item()


def test_gal_lowers_the_members_gradient_cosine_against_ce_only():
    ce, _ = _trained("baseline")
    gal, history = _trained("gal")
    assert _mean_cosine(ce) > 0.4  # members trained alike point their gradients alike
    assert _mean_cosine(gal) < _mean_cosine(ce) - 0.4
    assert _vote_accuracy(gal) > 0.5  # and it still learns the task
    assert {"train_gal", "train_cosine", "train_ce"} <= set(history[-1])


def test_trs_lowers_the_gradient_cosine_and_warms_up_its_eps():
    ce, _ = _trained("baseline", n=256, epochs=2)
    trs, history = _trained("trs", n=256, epochs=2, pgd_steps=1)
    assert abs(_mean_cosine(trs)) < 0.1 < _mean_cosine(ce)
    eps = [row["train_eps"] for row in history]  # the mean eps of each epoch grows
    assert 0.01 < eps[0] < eps[1] < 0.03
    assert {"train_sim", "train_smooth"} <= set(history[-1])


def test_trs_pgd_points_raise_the_gradient_magnitude_within_eps():
    from dmlcli.defenses import _smoothness, trs_pgd

    ens, _ = _trained("baseline", n=256, epochs=1)
    x, y = X_EVAL[:64], Y_EVAL[:64]
    adv = trs_pgd(ens, x, y, 0.1, 5, torch.Generator().manual_seed(0))
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    before = _smoothness(ens, x.clone().requires_grad_(True), y).item()
    after = _smoothness(ens, adv.clone().requires_grad_(True), y).item()
    assert after > before


def test_adp_raises_ensemble_entropy_and_diversity():
    ce, _ = _trained("baseline", n=1000, epochs=3, lr=3e-3)
    adp, history = _trained("adp", n=1000, epochs=3, lr=3e-3)
    with torch.no_grad():
        t_ce = adp_terms(ce(X_EVAL), Y_EVAL, 2.0, 0.5)
        t_adp = adp_terms(adp(X_EVAL), Y_EVAL, 2.0, 0.5)
    assert t_adp["entropy"] > t_ce["entropy"] + 1.0  # measured 1.97 vs 0.24
    assert t_adp["log_det"] > t_ce["log_det"] + 3.0  # measured -0.6 vs -7.2
    assert _vote_accuracy(adp) > 0.8  # while still accurate: entropy did not just win
    assert {"train_entropy", "train_log_det"} <= set(history[-1])


def test_adp_terms_match_a_hand_computation():
    logits = torch.randn(2, 3, 4)
    y = torch.tensor([0, 3, 1])
    t = adp_terms(logits, y, 2.0, 0.5, det_offset=0.0)
    p = logits.softmax(-1)
    mean = p.mean(0)
    entropy = -(mean * mean.log()).sum(-1).mean()
    dets = []
    for b in range(3):
        keep = [c for c in range(4) if c != y[b]]
        m = p[:, b, keep]
        m = m / m.norm(dim=-1, keepdim=True)
        dets.append(torch.det(m @ m.T))
    log_det = torch.log(torch.stack(dets)).mean()
    ce = sum(torch.nn.functional.cross_entropy(logits[k], y) for k in range(2))
    assert torch.allclose(t["entropy"], entropy, atol=1e-5)
    assert torch.allclose(t["log_det"], log_det, atol=1e-4)
    assert torch.allclose(t["total"], ce - 2 * entropy - 0.5 * log_det, atol=1e-4)


def test_dverge_distilled_features_move_toward_the_other_images():
    ens, _ = _trained("baseline", n=256, epochs=1)
    source, target = X_EVAL[:32], X_EVAL[32:64]
    for layer in ens.feature_layers():
        out = distill(ens, 1, layer, source, target, eps=0.1, step=0.01, steps=10)
        assert (out - source).abs().max() <= 0.1 + 1e-6 and out.min() >= 0 and out.max() <= 1
        with torch.no_grad():
            goal = ens.member_features_at(target, 1, layer).flatten(1)
            before = (ens.member_features_at(source, 1, layer).flatten(1) - goal).norm(dim=1)
            after = (ens.member_features_at(out, 1, layer).flatten(1) - goal).norm(dim=1)
        assert (after < before).float().mean() > 0.9, layer
        assert after.mean() < 0.9 * before.mean(), layer


def test_dverge_trains_each_member_on_the_others_distilled_images():
    ens, history = _trained("dverge", n=256, epochs=1, steps=3)
    assert {"train_distill_ce", "train_ce"} <= set(history[-1])
    assert _vote_accuracy(ens) > 0.3
    layers = Trainer(
        tiny_ensemble(head="linear"), TRAIN, TEST, TrainerSettings(defense="dverge")
    ).distill_layers(0)
    assert len(layers) == 3 and set(layers) <= set(ens.feature_layers())


@pytest.mark.parametrize(("classes", "dim"), [(10, 10), (10, 9), (4, 6)])
def test_mmc_centers_have_the_max_mahalanobis_geometry(classes, dim):
    mu = mm_centers(classes, dim, norm=10.0)
    assert mu.shape == (classes, dim)
    gram = mu @ mu.T
    assert torch.allclose(gram.diagonal(), torch.full((classes,), 100.0), atol=1e-3)
    off = gram[~torch.eye(classes, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -100.0 / (classes - 1)), atol=1e-3)


def test_mmc_logits_and_training_pull_features_to_their_centers():
    ens = tiny_ensemble(head="mmc")
    z = ens.features(X_EVAL[:5])
    mu = ens.head.centers
    expected = -0.5 * ((z[:, :, None, :] - mu) ** 2).sum(-1)
    assert torch.allclose(ens.head(z), expected, atol=1e-4)
    before = (ens.features(X_EVAL) - mu[Y_EVAL]).norm(dim=-1).mean()
    trained, history = _trained("mmc", n=1000, epochs=3, lr=3e-3)
    after = (trained.features(X_EVAL) - trained.head.centers[Y_EVAL]).norm(dim=-1).mean()
    assert after < 0.7 * before  # measured 5.9 vs 10.0 (the centers' norm)
    assert _vote_accuracy(trained) > 0.8
    losses = [row["train_mmc"] for row in history]
    assert losses == sorted(losses, reverse=True)


def test_defense_args_are_checked():
    shipped = ["baseline", "dml", "adp", "gal", "trs", "dverge", "mmc"]
    # every shipped defense stays, in this order (--help, errors); a new one may join anywhere
    assert [d for d in list_defenses() if d in shipped] == shipped
    assert resolve_defense_args("adp") == {"alpha": 2.0, "beta": 0.5, "det_offset": 1e-6}
    assert resolve_defense_args("gal", {"lambda": "1.5"}) == {"lambda": 1.5}
    with pytest.raises(DmlError, match="adp takes alpha, beta, det_offset"):
        resolve_defense_args("adp", {"gamma": 1})
    with pytest.raises(DmlError, match="whole number"):
        resolve_defense_args("dverge", {"steps": 2.5})
    with pytest.raises(DmlError, match="finite number"):
        resolve_defense_args("gal", {"lambda": math.inf})
    with pytest.raises(DmlError, match="choose one of baseline, dml, adp"):
        resolve_defense_args("fancy")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--defense", "fancy"], "unknown --defense 'fancy'; choose one of baseline, dml, adp"),
        (["--defense", "adp", "--defense-arg", "gamma=1"], "adp takes alpha, beta, det_offset"),
        (["--defense", "gal", "--defense-arg", "lambda"], "write name=value"),
        (["--defense", "adp", "--baseline"], "--baseline is --defense baseline"),
        (["--defense", "gal", "--head", "rdml"], "trains a linear head"),
        (["--seeds", "0"], "needs at least two; use --seed for one run"),
        (["--seeds", "0,1,0"], "a seed is repeated"),
        (["--seeds", "a,b"], "whole numbers"),
        (["-k", "1", "--defense", "gal"], "at least 2 members"),
    ],
)
def test_bad_defense_and_seed_options_exit_2_with_one_line(cli, tmp_path, args, message):
    r = cli("train", "digits", "--epochs", "1", *args, "--artifacts", tmp_path)
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.err
    assert not (tmp_path / "models").exists()


def test_seeds_train_one_run_per_seed_and_priors_follow_the_seed(cli, tmp_path):
    from dmlcli.models.io import checkpoint_config

    r = cli("train", "digits", "-k", "2", "--epochs", "1", "--defense", "baseline",
            "--seeds", "0,1", "--artifacts", tmp_path)  # fmt: skip
    assert r.code == 0, r.err
    assert "digits-baseline-seed0" in r.out and "digits-baseline-seed1" in r.out
    r = cli("train", "digits", "-k", "2", "--epochs", "1", "--prior", "digits-baseline",
            "--seeds", "0,1", "--artifacts", tmp_path)  # fmt: skip
    assert r.code == 0, r.err
    for s in (0, 1):
        path = tmp_path / "models" / f"digits-dml-seed{s}" / "model.safetensors"
        config, _ = checkpoint_config(path)
        assert config.seed == s and config.prior == f"digits-baseline-seed{s}"
        assert config.training["defense"] == "dml"
    a, _ = checkpoint_config(tmp_path / "models" / "digits-baseline-seed0" / "model.safetensors")
    assert a.training["defense"] == "baseline" and a.head == "linear"


@pytest.fixture(scope="module")
def seeded_store(tmp_path_factory):
    """Two defenses (baseline, GAL) x seeds 0, 1 on digits (K = 2), attacked alike."""
    from dmlcli import api

    root = tmp_path_factory.mktemp("seeded")
    for defense in ("baseline", "gal"):
        api.train("digits", members=2, epochs=1, defense=defense, seeds="0,1", artifacts=root)
        api.attack(f"digits-{defense}", attack=["fgsm", "pgd"], eps=["0.1"], n=60, artifacts=root)
        for s in (0, 1):
            run = f"digits-{defense}-seed{s}"
            api.geometry(run, gradients=True, surface=False, n=30, artifacts=root)
            api.transfer(run, source=["all"], eps=["0.1"], n=60, artifacts=root)
    return root


def test_attack_on_a_group_reports_every_seed_and_their_mean(seeded_store):
    from dmlcli import api

    out = api.attack("digits-gal", attack=["pgd"], eps=["0.1"], n=60, artifacts=seeded_store)
    rows = [g for g in out.groups if g.attack.startswith("pgd")]
    assert len(rows) == 1 and set(rows[0].runs) == {"digits-gal-seed0", "digits-gal-seed1"}
    per_run = {}
    for r, result_rows in out:
        if r.kind == "attack":
            per_run[r.run] = 100.0 * result_rows["robust"].mean()
    assert rows[0].runs == pytest.approx(per_run)
    values = list(per_run.values())
    assert rows[0].mean == pytest.approx(sum(values) / 2)
    assert rows[0].std == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))


def test_compare_groups_per_seed_and_over_seeds(seeded_store):
    from scipy import stats

    from dmlcli import api

    out = api.compare(["digits-gal", "digits-baseline"], eps="0.1", artifacts=seeded_store)
    assert out.by_seed and out.base == "digits-gal"
    df = out.rows
    assert set(df["level"]) == {"seed 0", "seed 1", "over 2 seeds"}
    for measure in ("clean", "paper protocol", "worst case"):
        per_seed = df[(df.measure == measure) & (df.level != "over 2 seeds")]
        over = df[(df.measure == measure) & (df.level == "over 2 seeds")].iloc[0]
        diffs = per_seed["diff"].to_list()
        assert over["diff"] == pytest.approx(sum(diffs) / 2)
        if diffs[0] != diffs[1]:
            assert over["p_value"] == pytest.approx(stats.ttest_1samp(diffs, 0.0).pvalue)
            low, high = stats.t.interval(0.95, 1, loc=over["diff"], scale=stats.sem(diffs))
            assert (over["ci_low"], over["ci_high"]) == pytest.approx((low, high))


def test_compare_refuses_mixed_and_single_seed_groups(cli, seeded_store, tmp_path):
    import shutil

    r = cli("compare", "digits-gal", "digits-baseline-seed0", "--eps", "0.1",
            "--artifacts", seeded_store)  # fmt: skip
    assert r.code == 2 and "compare groups with groups" in r.err
    assert len(r.err.strip().splitlines()) == 1
    copy = tmp_path / "store"
    shutil.copytree(seeded_store, copy)
    shutil.rmtree(copy / "models" / "digits-gal-seed1")
    r = cli("compare", "digits-gal", "digits-baseline", "--eps", "0.1", "--artifacts", copy)
    assert (
        r.code == 2
        and "needs at least two seeds that digits-gal and digits-baseline share" in r.err
    )
    assert len(r.err.strip().splitlines()) == 1


def test_report_puts_the_defenses_side_by_side(seeded_store, tmp_path):
    from dmlcli.report.collect import collect
    from dmlcli.report.tables import defenses_seed_table, defenses_table
    from dmlcli.store import Store

    col = collect(Store(seeded_store))
    table = defenses_table(col, "digits")
    seeds = defenses_seed_table(col, "digits")
    assert [row[:3] for row in table.rows] == [
        ["baseline", "digits-baseline", 2],
        ["gal", "digits-gal", 2],
    ]
    assert len(seeds.rows) == 4  # every seed's numbers, never only their mean
    for column in ("clean", "paper protocol 0.1", "worst case 0.1", "member grad cosine",
                   "member transfer %"):  # fmt: skip
        j, k = table.columns.index(column), seeds.columns.index(column)
        for row in table.rows:
            values = [s[k] for s in seeds.rows if s[1].startswith(row[1] + "-seed")]
            assert all(v is not None for v in values), column
            mean = float(str(row[j]).split(" ± ")[0])
            assert mean == pytest.approx(
                sum(values) / 2, abs=10 ** -(3 if "cosine" in column else 2)
            )
    cosine = seeds.columns.index("member grad cosine")
    by_defense = {s[0]: [] for s in seeds.rows}
    for s in seeds.rows:
        by_defense[s[0]].append(s[cosine])
    assert max(by_defense["gal"]) < min(by_defense["baseline"])  # GAL's regularizer at work


def test_member_transfer_rate_on_constructed_rows():
    import pandas as pd

    from dmlcli.report.tables import member_transfer_rate

    rows = []
    # sample 0: member 1's adversarial fools member 1 and member 2; member 2's fools only 2.
    # sample 1: member 1's adversarial does not fool member 1 (left out); member 2's fools 2, 1.
    outcome = {(0, "member:1", "member:1"): False, (0, "member:1", "member:2"): False,
               (0, "member:2", "member:2"): False, (0, "member:2", "member:1"): True,
               (1, "member:1", "member:1"): True, (1, "member:1", "member:2"): False,
               (1, "member:2", "member:2"): False, (1, "member:2", "member:1"): False}  # fmt: skip
    for (sample, source, scored), correct in outcome.items():
        rows.append({"sample": sample, "source": source, "scored": scored,
                     "clean_correct": True, "adv_correct": correct})  # fmt: skip
    # counted pairs: (0, 1->2) fooled, (0, 2->1) not, (1, 2->1) fooled: 2 of 3
    assert member_transfer_rate(pd.DataFrame(rows)) == pytest.approx(200 / 3)


def test_mmc_trains_a_single_model_too(cli, tmp_path):
    from dmlcli.models.io import checkpoint_config

    r = cli("train", "digits", "-k", "1", "--defense", "mmc", "--epochs", "1",
            "--artifacts", tmp_path)  # fmt: skip
    assert r.code == 0, r.err
    config, meta = checkpoint_config(tmp_path / "models" / "digits-mmc" / "model.safetensors")
    assert config.members == 1 and config.head == "mmc"
    assert meta["benign"]["vote"] == meta["benign"]["member:1"] > 50


# -- the loss scales of the published code, on constructed cases -------------------------------
class _LinearMembers(torch.nn.Module):
    """K linear members ``F_k(x) = W_k x`` (pixels flattened): logits ``[K, B, C]``, and each
    sample's input gradient of its CE is ``W_k^T (softmax(W_k x) - onehot(y))`` by hand."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(weights)  # [K, C, D]
        self.num_members = weights.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("kcd,bd->kbc", self.w, x.flatten(1))


def _hand_smoothness(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """TRS's code (trainer.py TRS_Trainer + utils_ensemble.Magnitude), written out: for each
    member the gradient of the batch-MEAN CE (row b = sample b's CE gradient / B), then
    ``2 * mean_b sum_d g^2``, summed over members and divided by the member count."""
    k, c, _ = w.shape
    b = x.shape[0]
    flat = x.flatten(1)
    total = torch.zeros(())
    for m in range(k):
        p = torch.softmax(flat @ w[m].T, dim=-1)  # [B, C]
        g = (p - torch.nn.functional.one_hot(y, c).float()) @ w[m] / b  # [B, D]
        total = total + 2.0 * (g**2).sum(1).mean()
    return total / k


def test_trs_smoothness_is_the_published_squared_gradient_magnitude():
    from dmlcli.defenses import trs_terms

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 6, generator=gen) * torch.tensor([0.2, 1.0, 3.0]).view(3, 1, 1)
    x = torch.rand(8, 1, 2, 3, generator=gen)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    model = _LinearMembers(w)
    args = {"coeff": 2.0, "lamda": 2.0, "scale": 5.0, "eps": 0.0, "init_eps": 0.0, "pgd_steps": 1}
    terms, _ = trs_terms(model, x, y, args, 0.0, torch.Generator().manual_seed(1))
    expected = _hand_smoothness(w, x, y)  # eps 0: the PGD half is the clean half
    assert torch.allclose(terms["smooth"], expected, rtol=1e-5, atol=0), (
        terms["smooth"].item(),
        expected.item(),
    )


def test_trs_pgd_climbs_the_published_smoothness():
    from dmlcli.defenses import trs_pgd

    gen = torch.Generator().manual_seed(2)
    w = torch.randn(3, 4, 6, generator=gen) * torch.tensor([0.2, 1.0, 3.0]).view(3, 1, 1)
    x = torch.rand(16, 1, 2, 3, generator=gen) * 0.5 + 0.25  # no clamping at eps 0.1
    y = torch.arange(16) % 4
    eps = 0.1
    adv = trs_pgd(_LinearMembers(w), x, y, eps, 1, torch.Generator().manual_seed(3))
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1
    start = (x + eps * noise).clamp(0, 1).requires_grad_(True)
    (g,) = torch.autograd.grad(_hand_smoothness(w, start, y), start)
    expected = torch.min(torch.max(start + eps / 3 * g.sign(), x - eps), x + eps).clamp(0, 1)
    assert torch.equal(adv, expected.detach()), int((adv != expected).sum())


def test_dverge_member_loss_sums_the_other_members_distilled_ce(monkeypatch):
    import dmlcli.defenses as defenses

    gen = torch.Generator().manual_seed(4)
    k, b, c = 3, 5, 4
    w = torch.randn(k, c, 6, generator=gen)
    x = torch.rand(b, 1, 2, 3, generator=gen)
    y = torch.tensor([0, 1, 2, 3, 1])
    shifted = [(x + 0.1 * (i + 1) * torch.randn(x.shape, generator=gen)) for i in range(k)]

    def fake_distill(ensemble, i, layer, source, target, eps, step, steps):
        return shifted[i]  # member i's distilled images, fixed for the hand computation

    monkeypatch.setattr(defenses, "distill", fake_distill)
    model = _LinearMembers(w)
    args = {"eps": 0.07, "step": 0.007, "steps": 1, "clean": 0.0}
    terms, _ = defenses.dverge_terms(model, model, x, y, args, ["l"] * k, gen)
    expected = torch.zeros(())
    per_member = []
    for j in range(k):  # DVERGE's train_dverge.py: loss_j = sum_{i != j} CE(F_j(x'_i), y)
        loss_j = torch.zeros(())
        for i in range(k):
            if i == j:
                continue
            logits = shifted[i].flatten(1) @ w[j].T
            loss_j = loss_j - logits.log_softmax(-1)[torch.arange(b), y].mean()
        per_member.append(loss_j)
        expected = expected + loss_j
    assert torch.allclose(terms["distill_ce"], expected, rtol=1e-5), (
        terms["distill_ce"].item(),
        expected.item(),
    )
    assert torch.allclose(terms["total"], expected, rtol=1e-5)
