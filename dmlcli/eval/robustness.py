"""White-box robustness: attack suites, per-sample result rows, the per-sample worst case.

Suites (Section 5 and beyond):

- ``paper``: FGSM, BIM-10, PGD-10, PGD-20 and PGD-40 (with ``pgd_restarts`` restarts) at every
  eps and CW-L2 (c = 1, 200 steps), crafted on the summed logits and scored on the vote
  (Tables 2, 3, 6, 9, 10), no EOT (the paper's protocol).
- ``autoattack``: AutoAttack standard on the summed logits, ``rand`` with EOT for a
  randomized head (Tables 7-8), scored on the decision.
- ``adaptive``: APGD-CE and APGD-DLR on every surface (``sum``, ``mean-softmax``, ``members``,
  ``member:k``) with EOT on randomized heads, success checked on the decision itself, plus a
  transfer attack from a surrogate ensemble; then the per-sample worst case over every
  eps-bounded attack run (robust only if it survived all of them).

Every result is one row per (sample, attack setting); samples are ``eval_indices`` of the test
split, the same for every model and attack. A sample the decision already gets wrong is not
attacked (its ``x_adv`` is ``x``) and is never robust: ``robust = clean_correct & adv_correct``,
so robust accuracy never exceeds clean accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pandas as pd
import torch
from torch import nn

from dmlcli import results
from dmlcli.attacks import AutoAttack, Objective, create_attack, list_surfaces, random_targets
from dmlcli.attacks.base import flat_norm
from dmlcli.attacks.surfaces import needs_target
from dmlcli.data import to_float
from dmlcli.errors import DmlError
from dmlcli.eval.jobs import Job, Side, Tick, identity
from dmlcli.models.aggregate import majority_over_draws
from dmlcli.models.io import Run
from dmlcli.runtime import scoring_seed, seeded
from dmlcli.units import format_eps

SUITES = ("paper", "autoattack", "adaptive")
EXAMPLES = 8  # adversarial images stored per setting (paper Fig. 19-21)


@dataclass
class AttackSpec:
    """One attack setting of a suite: what to build and how to aim and score it."""

    label: str  # e.g. "pgd-20x5", shown in tables and stored as ``attack``
    attack: str  # registry name
    params: dict[str, Any]  # parameters except seed
    surface: str = "sum"
    decision: str = "vote"
    eot: int = 1
    suite: str = "custom"
    surrogate: str | None = None  # run crafted on (transfer), scored on the target
    cascade: bool = False  # attacks only the samples every earlier stored attack left robust

    @property
    def eps(self) -> float | None:
        return self.params.get("eps")

    @property
    def eps_text(self) -> str:
        return "-" if self.eps is None else format_eps(self.eps)

    def build(self, seed: int) -> Any:
        return create_attack(self.attack, **self.params, seed=seed)


@dataclass
class Budgets:
    """Attack budgets; defaults are the paper's (and AutoAttack's) settings."""

    pgd_restarts: int = 5
    cw_c: float = 1.0
    cw_steps: int = 200
    cw_lr: float = 0.01
    cw_kappa: float = 0.0
    cw_search_steps: int = 0  # 0: the paper's fixed c; S: Carlini & Wagner's binary search
    apgd_steps: int = 100
    apgd_restarts: int = 1
    eot: int = 20
    aa_version: str = "auto"
    aa_attacks: tuple[str, ...] = ()
    aa_steps: int = 100
    square_queries: int = 5000
    surfaces: tuple[str, ...] = field(default_factory=tuple)  # adaptive; empty = all
    targets: int = 3  # wrong classes tried by the targeted adaptive attacks (APGD-T, agree)
    score_draws: int = 20  # draws a randomized decision is scored on (majority)
    queries: int = 10_000  # RayS's queries per sample (the hard-label attack of the suite)
    independent: bool = False  # adaptive: every attack on every sample (no cascade)
    cascade_order: tuple[str, ...] = ()  # adaptive: attack labels to run first, in this order

    def cw_params(self) -> dict[str, Any]:
        """CW-L2's parameters from these budgets."""
        return {
            "c": self.cw_c,
            "steps": self.cw_steps,
            "lr": self.cw_lr,
            "kappa": self.cw_kappa,
            "search_steps": self.cw_search_steps,
        }

    def validate(self) -> None:
        for key in ("pgd_restarts", "cw_steps", "apgd_steps", "apgd_restarts", "eot", "aa_steps"):
            if getattr(self, key) < 1:
                raise DmlError(f"--{key.replace('_', '-')} must be at least 1")
        if self.square_queries < 1:
            raise DmlError("--square-queries must be at least 1")
        if self.targets < 1:
            raise DmlError(f"--targets must be at least 1 (target classes); got {self.targets}")
        if self.score_draws < 1:
            raise DmlError(f"--score-draws must be at least 1; got {self.score_draws}")
        if self.queries < 1:
            raise DmlError(f"--queries must be at least 1 (RayS queries); got {self.queries}")
        for label in self.cascade_order:
            if label not in ADAPTIVE_LABELS:
                raise DmlError(
                    f"unknown attack {label!r} in --cascade-order; choose among "
                    f"{', '.join(ADAPTIVE_LABELS)}"
                )
        # Building one of each checks the remaining values with the attacks' own messages.
        create_attack("cw", **self.cw_params())
        AutoAttack(eps=0.0, version=self.aa_version, attacks=self.aa_attacks, steps=self.aa_steps)


def paper_suite(eps_list: Sequence[float], budgets: Budgets, decision: str) -> list[AttackSpec]:
    """FGSM, BIM-10, PGD-10, PGD-20/40 (restarts) per eps, and CW-L2 (Tables 2, 3, 6, 9)."""
    specs = []
    r = budgets.pgd_restarts
    for eps in eps_list:
        specs += [
            AttackSpec("fgsm", "fgsm", {"eps": eps}),
            AttackSpec("bim-10", "bim", {"eps": eps, "steps": 10}),
            AttackSpec("pgd-10", "pgd", {"eps": eps, "steps": 10}),
            AttackSpec(f"pgd-20x{r}", "pgd", {"eps": eps, "steps": 20, "restarts": r}),
            AttackSpec(f"pgd-40x{r}", "pgd", {"eps": eps, "steps": 40, "restarts": r}),
        ]
    cw = budgets.cw_params()
    label = "cw-search" if budgets.cw_search_steps else "cw"  # the search is not the paper's
    specs.append(AttackSpec(f"{label}-{budgets.cw_steps}", "cw", cw))
    for s in specs:
        s.decision, s.suite = decision, "paper"
    return specs


def autoattack_suite(
    eps_list: Sequence[float], budgets: Budgets, decision: str, randomized: bool
) -> list[AttackSpec]:
    """AutoAttack on the summed logits at every eps (``rand`` + EOT on randomized heads)."""
    version = budgets.aa_version
    if version == "auto":
        version = "rand" if randomized else "standard"
    specs = []
    for eps in eps_list:
        params = {
            "eps": eps,
            "version": version,
            "attacks": tuple(budgets.aa_attacks),
            "steps": budgets.aa_steps,
            "square_queries": budgets.square_queries,
            "eot": budgets.eot,
        }
        label = f"autoattack-{version}"
        specs.append(AttackSpec(label, "autoattack", params, decision=decision, suite="autoattack"))
    return specs


def adaptive_surfaces(members: int, chosen: Sequence[str] = ()) -> list[str]:
    """The surfaces of the adaptive suite: ``chosen`` or every one of a K-member model
    (untargeted ones and the ``agree`` surfaces alike; :func:`adaptive_suite` sorts them)."""
    valid = list_surfaces(members)
    for s in chosen:
        if s not in valid:
            raise DmlError(f"unknown surface {s!r}; choose one of {', '.join(valid)}")
    if chosen:
        return list(chosen)
    if members == 1:
        return ["sum"]
    nu = members // 2 + 1
    plain = [s for s in valid if not needs_target(s)]
    return [*plain, "agree", *([f"agree:{nu}"] if nu < members else [])]


#: The adaptive suite's attacks, strongest first: the order a cascade runs them in (each one
#: attacks only the samples every earlier one left robust). Measured on the Fashion-MNIST
#: 5-member DML ensemble (README, "What the adaptive evaluation changes"): APGD-CE and
#: APGD-DLR on the untargeted surfaces break the most samples alone (APGD-CE on the mean
#: softmax was the strongest single attack), so they go first and leave ~5-10% of the
#: samples; APGD-T and the agreement attacks each broke samples no untargeted attack did; MORA
#: and ARC (per-member steps, the costliest per sample) and RayS (thousands of queries) only
#: pay off on the few survivors; the transfer from a surrogate comes last, as a check. APGD on
#: a single member's surface (``member:k``, 2K runs) runs after all of them: one member's
#: gradient alone rarely moves a K-member vote (on the same ensemble none of the 10 broke a
#: sample the other attacks left robust, n = 60 and n = 500), so they check the few samples
#: left rather than spend time on ~10% of them.
ADAPTIVE_LABELS = (
    "apgd-ce", "apgd-dlr", "apgd-t", "apgd-agree", "pgd-agree", "mora", "arc", "rays",
    "transfer-apgd-ce",
)  # fmt: skip
#: Restarts of the targeted attacks in a cascade: they run on the few survivors, so they try
#: every wrong class (not ``--targets``) from two starts, the budget that cut the stored worst
#: case of a second held-out MNIST ensemble by 1.3 points where --targets 3 and one start did
#: not (the issue that introduced the cascade).
CASCADE_RESTARTS = 2


def adaptive_suite(
    eps_list: Sequence[float],
    budgets: Budgets,
    decision: str,
    members: int,
    randomized: bool,
    surrogate: str | None = None,
    num_classes: int = 10,
) -> list[AttackSpec]:
    """The attacks an adaptive evaluation of an ensemble needs, at every eps:

    - APGD-CE and APGD-DLR on every untargeted surface (``sum``, ``mean-softmax``,
      ``members``, ``member:k``), success checked on the decision itself;
    - APGD-T: targeted APGD-DLR on the summed logits toward the wrong classes with the
      largest summed logits (AutoAttack's APGD-T, decision-checked);
    - agreement attacks: APGD and PGD that drive every member (``agree``) or the majority
      closest to it (``agree:nu``, nu = K // 2 + 1) toward one wrong class: the vote falls
      when the members agree on a wrong class;
    - MORA (Yu et al. 2022, model reweighing), ARC (Dbouk & Shanbhag 2022, member by member)
      and RayS (Chen & Gu 2020, hard-label: only the decision, ``queries`` per sample);
    - transfer of APGD-CE adversarials from ``surrogate``.

    By default a **cascade** (``budgets.independent`` False): the attacks run in
    :data:`ADAPTIVE_LABELS` order (or ``cascade_order`` first), each on the samples every
    stored attack so far left robust, and since those are few, the targeted attacks try every
    wrong class from :data:`CASCADE_RESTARTS` starts. Independent: ``targets`` classes, the
    ``apgd_restarts`` restarts, every attack on every sample. Budgets are never lowered to
    save time. EOT draws (``eot``) on randomized heads. Every spec belongs to suite
    ``adaptive``; eps values run in increasing order (a sample broken at a smaller eps is
    broken at a larger one).
    """
    eot = budgets.eot if randomized else 1
    cascade = not budgets.independent
    steps, restarts = budgets.apgd_steps, budgets.apgd_restarts
    k = num_classes - 1 if cascade else budgets.targets
    t_restarts = max(restarts, CASCADE_RESTARTS) if cascade else restarts
    surfaces = adaptive_surfaces(members, budgets.surfaces)
    specs = []
    for eps in sorted(eps_list):
        base = {"eps": eps, "steps": steps, "restarts": restarts}
        at = []
        for surface in [s for s in surfaces if not needs_target(s)]:
            for loss in ("ce", "dlr"):
                name = f"apgd-{loss}"
                at.append(AttackSpec(name, name, base, surface, decision, eot))
        if "sum" in surfaces:
            targeted = {**base, "restarts": t_restarts, "target_classes": k}
            at.append(AttackSpec("apgd-t", "apgd-dlr", targeted, "sum", decision, eot))
        for surface in [s for s in surfaces if needs_target(s)]:
            agree = {**base, "restarts": t_restarts, "loss": "cw", "target_classes": k}
            at.append(AttackSpec("apgd-agree", "apgd", agree, surface, decision, eot))
            if surface == "agree":
                pgd = {"eps": eps, "steps": steps, "loss": "cw", "target_classes": k}
                at.append(AttackSpec(f"pgd-agree-{steps}", "pgd", pgd, surface, decision, eot))
        if members > 1:
            mora = {"eps": eps, "steps": steps, "targets": k}
            at.append(AttackSpec("mora", "mora", mora, "sum", decision, eot))
            at.append(AttackSpec("arc", "arc", {"eps": eps}, "members", decision, eot))
        rays = {"eps": eps, "queries": budgets.queries}
        at.append(AttackSpec("rays", "rays", rays, "sum", decision, 1))
        if surrogate:
            params = {**base, "keep": "loss"}
            at.append(
                AttackSpec(
                    "transfer-apgd-ce", "apgd-ce", params, "sum", decision, 1, surrogate=surrogate
                )
            )
        specs += sorted(at, key=lambda s: _cascade_rank(s, budgets.cascade_order))
    for s in specs:
        s.suite, s.cascade = "adaptive", cascade
    return specs


def cascade_label(label: str) -> str:
    """The :data:`ADAPTIVE_LABELS` entry of an adaptive attack's label (``pgd-agree-100`` is
    ``pgd-agree``)."""
    return "pgd-agree" if label.startswith("pgd-agree") else label


def _cascade_rank(spec: AttackSpec, order: Sequence[str]) -> tuple[bool, int]:
    """Where an adaptive attack runs: first those named in ``order`` (in that order), then
    the rest in :data:`ADAPTIVE_LABELS` order; attacks on one member's surface
    (``member:k``) after all others, see :data:`ADAPTIVE_LABELS`."""
    ranked = [*order, *[x for x in ADAPTIVE_LABELS if x not in order]]
    return spec.surface.startswith("member:"), ranked.index(cascade_label(spec.label))


def setting_of(spec: AttackSpec, attack: Any, context: dict[str, Any]) -> dict[str, Any]:
    """The full, stored setting of ``spec`` on a model (its result file's key)."""
    params = attack.setting()
    params.pop("name", None)
    return {
        **context,
        "attack": spec.label,
        "attack_name": spec.attack,
        "params": params,
        "surface": spec.surface,
        "decision": spec.decision,
        "eot": spec.eot,
        "surrogate": spec.surrogate,
        **({"cascade": True} if spec.cascade else {}),
    }


def batch_seed(seed: int, start: int, batch_size: int) -> int:
    """The seed of the batch at position ``start``: ``seed + start // batch_size``."""
    return seed + start // batch_size


@torch.no_grad()
def decide_over_draws(
    objective: Objective, x: torch.Tensor, y: torch.Tensor, draws: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decision on ``x`` ``[B, C, H, W]`` scored over ``draws`` forward passes (a
    randomized head draws fresh noise on each): the majority label ``[B]``, which is ``y``
    only where ``y`` strictly wins the majority of the draws
    (:func:`~dmlcli.models.aggregate.majority_over_draws`: a tie is wrong), each member's
    majority top-1 ``[K, B]``, and the share of draws whose decision is ``y`` ``[B]``. One
    draw for a deterministic model."""
    decisions, tops = [], []
    for _ in range(draws):
        logits = objective.logits(x)
        decisions.append(objective.decide(logits))
        tops.append(logits.argmax(-1))
    if draws == 1:
        return decisions[0], tops[0], (decisions[0] == y).float()
    stacked = torch.stack(decisions)  # [R, B]
    label, _ = majority_over_draws(stacked, y, logits.shape[-1])
    return label, torch.stack(tops).mode(0).values, (stacked == y).float().mean(0)


def attack_batch(
    model: nn.Module,
    spec: AttackSpec,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    start: int,
    stop: int,
    *,
    seed: int,
    batch_size: int,
    device: str | torch.device = "cpu",
    surrogate: nn.Module | None = None,
    targets: torch.Tensor | None = None,
    progress: Tick | None = None,
    score_draws: int = 1,
    skip: Mapping[int, str] | None = None,
) -> tuple[dict[str, list], list[dict], dict[str, Any]]:
    """Attack positions ``start..stop-1`` of ``indices`` ``[n]`` (one batch) and score them.

    ``images`` uint8 ``[N, C, H, W]`` (the whole test split), ``labels`` ``[N]``; ``surrogate``
    crafts the adversarials of a transfer spec; ``targets`` ``[n]`` are a targeted attack's
    labels. All randomness of the batch (random starts, randomized heads) derives from
    :func:`batch_seed` of ``(seed, start)``, never from a generator carried over from other
    batches, so a batch gives the same rows in any run, resumed or sharded. A randomized
    decision is scored on ``score_draws`` fresh draws (:func:`decide_over_draws`), clean and
    adversarial alike. ``skip`` maps samples (test-split ids) an earlier attack of a cascade
    broke to its name: they are not attacked, their ``skipped_by`` names it and they are not
    robust (their ``adv_*`` describe the unattacked input). Returns (rows as columns, example
    rows of positions below ``EXAMPLES``, the attack's notes: ``warnings`` and ``counts``).
    """
    s = batch_seed(seed, start, batch_size)
    objective, crafter = _objectives(model, spec, surrogate, score_draws)
    draws = score_draws if objective.randomized else 1
    idx = indices[start:stop]
    x = to_float(images[idx]).to(device)
    y = labels[idx].to(device)
    t = None if targets is None else targets[start:stop].to(device)
    attack = spec.build(s)
    began = time.perf_counter()
    with seeded(s, device):
        clean = _Scored(*decide_over_draws(objective, x, y, draws))
    skipped_by = [(skip or {}).get(int(i), "") for i in idx]
    todo = ((clean.pred == y) & ~_skip_mask(skipped_by, y.device)).nonzero().squeeze(1)
    x_adv = _attack_samples(attack, crafter, x, y, t, todo, progress)
    with seeded(scoring_seed(s), device):
        adv = _Scored(*decide_over_draws(objective, x_adv, y, draws))
    seconds = time.perf_counter() - began
    rows = _result_columns(idx, y, t, clean, adv, skipped_by, draws, x_adv - x, seconds)
    count = max(0, min(EXAMPLES - start, len(idx)))
    return rows, _example_rows(idx, y, clean, adv, x, x_adv, count), _attack_notes(attack)


def _objectives(
    model: nn.Module, spec: AttackSpec, surrogate: nn.Module | None, score_draws: int
) -> tuple[Objective, Objective]:
    """The objective the batch is scored on (``model`` with ``spec``'s decision, EOT and
    ``score_draws``; on ``spec``'s surface, or ``sum`` for a transfer) and the one the attack
    crafts on (the same, or for a transfer the ``surrogate`` on ``spec``'s surface, fooling
    its vote, one EOT draw)."""
    objective = Objective(
        model, spec.surface if surrogate is None else "sum", spec.decision, spec.eot, score_draws
    )
    crafter = objective if surrogate is None else Objective(surrogate, spec.surface, "vote", 1)
    return objective, crafter


class _Scored(NamedTuple):
    """A decision scored over draws (:func:`decide_over_draws`): the majority label
    ``pred`` ``[B]``, each member's majority top-1 ``members`` ``[K, B]`` and the share of
    draws that are right ``rate`` ``[B]``."""

    pred: torch.Tensor
    members: torch.Tensor
    rate: torch.Tensor


def _skip_mask(skipped_by: list[str], device: torch.device) -> torch.Tensor:
    """``[B]``: True for the samples an earlier attack of a cascade broke (named in
    ``skipped_by``, ``""`` for the others)."""
    return torch.tensor([bool(b) for b in skipped_by], dtype=torch.bool, device=device)


def _attack_samples(
    attack: Any,
    crafter: Objective,
    x: torch.Tensor,
    y: torch.Tensor,
    t: torch.Tensor | None,
    todo: torch.Tensor,
    progress: Tick | None,
) -> torch.Tensor:
    """``x`` ``[B, C, H, W]`` with the positions ``todo`` replaced by their adversarials
    (crafted on ``crafter``, aimed at ``t`` ``[B]`` if targeted); the others unchanged."""
    x_adv = x.clone()
    if len(todo):
        tt = None if t is None else t[todo]
        x_adv[todo] = attack(crafter, x[todo], y[todo], tt, progress=progress)
    return x_adv


def _result_columns(
    idx: torch.Tensor,
    y: torch.Tensor,
    t: torch.Tensor | None,
    clean: _Scored,
    adv: _Scored,
    skipped_by: list[str],
    draws: int,
    delta: torch.Tensor,
    seconds: float,
) -> dict[str, list]:
    """The per-sample columns of :func:`attack_batch` for test-split ids ``idx`` ``[B]``
    with labels ``y`` (and targets ``t``) ``[B]``: the clean and adversarial decisions, what
    is robust (right on both and not skipped), the perturbation ``delta`` ``[B, C, H, W]``'s
    norms and the batch's ``seconds`` spread evenly over its samples."""
    n = len(idx)
    correct = clean.pred == y
    adv_correct = adv.pred == y
    robust = correct & adv_correct & ~_skip_mask(skipped_by, y.device)
    members = adv.members
    return {
        "sample": idx.tolist(),
        "label": y.tolist(),
        "target": [-1] * n if t is None else t.tolist(),
        "clean_pred": clean.pred.tolist(),
        "adv_pred": adv.pred.tolist(),
        **{f"member_{k + 1}": members[k].tolist() for k in range(members.shape[0])},
        "clean_correct": correct.tolist(),
        "adv_correct": adv_correct.tolist(),
        "robust": robust.tolist(),
        "skipped_by": skipped_by,
        "score_draws": [draws] * n,
        "clean_correct_rate": clean.rate.tolist(),
        "adv_correct_rate": adv.rate.tolist(),
        "target_hit": (adv.pred == t).tolist() if t is not None else [False] * n,
        "linf": flat_norm(delta, "linf").tolist(),
        "l2": flat_norm(delta, "l2").tolist(),
        "seconds": [seconds / n] * n,
    }


def _example_rows(
    idx: torch.Tensor,
    y: torch.Tensor,
    clean: _Scored,
    adv: _Scored,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    count: int,
) -> list[dict]:
    """The first ``count`` samples as stored example images: ids, label and decisions, and
    the clean and adversarial pixels ``x``, ``x_adv`` ``[B, C, H, W]`` flattened."""
    return [
        {
            "sample": int(idx[i]),
            "label": int(y[i]),
            "clean_pred": int(clean.pred[i]),
            "adv_pred": int(adv.pred[i]),
            "shape": list(x.shape[1:]),
            "x": x[i].flatten().cpu().tolist(),
            "x_adv": x_adv[i].flatten().cpu().tolist(),
        }
        for i in range(count)
    ]


def _attack_notes(attack: Any) -> dict[str, Any]:
    """What the attack reports besides the adversarials: its ``warnings`` (each once) and,
    when it keeps them, its ``counts``."""
    notes = {"warnings": list(dict.fromkeys(getattr(attack, "warnings", [])))}
    if getattr(attack, "counts", None):
        notes["counts"] = dict(attack.counts)
    return notes


def describe(
    df: pd.DataFrame, spec: AttackSpec, attack: Any, context: dict[str, Any]
) -> pd.DataFrame:
    """Result rows of ``spec`` (schema ``attack``): the setting columns (run, checkpoint,
    attack, norm, eps, ...) added to the per-sample columns of :func:`attack_batch`."""
    p = attack.setting()
    out = df.copy()
    columns = {
        "run": context["run"],
        "checkpoint": context["checkpoint"],
        "dataset": context["dataset"],
        "attack": spec.label,
        "suite": spec.suite,
        "norm": p.get("norm"),
        "eps": p.get("eps"),
        "steps": p.get("steps"),
        "step_size": p.get("step_size"),
        "restarts": p.get("restarts"),
        "targeted": bool(p.get("targeted")),
        "loss": p.get("loss"),
        "surface": spec.surface,
        "decision": spec.decision,
        "eot": spec.eot if spec.attack != "autoattack" else p.get("eot"),
        "seed": context["seed"],
        "surrogate": spec.surrogate,
        "cascade": spec.cascade,
    }
    for key, value in columns.items():
        out[key] = value
    return results.frame("attack", out)


def attack_job(
    run: Run,
    spec: AttackSpec,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    *,
    seed: int,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    surrogate: Run | None = None,
    score_draws: int = 20,
    skip: Mapping[int, str] | None = None,
) -> Job:
    """The job of one attack setting on ``run``: its identity (checkpoint digest, attack and
    budgets, surface, decision, EOT, scoring draws, samples, seed) and a batch-wise
    computation. A randomized model's decision is scored on ``score_draws`` draws.

    ``images`` uint8 ``[N, C, H, W]`` (the test split), ``labels`` ``[N]``, ``indices``
    ``[n]`` (the seeded evaluation subset). ``surrogate`` crafts a transfer spec's
    adversarials. A targeted attack aims at random wrong labels drawn with ``seed``. ``skip``
    (a cascade: sample -> the earlier attack that broke it) leaves those samples unattacked;
    it is not part of the job's identity, which records ``cascade`` instead.
    """
    if spec.surrogate and surrogate is None:
        raise DmlError(f"{spec.label}: a transfer attack needs its surrogate run")
    Objective(run.model, spec.surface, spec.decision, spec.eot)  # checks surface and decision
    attack = spec.build(seed)
    if needs_target(spec.surface) and not (spec.params.get("target_classes") or attack.targeted):
        raise DmlError(
            f"surface {spec.surface} pulls members toward a class: give --target-classes K "
            "(or --targeted)"
        )
    context = identity(run, len(indices), seed)
    setting = setting_of(spec, attack, context)
    if score_draws < 1:
        raise DmlError(f"--score-draws must be at least 1; got {score_draws}")
    draws = score_draws if run.randomized else 1
    setting["score_draws"] = draws
    if spec.surrogate:
        setting["surrogate_checkpoint"] = surrogate.checkpoint
    targets = None
    if getattr(attack, "targeted", False):
        gen = torch.Generator().manual_seed(seed)
        targets = random_targets(labels[indices], run.num_classes, gen)
    crafter = surrogate.model if spec.surrogate else None

    def compute(start: int, stop: int, tick: Tick) -> tuple[dict, dict]:
        rows, examples, notes = attack_batch(
            run.model, spec, images, labels, indices, start, stop, seed=seed,
            batch_size=batch_size, device=device, surrogate=crafter, targets=targets,
            progress=tick, score_draws=draws, skip=skip,
        )  # fmt: skip
        df = describe(pd.DataFrame(rows), spec, attack, context)
        return {"rows": df, "examples": pd.DataFrame(examples)}, notes

    def info(df: pd.DataFrame) -> str:
        return f"robust {100.0 * df['robust'].mean():.1f}%"

    return Job(
        kind="attack",
        run=run.name,
        setting=setting,
        ids=indices.tolist(),
        compute=compute,
        size=batch_size,
        label=f"{spec.label} {spec.surface} eps {spec.eps_text}",
        extra={"batch_size": batch_size},
        sides={"examples": Side("adv-examples", EXAMPLES)},
        columns=["label", "clean_correct", "robust", "seconds"],
        info=info,
    )


def worst_case_key(setting: dict[str, Any]) -> tuple | None:
    """The worst case an L-inf attack result enters first: (eps, decision, n, seed, scoring
    draws) of its setting; None for unbounded or L2 attacks. It also enters every worst case
    of the same (decision, n, seed, draws) at a larger eps (:func:`worst_case_plan`)."""
    params = setting.get("params") or {}
    if params.get("eps") is None or params.get("norm", "linf") != "linf":
        return None
    return (
        float(params["eps"]),
        str(setting["decision"]),
        int(setting["n"]),
        int(setting["seed"]),
        int(setting.get("score_draws", 1)),
    )


def stored_worst_case_key(setting: dict[str, Any]) -> tuple:
    """The :func:`worst_case_key` a stored worst case was built for, from its own setting
    (eps, decision, n, seed, scoring draws)."""
    return (
        float(setting["eps"]),
        str(setting["decision"]),
        int(setting["n"]),
        int(setting["seed"]),
        int(setting.get("score_draws", 1)),
    )


def worst_case_plan(entries: Sequence[tuple[str, dict[str, Any]]]) -> dict[tuple, list[str]]:
    """Which stored attack results each worst case is built from: ``entries`` are (id,
    setting) of one checkpoint's attack results; returns, per :func:`worst_case_key` among
    them, the sorted ids of every L-inf result with the same decision, n, seed and scoring
    draws at an eps no larger than the key's (an adversarial within a smaller ball is within
    the larger one: the worst case is monotone in eps). The one rule for the stored worst
    case, its refresh and every reader that checks it is current."""
    keyed = [(k, i) for i, s in entries if (k := worst_case_key(s)) is not None]
    plan: dict[tuple, list[str]] = {}
    for key in sorted({k for k, _ in keyed}):
        plan[key] = sorted(i for k, i in keyed if k[1:] == key[1:] and k[0] <= key[0] + 1e-12)
    return plan


def worst_case_job(
    run: Run, key: tuple, frames: Sequence[pd.DataFrame], components: Sequence[str]
) -> Job:
    """The per-sample worst case (:func:`dmlcli.results.worst_case`) at :func:`worst_case_key`
    ``key`` of the attack results ``frames`` of ``run`` that :func:`worst_case_plan` puts in
    it; ``components`` name those result files (stored with it, to know when to recompute)."""
    eps, decision, n, seed, draws = key
    setting = {
        **identity(run, n, seed),
        "eps": eps,
        "norm": "linf",
        "decision": decision,
        "score_draws": draws,
    }
    ids = [int(v) for v in frames[0]["sample"]]

    def compute(start: int, stop: int, tick: Tick) -> tuple[dict, dict]:
        rows = results.worst_case(frames, eps).iloc[start:stop].reset_index(drop=True)
        return {"rows": rows}, {}

    return Job(
        kind="worst-case",
        run=run.name,
        setting=setting,
        ids=ids,
        compute=compute,
        size=max(len(ids), 1),
        label=f"worst case eps {format_eps(eps)} {decision}",
        extra={"components": sorted(components), "attacks": len(frames)},
        columns=["robust", "broken_by"],
    )


def custom_specs(
    names: Sequence[str],
    eps_list: Sequence[float],
    options: dict[str, Any],
    budgets: Budgets,
    surfaces: Sequence[str],
    decision: str,
    randomized: bool,
) -> list[AttackSpec]:
    """Specs for attacks named on the command line (``--attack pgd --steps 20 ...``).

    ``options`` holds the generic flags (steps, step_size, restarts, loss, norm, targeted);
    an attack receives only those it has (see ``attack_parameters``) and that are set.
    CW takes its budget from the ``cw_*`` budgets, AutoAttack from the ``aa_*`` ones.
    """
    from dmlcli.attacks import attack_parameters

    specs = []
    eot = budgets.eot if randomized else 1
    for name in names:
        allowed = attack_parameters(name)
        params = {k: v for k, v in options.items() if v is not None and k in allowed}
        if name in ("cw", "cw-l2"):
            params.update(budgets.cw_params())
            epss: Sequence[float | None] = [None]
        elif name == "autoattack":
            params.pop("steps", None)
            params.update(
                version=budgets.aa_version,
                attacks=tuple(budgets.aa_attacks),
                steps=budgets.aa_steps,
                square_queries=budgets.square_queries,
                eot=budgets.eot,
            )
            if params["version"] == "auto":
                params["version"] = "rand" if randomized else "standard"
            epss = eps_list
        else:
            epss = eps_list
        for eps in epss:
            p = dict(params) if eps is None else {**params, "eps": eps}
            for surface in surfaces or ["sum"]:
                base = f"{name}-top{p['target_classes']}" if p.get("target_classes") else name
                label = (
                    base
                    if "steps" not in p or name in ("cw", "cw-l2", "autoattack")
                    else (f"{base}-{p['steps']}")
                )
                if name in ("cw", "cw-l2") and p.get("search_steps"):
                    label = "cw-search"
                if p.get("restarts", 1) > 1:
                    label += f"x{p['restarts']}"
                specs.append(AttackSpec(label, name, p, surface, decision, eot, "custom"))
    return specs


def plan_specs(
    suites: Sequence[str],
    attacks: Sequence[str],
    eps_list: Sequence[float],
    options: dict[str, Any],
    budgets: Budgets,
    decisions: Sequence[str],
    members: int,
    randomized: bool,
    surrogate: str | None = None,
    num_classes: int = 10,
) -> list[AttackSpec]:
    """Every attack setting of a ``dml attack`` call: the named ``attacks`` (``options``: the
    generic flags steps, step_size, restarts, loss, norm, targeted) and the ``suites``, for
    each decision."""
    for s in suites:
        if s not in (*SUITES, "all"):
            raise DmlError(f"unknown suite {s!r}; choose one of {', '.join((*SUITES, 'all'))}")
    if "all" in suites:
        suites = SUITES
    specs = []
    for decision in decisions:
        specs += custom_specs(
            attacks, eps_list, options, budgets, budgets.surfaces, decision, randomized
        )
        if "paper" in suites:
            specs += paper_suite(eps_list, budgets, decision)
        if "autoattack" in suites:
            specs += autoattack_suite(eps_list, budgets, decision, randomized)
        if "adaptive" in suites:
            specs += adaptive_suite(
                eps_list, budgets, decision, members, randomized, surrogate, num_classes
            )
    return specs
