"""Transferability inside an ensemble (Tables 4, 11) and adaptive CW-L2 distortion (Tables 5, 12).

``transfer_rows``: adversarials crafted on one source (``member:k`` alone, or ``ensemble`` =
the summed logits) and scored on every member and on the ensemble decision; one row per
(sample, scored model). The crafted point is the highest-loss iterate on the source
(``keep='loss'``), not the first one that fools it: a barely-fooling point says nothing about
how far it transfers, and stopping early would understate transfer. Targeted attacks aim at
random wrong labels (Table 4), drawn with the seed.

``cw_rows``: CW-L2 (c = 1, 1000 steps, lr 0.1, confidence kappa) on the ensemble (sum surface,
vote decision) and on each member alone; per sample the L2 distortion it needed (0 where it
failed) and whether the attacked model still classifies correctly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from dmlcli.attacks import Objective, create_attack, seeded
from dmlcli.attacks.base import flat_norm
from dmlcli.data import to_float
from dmlcli.errors import DmlError
from dmlcli.models.aggregate import parse_member


def list_sources(members: int) -> list[str]:
    """Names accepted as ``--source``: ``ensemble``, ``member:k``, ``all`` (every member)."""
    return ["ensemble", *[f"member:{k}" for k in range(1, members + 1)], "all"]


def resolve_sources(names: Sequence[str], members: int) -> list[str]:
    """Expand ``all`` to ``member:1..K`` and check every name (a DmlError names the choices)."""
    out: list[str] = []
    for name in names:
        if name == "all":
            out += [f"member:{k}" for k in range(1, members + 1)]
        elif name == "ensemble":
            out.append(name)
        elif name.startswith("member:"):
            parse_member(name, members)
            out.append(name)
        else:
            raise DmlError(
                f"unknown source {name!r}; choose one of {', '.join(list_sources(members))}"
            )
    return list(dict.fromkeys(out))


def source_objective(model: nn.Module, source: str, decision: str = "vote") -> Objective:
    """The objective an attack on ``source`` maximizes (and whose decision it checks)."""
    if source == "ensemble":
        return Objective(model, "sum", decision)
    return Objective(model, source, source)


def attack_params(
    attack: str,
    eps: float,
    steps: int,
    restarts: int,
    loss: str,
    targeted: bool,
    step_size: float | None = None,
) -> dict[str, Any]:
    """Checked parameters of a transfer attack; iterative ones keep the highest-loss point."""
    params: dict[str, Any] = {"eps": eps, "loss": loss, "targeted": targeted}
    if attack != "fgsm":
        params.update(steps=steps, restarts=restarts, keep="loss")
    if attack in ("pgd", "bim"):
        params["step_size"] = step_size
    if attack.startswith("apgd"):
        params.pop("loss")
    create_attack(attack, **params)  # raises a DmlError on a bad value
    return params


def tag(df: pd.DataFrame, **columns: Any) -> pd.DataFrame:
    """``df`` with constant setting columns (run, checkpoint, attack, ...) added."""
    for key, value in columns.items():
        df[key] = value
    return df


def transfer_rows(
    model: nn.Module,
    source: str,
    attack_name: str,
    params: dict[str, Any],
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    *,
    seed: int,
    decision: str = "vote",
    targets: torch.Tensor | None = None,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Craft on ``source``, score on the ensemble decision and on every member.

    ``images`` uint8 ``[N, C, H, W]``, ``labels`` ``[N]``, ``indices`` ``[n]``, ``targets``
    ``[n]`` for a targeted attack. Returns rows (sample, scored, clean/adv prediction, ...).
    """
    crafter = source_objective(model, source, decision)
    scorer = Objective(model, "sum", decision)
    k = crafter.num_members
    scored = ["ensemble", *[f"member:{i}" for i in range(1, k + 1)]]
    parts = []
    for b, start in enumerate(range(0, len(indices), batch_size)):
        idx = indices[start : start + batch_size]
        x = to_float(images[idx]).to(device)
        y = labels[idx].to(device)
        t = None if targets is None else targets[start : start + batch_size].to(device)
        attack = create_attack(attack_name, **params, seed=seed + b)
        began = time.perf_counter()
        x_adv = attack(crafter, x, y, t)
        with torch.no_grad(), seeded(seed + b, device):
            clean = scorer.logits(x)
        with torch.no_grad(), seeded(seed + b + 1_000_003, device):
            adv = scorer.logits(x_adv)
        seconds = (time.perf_counter() - began) / len(idx)
        delta = x_adv - x
        for name in scored:
            if name == "ensemble":
                cp, ap = scorer.decide(clean), scorer.decide(adv)
            else:
                m = int(name.split(":")[1]) - 1
                cp, ap = clean[m].argmax(-1), adv[m].argmax(-1)
            parts.append(
                pd.DataFrame(
                    {
                        "sample": idx.tolist(),
                        "label": y.tolist(),
                        "source": source,
                        "scored": name,
                        "target": [-1] * len(idx) if t is None else t.tolist(),
                        "clean_pred": cp.tolist(),
                        "adv_pred": ap.tolist(),
                        "clean_correct": (cp == y).tolist(),
                        "adv_correct": (ap == y).tolist(),
                        "target_hit": (ap == t).tolist() if t is not None else [False] * len(idx),
                        "linf": flat_norm(delta, "linf").tolist(),
                        "l2": flat_norm(delta, "l2").tolist(),
                        "seconds": seconds,
                    }
                )
            )
        if on_batch is not None:
            on_batch(start + len(idx))
    return pd.concat(parts, ignore_index=True)


def cw_rows(
    model: nn.Module,
    source: str,
    params: dict[str, Any],
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    *,
    seed: int,
    decision: str = "vote",
    targets: torch.Tensor | None = None,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """CW-L2 on ``source`` (Table 5): per sample the distortion and the attacked model's answer.

    ``fooled`` is true where CW found an adversarial for the source's own decision; ``l2`` is
    its distortion (0 where it did not). ``member_k`` columns hold each member's prediction
    of the adversarial; ``vote`` the ensemble decision's.
    """
    objective = source_objective(model, source, decision)
    scorer = Objective(model, "sum", decision)
    parts = []
    for b, start in enumerate(range(0, len(indices), batch_size)):
        idx = indices[start : start + batch_size]
        x = to_float(images[idx]).to(device)
        y = labels[idx].to(device)
        t = None if targets is None else targets[start : start + batch_size].to(device)
        attack = create_attack("cw", **params, seed=seed + b)
        began = time.perf_counter()
        with seeded(seed + b, device):
            clean_pred = objective.predict(x)
        x_adv = attack(objective, x, y, t)
        with torch.no_grad(), seeded(seed + b + 1_000_003, device):
            adv = scorer.logits(x_adv)
        adv_pred = objective.decide(adv)
        seconds = (time.perf_counter() - began) / len(idx)
        delta = x_adv - x
        correct = clean_pred == y
        fooled = (adv_pred != y) if t is None else (adv_pred == t)
        parts.append(
            pd.DataFrame(
                {
                    "sample": idx.tolist(),
                    "label": y.tolist(),
                    "source": source,
                    "scored": source,
                    "target": [-1] * len(idx) if t is None else t.tolist(),
                    "clean_pred": clean_pred.tolist(),
                    "adv_pred": adv_pred.tolist(),
                    "vote": scorer.decide(adv).tolist(),
                    **{f"member_{m + 1}": adv[m].argmax(-1).tolist() for m in range(len(adv))},
                    "clean_correct": correct.tolist(),
                    "adv_correct": (adv_pred == y).tolist(),
                    "robust": (correct & (adv_pred == y)).tolist(),
                    "fooled": (fooled & (flat_norm(delta, "l2") > 0)).tolist(),
                    "linf": flat_norm(delta, "linf").tolist(),
                    "l2": flat_norm(delta, "l2").tolist(),
                    "seconds": seconds,
                }
            )
        )
        if on_batch is not None:
            on_batch(start + len(idx))
    return pd.concat(parts, ignore_index=True)


def transfer_matrix(df: pd.DataFrame) -> pd.DataFrame:
    """Adversarial accuracy (%) per source (rows) and scored model (columns) from rows."""
    table = df.pivot_table(index="source", columns="scored", values="adv_correct", aggfunc="mean")
    return 100.0 * table


def cw_summary(df: pd.DataFrame) -> tuple[float, float, float]:
    """(adversarial accuracy %, mean L2 over fooled samples, fooled fraction %) of CW rows."""
    fooled = df["fooled"]
    dist = float(df.loc[fooled, "l2"].mean()) if fooled.any() else float("nan")
    return 100.0 * df["adv_correct"].mean(), dist, 100.0 * fooled.mean()
