"""DML heads, the batched ensemble and the decision rules."""

from __future__ import annotations

import math

import pytest
import torch

from dmlcli.errors import DmlError
from dmlcli.models.aggregate import create_decision, meta_vote, threshold_vote, vote, vote_counts
from dmlcli.models.dml import DMLHead, make_centers, partition
from tests.helpers import tiny_ensemble


def _head(**kw) -> DMLHead:
    perms = [[0, 1, 2, 3], [3, 2, 1, 0]]
    return DMLHead(perms, [[0, 1], [2, 3]], **kw)


def test_dml_distance_matches_closed_form():
    head = _head(m_init="uniform")
    z = torch.randn(2, 5, 4)
    m = head.diag_m()
    expected = torch.empty(2, 5, 4)
    for k in range(2):
        for b in range(5):
            for c in range(4):
                diff = z[k, b] - head.centers[k, c]
                expected[k, b, c] = math.sqrt(float((diff @ torch.diag(m[k]) @ diff).detach()))
    assert torch.allclose(-head(z), expected, atol=1e-5)


def test_full_m_distance_matches_p_transpose_p():
    head = _head(m_mode="full")
    with torch.no_grad():
        head.p.add_(0.3 * torch.randn_like(head.p))
    z = torch.randn(2, 3, 4)
    m = head.m_matrix()
    diff = z[:, :, None, :] - head.centers[:, None]
    expected = torch.einsum("kbcd,kde,kbce->kbc", diff, m, diff).sqrt()
    assert torch.allclose(-head(z), expected, atol=1e-5)
    p = head.p_matrix()
    assert torch.equal(p, p.tril())  # P is lower-triangular


def test_gradient_is_finite_at_the_center():
    head = _head()
    z = head.centers[:, :1, :].clone().requires_grad_(True)  # z = c_0 for each member
    head(z).sum().backward()
    assert torch.isfinite(z.grad).all()
    assert torch.allclose(-head(z.detach())[:, 0, 0], torch.zeros(2), atol=1e-5)


def test_centers_are_distinct_permutations_of_the_identity():
    ens = tiny_ensemble(members=5)
    centers = ens.head.centers
    perms = [tuple(c.argmax(-1).tolist()) for c in centers]
    assert len(set(perms)) == 5
    for c in centers:  # each is a permuted identity
        assert torch.equal(c.sum(0), torch.ones(10)) and torch.equal(c.sum(1), torch.ones(10))


def test_1d_centers_lie_on_one_line():
    centers = make_centers([[2, 0, 1], [0, 1, 2]], "1d")
    direction = centers[0, 1] - centers[0, 0]
    for c in centers.reshape(-1, 3):
        assert torch.allclose(torch.linalg.cross(c, direction), torch.zeros(3), atol=1e-6)


def test_partition_is_disjoint_and_covers_the_classes():
    sets = partition(10, 5)
    assert sets == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    with pytest.raises(DmlError, match="members"):
        partition(3, 5)


@pytest.mark.parametrize("head", ["linear", "dml"])
def test_batched_and_looped_members_agree(head):
    batched = tiny_ensemble(head=head, members=4)
    looped = tiny_ensemble(head=head, members=4)
    batched.mode, looped.mode = "batched", "loop"
    looped.load_state_dict(batched.state_dict())
    x = torch.rand(6, 1, 8, 8)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_a, out_b = batched(xa), looped(xb)
    assert torch.allclose(out_a, out_b, atol=1e-5)
    w = torch.randn_like(out_a)
    (out_a * w).sum().backward()
    (out_b * w).sum().backward()
    assert torch.allclose(xa.grad, xb.grad, atol=1e-5)
    for (name, pa), (_, pb) in zip(
        batched.named_parameters(), looped.named_parameters(), strict=True
    ):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5), name


def test_randomized_heads_draw_noise_and_average_to_dml():
    ens = tiny_ensemble(head="rdml", head_samples=4, head_sigma=0.5)
    x = torch.rand(3, 1, 8, 8)
    assert ens.randomized
    assert not torch.allclose(ens(x), ens(x))
    quiet = tiny_ensemble(head="rdml", head_samples=2, head_sigma=0.0)
    plain = tiny_ensemble(head="dml")
    assert torch.allclose(quiet(x), plain(x), atol=1e-5)


def _logits(top1: list[list[int]], c: int = 4) -> torch.Tensor:
    """Member logits [K, B, C] whose top-1 labels are ``top1[k][b]``."""
    k, b = len(top1), len(top1[0])
    out = torch.zeros(k, b, c)
    for i in range(k):
        for j in range(b):
            out[i, j, top1[i][j]] = 1.0
    return out


def test_vote_majority_and_tie_break_by_summed_logits():
    logits = _logits([[0, 1], [0, 2], [1, 2], [1, 3]])
    logits[0, 0, 0] = 5.0  # tie 0 vs 1 in sample 0: class 0 has the larger summed logit
    assert vote(logits).tolist() == [0, 2]


def test_meta_vote_ignores_votes_for_own_labels():
    # Member 0 owns labels {0}, member 1 owns {1}, member 2 owns {2}.
    logits = _logits([[0], [0], [1]])
    assert vote(logits).tolist() == [0]
    assert meta_vote(logits, [[0], [1], [2]]).tolist() == [0]  # member 1's vote for 0 counts
    counts = vote_counts(logits, [[0], [1], [2]])
    assert counts.tolist() == [[1.0, 1.0, 0.0, 0.0]]  # member 0's vote for 0 was dropped
    assert meta_vote(_logits([[0], [1], [1]]), [[0], [1], [2]]).tolist() == [1]


def test_threshold_vote_rejects_without_agreement():
    logits = _logits([[0, 1], [0, 2], [0, 3]])
    assert threshold_vote(logits, 3).tolist() == [0, -1]
    assert threshold_vote(logits, 1).tolist()[0] == 0
    with pytest.raises(DmlError):
        threshold_vote(logits, 4)


def test_create_decision_names_choices():
    with pytest.raises(DmlError, match="vote, vote-strict, meta-vote"):
        create_decision("majority", [[0], [1]])
    member2 = create_decision("member:2", [[0], [1]])
    assert member2(_logits([[0], [3]])).tolist() == [3]
