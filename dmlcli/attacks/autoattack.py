"""AutoAttack (Croce & Hein 2020) through the ``pyautoattack`` package (Tables 7-8).

AutoAttack sees a classifier ``x -> [B, C]`` scores: the objective's surface scores (summed
logits for the paper's protocol; ``mean-softmax`` and ``member:k`` also work, ``members``
has no class scores). Versions: ``standard`` (APGD-CE, APGD-T, FAB-T, Square), ``plus``,
``rand`` (APGD-CE and APGD-DLR with ``eot`` draws, for randomized defenses) and ``custom``
(``attacks`` list). ``auto`` picks ``rand`` when the model's head is randomized (R-DML,
AUG-DML) and ``standard`` otherwise.

AutoAttack decides success on the argmax of the scores it attacks (e.g. the summed logits),
not on the decision that is scored (e.g. the majority vote): it never attacks a sample whose
*sum* is already wrong (and returns it clean), and it stops on a sample once the *sum* is
fooled even if the *vote* is not, dropping it from the later sub-attacks. With ``recheck``
(the default) every sample whose *decision* is still right after AutoAttack is attacked
again by APGD-CE and APGD-T (DLR, the top 9 wrong classes; :mod:`dmlcli.attacks.apgd`) that
check the decision itself, with the objective's EOT draws: "AutoAttack on the sum, scored by
the vote, + decision-checked APGD". ``counts`` records how many samples AutoAttack's own
clean check skipped, how many were re-attacked and how many the re-check broke. Its own
warnings (randomized defense, zero gradients, Square beating the white-box attacks, ...) are
captured from its logger, the ``warnings`` module and stdout into ``self.warnings`` and
never swallowed.

AutoAttack runs once per call (``run_standard_evaluation``, all sub-attacks in one go: its
checks, its clean pass and its hand-over of robust samples from one sub-attack to the next
stay exactly AutoAttack's). ``progress`` is reported per sub-attack by wrapping the
``perturb`` of this call's own AutoAttack object, which changes no computation.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, TextIO

import torch
from torch import nn

from dmlcli.attacks.apgd import APGD
from dmlcli.attacks.base import AttackBase, CallProgress, Objective, check_budget
from dmlcli.attacks.surfaces import surface_scores
from dmlcli.errors import DmlError

VERSIONS = ("auto", "standard", "plus", "rand", "custom")
SUB_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
_NORMS = {"linf": "Linf", "l2": "L2"}


class ScoresModel(nn.Module):
    """The objective's surface scores as a plain classifier ``x -> [B, C]`` (one draw)."""

    def __init__(self, objective: Objective) -> None:
        super().__init__()
        if objective.surface == "members":
            raise DmlError(
                "autoattack needs class scores: use surface sum, mean-softmax or member:k"
            )
        self.objective = objective

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return surface_scores(self.objective.surface, self.objective.logits(x))


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


@dataclass
class AutoAttack(AttackBase):
    """AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", Section 5: APGD-CE, APGD-T, FAB-T and
    Square run in turn, each on the samples the previous ones left robust), untargeted only.

    ``steps`` sets APGD's iterations (100 in AutoAttack), ``square_queries`` Square's query
    budget (5000), ``eot`` the draws of the ``rand`` version (20). ``warnings`` collects
    AutoAttack's own warnings of every call (deduplicated, in order). ``progress`` is told
    before and after each sub-attack (``i / n`` of the ``n`` sub-attacks of the version).

    Shape:
        - x: ``[B, C, H, W]``, pixels in [0, 1].
        - y: ``[B]`` labels.
        - target: must be None (a target raises :class:`~dmlcli.errors.DmlError`).
        - returns: ``[B, C, H, W]`` in [0, 1], within ``eps`` of ``x`` in ``norm``.

    Examples:
        >>> attack = create_attack(
        ...     "autoattack", eps=8 / 255, version="custom", attacks=("apgd-ce", "apgd-dlr")
        ... )
        >>> x_adv = attack(Objective(ensemble, "sum", "vote"), x, y)
        >>> attack.warnings  # AutoAttack's own warnings, e.g. about a randomized defense
        []
    """

    eps: float
    norm: str = "linf"
    version: str = "auto"
    attacks: tuple[str, ...] = ()
    steps: int = 100
    square_queries: int = 5000
    eot: int = 20
    seed: int = 0
    targeted: bool = False
    recheck: bool = True
    name: str = "autoattack"
    warnings: list[str] = field(default_factory=list, repr=False)
    counts: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        check_budget(self.norm, self.eps, self.name)
        if self.version not in VERSIONS:
            raise DmlError(
                f"unknown AutoAttack version {self.version!r}; choose one of {', '.join(VERSIONS)}"
            )
        self.attacks = tuple(self.attacks)
        bad = [a for a in self.attacks if a not in SUB_ATTACKS]
        if bad:
            raise DmlError(
                f"unknown AutoAttack attack {bad[0]!r}; choose from {', '.join(SUB_ATTACKS)}"
            )
        if self.version == "custom" and not self.attacks:
            raise DmlError("AutoAttack version custom needs a list of attacks")
        if self.attacks and self.version != "custom":
            raise DmlError("an AutoAttack attack list needs version custom")
        if self.targeted:
            raise DmlError(
                "autoattack is untargeted here (its targeted attacks pick their own targets)"
            )
        if self.steps < 1 or self.square_queries < 1 or self.eot < 1:
            raise DmlError("autoattack: steps, square queries and eot must be at least 1")

    def resolved_version(self, randomized: bool) -> str:
        """``auto`` -> ``rand`` for a randomized head, else ``standard``."""
        if self.version == "auto":
            return "rand" if randomized else "standard"
        return self.version

    def setting(self) -> dict[str, Any]:
        """The setting; resolve ``auto`` first (``resolved_version``) to record the real one."""
        version = self.version
        return {
            "name": self.name,
            "eps": self.eps,
            "norm": self.norm,
            "version": version,
            "attacks": list(self.attacks),
            "steps": self.steps,
            "square_queries": self.square_queries,
            "eot": self.eot if version in ("rand", "auto") else 1,
            "seed": self.seed,
            "targeted": False,
            "loss": "autoattack",
            "restarts": 1,
            "step_size": None,
            "recheck": self.recheck,
        }

    def _build(self, model: nn.Module, num_classes: int, version: str, device: Any) -> Any:
        from pyautoattack import AutoAttack as _AA

        aa = _AA(
            model,
            attacks=list(self.attacks) if version == "custom" else None,
            device=device,
            eps=self.eps,
            norm=_NORMS[self.norm],
            seed=self.seed,
            version=version,
        )
        for apgd in (aa.apgd, aa.apgd_targeted):
            n = self.steps
            apgd.n_iter = apgd.n_iter_orig = n
            apgd.n_iter_2 = max(int(0.22 * n), 1)
            apgd.n_iter_min = max(int(0.06 * n), 1)
            apgd.size_decr = max(int(0.03 * n), 1)
        aa.square.n_queries = self.square_queries
        aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, num_classes - 1)
        aa.fab.n_target_classes = min(aa.fab.n_target_classes, num_classes - 1)
        if version == "rand":
            aa.apgd.eot_iter = self.eot
        return aa

    def prepare(self, objective: Objective, x: torch.Tensor) -> dict[str, Any]:
        """The classifier AutoAttack sees and its class count, on the caller's RNG (the class
        count comes from a forward pass, which draws a randomized head's noise)."""
        scores = ScoresModel(objective)
        with torch.no_grad():
            num_classes = scores(x[:1]).shape[-1]
        return {"scores": scores, "num_classes": num_classes}

    def forward(
        self,
        objective: Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        progress: CallProgress,
        *,
        scores: ScoresModel,
        num_classes: int,
    ) -> torch.Tensor:
        version = self.resolved_version(objective.randomized)
        sink: list[str] = []
        logger = logging.getLogger("auto-attack")
        handler, propagate = _Collect(sink), logger.propagate
        logger.addHandler(handler)
        logger.propagate = False
        console, stdout = sys.stdout, io.StringIO()
        try:
            with (
                warnings.catch_warnings(record=True) as caught,
                contextlib.redirect_stdout(stdout),
            ):
                warnings.simplefilter("always")
                aa = self._build(scores, num_classes, version, x.device)
                aa.verbose = False
                _report_sub_attacks(aa, progress.part(0, 2) if self.recheck else progress, console)
                x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(x))
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate
        sink += [str(w.message) for w in caught]
        sink += [f"stdout: {line}" for line in stdout.getvalue().splitlines() if line.strip()]
        for message in sink:
            if message not in self.warnings:
                self.warnings.append(message)
        if self.recheck:
            x_adv = self._recheck(objective, scores, x, y, x_adv, num_classes, progress.part(1, 2))
        return x_adv

    def _recheck(
        self,
        objective: Objective,
        scores: ScoresModel,
        x: torch.Tensor,
        y: torch.Tensor,
        x_adv: torch.Tensor,
        num_classes: int,
        progress: CallProgress,
    ) -> torch.Tensor:
        """APGD-CE, then APGD-T (DLR, top-9 targets), both checking the objective's decision,
        on every sample whose decision AutoAttack's result still gets right."""
        with torch.no_grad():
            skipped = (scores(x).argmax(-1) != y) & (objective.predict(x) == y)
            logits = objective.logits(x_adv)
        still = ~objective.success(x_adv, logits, y, None)
        out = x_adv.clone()
        counts = {"aa_sum_wrong_vote_right": int(skipped.sum()), "rechecked": int(still.sum())}
        broke = 0
        followers = [
            APGD(eps=self.eps, steps=self.steps, norm=self.norm, loss="ce", seed=self.seed),
            APGD(
                eps=self.eps,
                steps=self.steps,
                norm=self.norm,
                loss="dlr",
                seed=self.seed,
                target_classes=min(9, num_classes - 1),
            ),  # fmt: skip
        ]
        for i, attack in enumerate(followers):
            idx = still.nonzero().squeeze(1)
            if len(idx) == 0:
                break
            xa = attack(objective, x[idx], y[idx], progress=progress.part(i, len(followers)))
            with torch.no_grad():
                hit = objective.success(xa, objective.logits(xa), y[idx], None)
            out[idx[hit]] = xa[hit]
            still[idx[hit]] = False
            broke += int(hit.sum())
        counts["recheck_broke"] = broke
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + value
        return out


def _report_sub_attacks(aa: Any, progress: CallProgress, console: TextIO) -> None:
    """Report ``progress`` at the start (AutoAttack's checks and clean pass) and before and
    after each sub-attack of this AutoAttack run.

    ``run_standard_evaluation`` runs its sub-attacks in the order of ``attacks_to_run``, each
    one ``perturb`` call on the samples still robust (one batch: ``batch_size = len(x)``), so
    the i-th ``perturb`` call is sub-attack i. The wrappers only pass through (same calls,
    same RNG use: results are identical to an unwrapped run), live on this call's own
    AutoAttack object, and print on the real stdout while AutoAttack's is captured.
    """
    if progress.callback is None:
        return
    names = list(aa.attacks_to_run)
    calls = [0]

    def tell(fraction: float, info: str) -> None:
        with contextlib.redirect_stdout(console):
            progress(fraction, info)

    tell(0.0, f"autoattack: {aa.version} ({', '.join(names)}), clean pass")

    def wrap(run: Any) -> Any:
        def perturb(*args: Any, **kwargs: Any) -> Any:
            i = calls[0]
            name = names[i] if i < len(names) else "?"
            tell(i / len(names), f"autoattack: {name} ({i + 1}/{len(names)})")
            out = run(*args, **kwargs)
            calls[0] = i + 1
            tell(min(i + 1, len(names)) / len(names), f"autoattack: {name} done")
            return out

        return perturb

    for sub in {id(a): a for a in (aa.apgd, aa.apgd_targeted, aa.fab, aa.square)}.values():
        sub.perturb = wrap(sub.perturb)
