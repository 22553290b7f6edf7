"""Decision rules: member logits ``[K, B, C]`` -> one answer per sample.

The paper scores every attack on the majority vote of the members' top-1 labels (Section 3.3)
and crafts it on the sum of member logits; these are kept apart so that the attack surface
and the decision rule can be chosen independently. ``REJECT`` (-1) marks an input the
threshold-nu rule (A.4, Eq. 8) refuses to classify, and a tie under ``vote-strict``.

Tie rules (stated in the README and the results schema):

- ``vote`` / ``meta-vote``: a tie between the most voted classes goes to the tied class with
  the largest summed logit (part of the classifier, as the paper's code does it);
- ``vote-strict``: a tie between the most voted classes is no answer (``REJECT``), so a tie
  involving the label never counts as correct (the conservative number);
- over several draws of a randomized head (:func:`majority_over_draws`): a sample is correct
  only if its label strictly wins the majority of the draws' decisions; a tie is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from dmlcli.errors import DmlError

REJECT = -1
Decision = Callable[[torch.Tensor], torch.Tensor]


def sum_logits(logits: torch.Tensor) -> torch.Tensor:
    """Summed member logits ``[K, B, C]`` -> ``[B, C]`` (the paper's attack surface)."""
    return logits.sum(0)


def mean_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Average of member probabilities ``[K, B, C]`` -> ``[B, C]``."""
    return logits.softmax(-1).mean(0)


def vote_counts(
    logits: torch.Tensor, ignore: Sequence[Sequence[int]] | None = None
) -> torch.Tensor:
    """Votes per class ``[B, C]`` from member logits ``[K, B, C]``.

    ``ignore[k]`` lists labels whose votes from member k are dropped (the meta-model).
    """
    k, b, c = logits.shape
    top1 = logits.argmax(-1)  # [K, B]
    votes = torch.nn.functional.one_hot(top1, c).to(logits.dtype)  # [K, B, C]
    if ignore is not None:
        keep = torch.ones(k, c, dtype=logits.dtype, device=logits.device)
        for member, labels in enumerate(ignore):
            keep[member, list(labels)] = 0
        votes = votes * keep[:, None, :]
    return votes.sum(0)


def _argmax_ties_by_sum(counts: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Most voted class; among tied classes the one with the largest summed logit."""
    best = counts.max(-1, keepdim=True).values
    summed = logits.sum(0).masked_fill(counts < best, float("-inf"))
    return summed.argmax(-1)


def vote(logits: torch.Tensor) -> torch.Tensor:
    """Majority vote of the members' top-1 labels ``[K, B, C]`` -> ``[B]`` (ties: summed logits)."""
    return _argmax_ties_by_sum(vote_counts(logits), logits)


def vote_strict(logits: torch.Tensor) -> torch.Tensor:
    """Majority vote ``[K, B, C]`` -> ``[B]`` where a tie for the most votes is ``REJECT``:
    a sample is correct only if its label has strictly more votes than any other class."""
    counts = vote_counts(logits)
    top2 = counts.topk(min(2, counts.shape[-1]), dim=-1).values
    label = counts.argmax(-1)
    if top2.shape[-1] < 2:
        return label
    return torch.where(top2[:, 0] > top2[:, 1], label, torch.full_like(label, REJECT))


def majority_over_draws(
    labels: torch.Tensor, y: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The decision over ``R`` draws of a randomized model: ``labels`` ``[R, B]`` (``REJECT``
    allowed), ``y`` ``[B]`` -> (majority label ``[B]``, correct ``[B]``).

    ``correct`` is true only where ``y`` has strictly more draws than any other answer (a tie
    is wrong, whatever the labels' indices). The majority label is ``y`` exactly where
    ``correct``; elsewhere the most frequent other answer (ties: the smaller label). Both the
    stop rule of an attack and the scoring of a result use this rule.
    """
    counts = torch.nn.functional.one_hot(labels + 1, num_classes + 1).sum(0)  # [B, C + 1]
    own = counts.gather(1, (y + 1)[:, None]).squeeze(1)
    others = counts.scatter(1, (y + 1)[:, None], -1)
    correct = own > others.max(1).values
    label = torch.where(correct, y, others.argmax(1) - 1)
    return label, correct


def meta_vote(logits: torch.Tensor, trainable_sets: Sequence[Sequence[int]]) -> torch.Tensor:
    """Vote where member k's votes for labels in ``I_k`` are ignored (Section 3.3) -> ``[B]``."""
    return _argmax_ties_by_sum(vote_counts(logits, trainable_sets), logits)


def threshold_vote(logits: torch.Tensor, nu: int) -> torch.Tensor:
    """Eq. 8: the majority label if at least ``nu`` members agree on it, else ``REJECT``."""
    k = logits.shape[0]
    if not 1 <= nu <= k:
        raise DmlError(f"nu must be between 1 and the number of members ({k}); got {nu}")
    counts = vote_counts(logits)
    label = _argmax_ties_by_sum(counts, logits)
    agree = counts.gather(1, label[:, None]).squeeze(1)
    return torch.where(agree >= nu, label, torch.full_like(label, REJECT))


def list_decisions(members: int | None = None) -> list[str]:
    """Names accepted by :func:`create_decision`."""
    names = ["vote", "vote-strict", "meta-vote", "sum", "mean-softmax"]
    if members is not None:
        names += [f"member:{k}" for k in range(1, members + 1)]
    else:
        names.append("member:K")
    return names


def parse_member(name: str, members: int) -> int:
    """``'member:k'`` (1-based, as in the paper's tables) -> 0-based index."""
    try:
        k = int(name.split(":", 1)[1])
    except (IndexError, ValueError):
        raise DmlError(f"bad member spec {name!r}; write member:K with K in 1..{members}") from None
    if not 1 <= k <= members:
        raise DmlError(f"{name!r}: members are numbered 1..{members}")
    return k - 1


def create_decision(name: str, trainable_sets: Sequence[Sequence[int]]) -> Decision:
    """Decision rule ``name``: member logits ``[K, B, C]`` -> labels ``[B]``.

    ``trainable_sets`` are the ensemble's ``I_k`` (used by ``meta-vote``; its length is K).
    """
    members = len(trainable_sets)
    if name == "vote":
        return vote
    if name == "vote-strict":
        return vote_strict
    if name == "meta-vote":
        return lambda logits: meta_vote(logits, trainable_sets)
    if name == "sum":
        return lambda logits: sum_logits(logits).argmax(-1)
    if name == "mean-softmax":
        return lambda logits: mean_softmax(logits).argmax(-1)
    if name.startswith("member:"):
        k = parse_member(name, members)
        return lambda logits: logits[k].argmax(-1)
    raise DmlError(f"unknown decision {name!r}; choose one of {', '.join(list_decisions(members))}")
