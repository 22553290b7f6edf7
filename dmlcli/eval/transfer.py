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
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from dmlcli import results
from dmlcli.attacks import Objective, create_attack, random_targets
from dmlcli.attacks.base import flat_norm
from dmlcli.data import to_float
from dmlcli.errors import DmlError
from dmlcli.eval.jobs import Job, Tick, identity
from dmlcli.models.aggregate import parse_member
from dmlcli.models.io import Run
from dmlcli.runtime import scoring_seed, seeded
from dmlcli.units import format_eps

ATTACKS = ("fgsm", "bim", "pgd", "apgd-ce", "apgd-dlr")


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


def check_attack(name: str) -> str:
    """A transfer attack name (one clear line naming the choices otherwise)."""
    if name not in ATTACKS:
        raise DmlError(f"unknown transfer attack {name!r}; choose one of {', '.join(ATTACKS)}")
    return name


def cw_params(
    c: float, kappa: float, steps: int, lr: float, targeted: bool, search_steps: int = 0
) -> dict[str, Any]:
    """Checked parameters of the Table 5 CW-L2 (the search only when asked for)."""
    params: dict[str, Any] = {
        "c": c,
        "kappa": kappa,
        "steps": steps,
        "lr": lr,
        "targeted": targeted,
    }
    if search_steps:
        params["search_steps"] = search_steps
    create_attack("cw", **params)  # raises a DmlError on a bad value
    return params


def _targets(run: Run, labels: torch.Tensor, indices: torch.Tensor, seed: int, targeted: bool):
    if not targeted:
        return None
    return random_targets(labels[indices], run.num_classes, torch.Generator().manual_seed(seed))


def transfer_batch(
    model: nn.Module,
    source: str,
    attack_name: str,
    params: dict[str, Any],
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    t: torch.Tensor | None,
    *,
    seed: int,
    decision: str = "vote",
    progress: Tick | None = None,
) -> pd.DataFrame:
    """Craft on ``source`` and score on the ensemble decision and on every member.

    ``x`` float pixels ``[B, C, H, W]`` of test samples ``idx`` ``[B]``, labels ``y`` ``[B]``,
    targets ``t`` ``[B]`` of a targeted attack. ``seed`` is the batch's seed (attack, clean
    and adversarial draws). Returns one row per (sample, scored model).
    """
    crafter = source_objective(model, source, decision)
    scorer = Objective(model, "sum", decision)
    scored = ["ensemble", *[f"member:{i}" for i in range(1, crafter.num_members + 1)]]
    attack = create_attack(attack_name, **params, seed=seed)
    began = time.perf_counter()
    x_adv = attack(crafter, x, y, t, progress=progress)
    with torch.no_grad(), seeded(seed, x.device):
        clean = scorer.logits(x)
    with torch.no_grad(), seeded(scoring_seed(seed), x.device):
        adv = scorer.logits(x_adv)
    seconds = (time.perf_counter() - began) / len(idx)
    delta = x_adv - x
    parts = []
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
    return pd.concat(parts, ignore_index=True)


def cw_batch(
    model: nn.Module,
    source: str,
    params: dict[str, Any],
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    t: torch.Tensor | None,
    *,
    seed: int,
    decision: str = "vote",
    progress: Tick | None = None,
) -> pd.DataFrame:
    """CW-L2 on ``source`` (Table 5): per sample the distortion and the attacked model's answer.

    ``fooled`` is true where the source classified the clean input correctly and CW found an
    adversarial for the source's own decision; ``l2`` is its distortion (0 where it did not).
    A sample the source already gets wrong is never "fooled" (at distortion 0 it would pull
    the mean distortion down, more for the weaker members than for the ensemble).
    ``member_k`` columns hold each member's prediction of the adversarial; ``vote`` the
    ensemble decision's.
    """
    objective = source_objective(model, source, decision)
    scorer = Objective(model, "sum", decision)
    attack = create_attack("cw", **params, seed=seed)
    began = time.perf_counter()
    with seeded(seed, x.device):
        clean_pred = objective.predict(x)
    x_adv = attack(objective, x, y, t, progress=progress)
    with torch.no_grad(), seeded(scoring_seed(seed), x.device):
        adv = scorer.logits(x_adv)
    adv_pred = objective.decide(adv)
    seconds = (time.perf_counter() - began) / len(idx)
    delta = x_adv - x
    correct = clean_pred == y
    fooled = (adv_pred != y) if t is None else (adv_pred == t)
    return pd.DataFrame(
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
            "fooled": (fooled & correct & (flat_norm(delta, "l2") > 0)).tolist(),
            "linf": flat_norm(delta, "linf").tolist(),
            "l2": flat_norm(delta, "l2").tolist(),
            "seconds": seconds,
        }
    )


def transfer_job(
    run: Run,
    source: str,
    attack: str,
    params: dict[str, Any],
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    *,
    seed: int,
    decision: str = "vote",
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    cw: bool = False,
) -> Job:
    """Adversarials of ``attack`` crafted on ``source`` and scored on every member and the
    ensemble (``transfer``, Table 4), or with ``cw`` the CW-L2 distortion on ``source``
    (``cw-distortion``, Table 5; ``attack`` is then ``cw``). ``images`` uint8
    ``[N, C, H, W]``, ``labels`` ``[N]``, ``indices`` ``[n]``; batch ``b`` uses seed
    ``seed + b``; a targeted attack aims at random wrong labels drawn with ``seed``."""
    kind = "cw-distortion" if cw else "transfer"
    targeted = bool(params.get("targeted"))
    context = {**identity(run, len(indices), seed), "decision": decision, "targeted": targeted}
    setting = {**context, "kind": kind, "source": source, "attack": attack, "params": params}
    targets = _targets(run, labels, indices, seed, targeted)

    def compute(start: int, stop: int, tick: Tick) -> tuple[dict, dict]:
        idx = indices[start:stop]
        x = to_float(images[idx]).to(device)
        y = labels[idx].to(device)
        t = None if targets is None else targets[start:stop].to(device)
        b_seed = seed + start // batch_size
        args = (x, y, idx, t)
        if cw:
            df = cw_batch(run.model, source, params, *args, seed=b_seed, decision=decision,
                          progress=tick)  # fmt: skip
            df["kappa"] = params.get("kappa")
        else:
            df = transfer_batch(run.model, source, attack, params, *args, seed=b_seed,
                                decision=decision, progress=tick)  # fmt: skip
            df["eps"] = params.get("eps")
        for key in ("run", "checkpoint", "dataset", "decision", "seed", "targeted"):
            df[key] = context[key]
        df["attack"] = attack
        return {"rows": results.frame(kind, df)}, {}

    if cw:
        what = f"cw on {source} kappa {params.get('kappa', 0):g}"
    else:
        what = f"{attack} on {source} eps {format_eps(params['eps'])}"
    return Job(
        kind=kind,
        run=run.name,
        setting=setting,
        ids=indices.tolist(),
        compute=compute,
        size=batch_size,
        label=what,
        columns=["source", "scored", "adv_correct"],
    )
