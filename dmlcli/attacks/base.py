"""The protocol every attack follows, the :class:`Objective` it attacks, and the
:class:`AttackBase` every attack of this package derives from.

An attack is a callable ``attack(model, x, y, target=None) -> x_adv`` on pixels ``x``
``[B, C, H, W]`` in [0, 1] with labels ``y`` ``[B]``; ``model`` is any module mapping pixels to
member logits ``[K, B, C]`` (an :class:`~dmlcli.models.ensemble.Ensemble`) or to logits
``[B, C]`` (a plain classifier, treated as K = 1), or an :class:`Objective` that also fixes
the attack surface, the decision rule and the EOT draws. Every attack has a norm (``linf`` or
``l2``), an ``eps`` in pixel units (None for the unbounded CW-L2), a targeted mode and a
seed, and describes itself with ``setting()`` (stored with every result).

The surface (what gradients are taken of, :mod:`dmlcli.attacks.surfaces`) and the decision
(what counts as fooled, :func:`dmlcli.models.aggregate.create_decision`) are chosen
independently: the paper crafts on ``sum`` and scores on ``vote`` (Section 5).

:class:`AttackBase` holds what every attack did before its step rule (the ``__call__`` ->
``forward`` split of torchattacks' ``Attack``, without its mutable mode setters): the
objective, the targets, the detached input, the seeded RNG and the checks of the output. An
attack module keeps its parameters (a dataclass), their validation (``__post_init__``) and
its step rule (``forward``). Progress goes down as an argument of each call, never onto
the attack object, so an attack stays a plain value that describes itself by
``setting()``. So does an opt-in :class:`Trace` of the iterates' losses and success flags
(attacks with ``traceable = True``): off, it costs nothing and changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from dmlcli.attacks.losses import Loss
from dmlcli.attacks.surfaces import create_surface, list_surfaces
from dmlcli.errors import DmlError
from dmlcli.models.aggregate import create_decision, list_decisions, majority_over_draws
from dmlcli.runtime import seeded

NORMS = ("linf", "l2")
_TINY = 1e-12

#: Rows below which a targeted attack runs several targets in one batch (stacked copies of
#: the samples, :meth:`AttackBase._over_targets`). Measured on a 5-member LeNet-5 ensemble on
#: one CPU core: a forward+backward costs 1.37 ms per sample at 8 rows, 0.95 at 16, 0.82 at
#: 72 and 0.79 at 144, so the few samples a cascade leaves ran ~1.7x slower one target at a
#: time. At or above this many samples, one target per call, as before.
TARGET_BATCH_ROWS = 64


def per_call(count: int, rows: int) -> int:
    """How many of ``count`` pending runs (targets, restarts, trials) of ``rows`` samples go
    into one batch: one run per call at :data:`TARGET_BATCH_ROWS` samples or more, else
    as many calls as ``count * rows`` fills (at least one) with the runs split evenly."""
    calls = max(1, min(count, count * rows // TARGET_BATCH_ROWS))
    return -(-count // calls)


#: ``progress(fraction, info)``: ``fraction`` in [0, 1] of one call's work is done.
Progress = Callable[[float, str], None]


@runtime_checkable
class Attack(Protocol):
    """``attack(model, x, y, target=None) -> x_adv`` (same shape as ``x``, in [0, 1])."""

    name: str
    norm: str
    eps: float | None
    targeted: bool
    seed: int

    def __call__(
        self,
        model: nn.Module | Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None = None,
        *,
        progress: Progress | None = None,
    ) -> torch.Tensor: ...

    def setting(self) -> dict[str, Any]: ...


class Objective:
    """A model seen by an attacker: surface to maximize, decision to fool, EOT draws.

    Args:
        model: pixels ``[B, C, H, W]`` -> member logits ``[K, B, C]`` or logits ``[B, C]``.
        surface: ``sum`` (paper), ``mean-softmax``, ``members`` or ``member:k``.
        decision: ``vote`` (paper), ``meta-vote``, ``sum``, ``mean-softmax`` or ``member:k``.
        eot: gradient draws averaged per step (expectation over transformation, Athalye et
            al. 2018) when the model is randomized (R-DML/AUG-DML heads); forced to 1 for a
            deterministic model, where extra draws would only repeat the same gradient.
        confirm: fresh draws an attack on a randomized model scores an iterate on before it
            counts as a success (:meth:`success`), by the rule results are scored by
            (:func:`~dmlcli.models.aggregate.majority_over_draws`: fooled unless ``y``
            strictly wins the majority): one lucky draw of the noise is not a broken sample.
            The default is the scoring draws' default (20). Ignored for deterministic models.

    One rule decides success everywhere: the decision is not ``y``. A targeted attack aims
    its loss at its target but stops on, and keeps, any iterate that fools the decision (as
    AutoAttack's APGD-T does); only minimum-distortion attacks (CW) ask for the target itself
    (``fooled(..., target)``).
    """

    def __init__(
        self,
        model: nn.Module,
        surface: str = "sum",
        decision: str = "vote",
        eot: int = 1,
        confirm: int = 20,
    ) -> None:
        if eot < 1:
            raise DmlError(f"EOT draws must be at least 1; got {eot}")
        if confirm < 1:
            raise DmlError(f"confirmation draws must be at least 1; got {confirm}")
        self.model = model
        self.num_members = int(getattr(model, "num_members", 1))
        self.randomized = bool(getattr(model, "randomized", False))
        sets = getattr(model, "trainable_sets", None) or [[] for _ in range(self.num_members)]
        if surface not in list_surfaces(self.num_members):
            raise DmlError(
                f"unknown surface {surface!r}; choose one of "
                f"{', '.join(list_surfaces(self.num_members))}"
            )
        if decision not in list_decisions(self.num_members):
            raise DmlError(
                f"unknown decision {decision!r}; choose one of "
                f"{', '.join(list_decisions(self.num_members))}"
            )
        self.surface, self.decision = surface, decision
        self._surface = create_surface(surface, self.num_members)
        self._decide = create_decision(decision, sets)
        self.eot = eot if self.randomized else 1
        self.confirm = confirm if self.randomized else 1

    def setting(self) -> dict[str, Any]:
        return {"surface": self.surface, "decision": self.decision, "eot": self.eot}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Member logits ``[K, B, C]`` of one forward pass (one draw of a random head)."""
        out = self.model(x)
        return out[None] if out.dim() == 2 else out

    def draws(self, x: torch.Tensor) -> torch.Tensor:
        """``eot`` draws of member logits ``[T, K, B, C]``; the backbone runs once."""
        if self.eot == 1:
            return self.logits(x)[None]
        if hasattr(self.model, "features") and hasattr(self.model, "head"):
            z = self.model.features(x)
            return torch.stack([self.model.head(z) for _ in range(self.eot)])
        return torch.stack([self.logits(x) for _ in range(self.eot)])

    def decide(self, logits: torch.Tensor) -> torch.Tensor:
        """Decision labels ``[B]`` from member logits ``[K, B, C]``."""
        return self._decide(logits)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Decision labels ``[B]`` of ``x`` (one draw of a randomized head)."""
        return self._decide(self.logits(x))

    def fooled(
        self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Success flags ``[B]``: decision != y, or == ``target`` where one is given (only
        minimum-distortion attacks ask for the target; see the class docstring)."""
        pred = self._decide(logits)
        return pred != y if target is None else pred == target

    @torch.no_grad()
    def success(
        self,
        x: torch.Tensor,
        logits: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Success flags ``[B]`` an attack may stop on: :meth:`fooled` on ``logits`` (of ``x``)
        and, for a randomized model, also on ``confirm`` fresh draws scored as results are
        (:func:`~dmlcli.models.aggregate.majority_over_draws`: ``y`` must not strictly win
        the majority; with a ``target``, the majority answer must be it)."""
        hit = self.fooled(logits, y, target)
        if self.confirm <= 1 or not hit.any():
            return hit
        idx = hit.nonzero().squeeze(1)
        labels = torch.stack([self._decide(self.logits(x[idx])) for _ in range(self.confirm)])
        label, correct = majority_over_draws(labels, y[idx], logits.shape[-1])
        hit[idx] = ~correct if target is None else label == target[idx]
        return hit

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, loss: Loss, target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Surface loss ``[B]`` averaged over the EOT draws (differentiable) and the mean
        member logits ``[K, B, C]`` over the draws (detached, for success checks)."""
        draws = self.draws(x)
        value = torch.stack([self._surface(d, y, loss, target) for d in draws]).mean(0)
        return value, draws.detach().mean(0)

    def loss_grad(
        self, x: torch.Tensor, y: torch.Tensor, loss: Loss, target: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss ``[B]``, its gradient w.r.t. ``x``, mean member logits ``[K, B, C]``)."""
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            value, logits = self.loss(x, y, loss, target)
            (grad,) = torch.autograd.grad(value.sum(), x)
        return value.detach(), grad.detach(), logits


def as_objective(model: nn.Module | Objective) -> Objective:
    """``model`` itself if it is an :class:`Objective`, else the paper's (sum, vote)."""
    return model if isinstance(model, Objective) else Objective(model)


def check_target_classes(attack: Any) -> None:
    """``target_classes`` is a count >= 0, and excludes the targeted mode (one clear line)."""
    k = attack.target_classes
    if not isinstance(k, int) or k < 0:
        raise DmlError(f"{attack.name}: target classes must be a count >= 0; got {k}")
    if k and attack.targeted:
        raise DmlError(f"{attack.name}: target classes and --targeted exclude each other")


def check_budget(norm: str, eps: float | None, name: str) -> None:
    """Validate the norm and eps of an attack (one clear line on a bad value)."""
    if norm not in NORMS:
        raise DmlError(f"{name}: unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    if eps is None:
        return
    if not (0 <= eps <= 1 if norm == "linf" else eps >= 0):
        raise DmlError(f"{name}: eps {eps} is outside [0, 1] (eps is in pixel units)")


def flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm ``[B]`` of ``t`` ``[B, ...]`` (``linf`` or ``l2``)."""
    flat = t.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def normalize(t: torch.Tensor, norm: str) -> torch.Tensor:
    """``t`` scaled to unit ``norm`` per sample (zero rows stay zero)."""
    return t / (_expand(flat_norm(t, norm), t) + _TINY)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project ``x_adv`` onto the ``eps``-ball around ``x`` intersected with [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = _expand(flat_norm(delta, "l2"), delta)
        delta = delta * torch.clamp(eps / (n + _TINY), max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def ascent_step(x_adv: torch.Tensor, grad: torch.Tensor, alpha: float, norm: str) -> torch.Tensor:
    """One steepest-ascent step of size ``alpha``: sign for L-inf, unit direction for L2."""
    direction = grad.sign() if norm == "linf" else normalize(grad, "l2")
    return x_adv + alpha * direction


def random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Uniform point in the L-inf ball, or a point on the L2 sphere, clipped to [0, 1]."""
    if norm == "linf":
        return (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0.0, 1.0)
    return (x + eps * normalize(torch.randn_like(x), "l2")).clamp(0.0, 1.0)


def ranked_wrong(draw_logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` wrong classes with the largest summed logits, best first: ``[k, B]`` for
    member logits ``[T, K, B, C]`` (T draws)."""
    summed = draw_logits.mean(0).sum(0).scatter(1, y[:, None], float("-inf"))  # [B, C]
    return summed.topk(min(k, summed.shape[1] - 1), dim=1).indices.t()


def random_targets(y: torch.Tensor, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """A uniformly drawn wrong label per sample (Table 4's targeted attacks): ``[B]``."""
    shift = torch.randint(1, num_classes, y.shape, generator=gen)
    return (y.cpu() + shift) % num_classes


def resolve_target(
    attack: Any, objective: Objective, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
) -> torch.Tensor | None:
    """The targets of a targeted attack (drawn with its seed if not given), else None."""
    if not attack.targeted:
        if target is not None:
            raise DmlError(f"{attack.name}: a target was given to an untargeted attack")
        return None
    if target is None:
        with torch.no_grad():
            c = objective.logits(x[:1]).shape[-1]
        gen = torch.Generator().manual_seed(attack.seed)
        target = random_targets(y, c, gen)
    return target.to(y.device)


class CallProgress:
    """The progress of one call: fractions clamped to [0, 1], the last one remembered so the
    call can close at 1.0. Made per call and dropped after it (no state on the attack). The
    callback runs on a fork of torch's RNG: whatever it draws leaves the attack's streams
    alone."""

    __slots__ = ("callback", "devices", "last")

    def __init__(self, callback: Progress | None, device: torch.device | str = "cpu") -> None:
        self.callback = callback
        device = torch.device(device)
        self.devices = [device.index or 0] if device.type == "cuda" else []
        self.last: float | None = None

    def __call__(self, fraction: float, info: str = "") -> None:
        if self.callback is None:
            return
        self.last = min(max(float(fraction), 0.0), 1.0)
        with torch.random.fork_rng(devices=self.devices):
            self.callback(self.last, info)

    def part(self, index: int, count: int) -> CallProgress:
        """The progress of part ``index`` of ``count`` equal parts of this call."""
        return self.span(index, index + 1, count)

    def span(self, start: int, stop: int, count: int) -> CallProgress:
        """The progress of parts ``start`` to ``stop`` (excluded) of ``count`` equal parts."""

        def scaled(fraction: float, info: str) -> None:
            self((start + fraction * (stop - start)) / count, info)

        return CallProgress(scaled if self.callback is not None else None, "cpu")

    def steps(self, done: int, total: int, info: str) -> None:
        """Report ``done`` of ``total`` units at every ~10% (and at the last unit)."""
        if self.callback is not None and (done % max(total // 10, 1) == 0 or done == total):
            self(done / total, info)

    def finish(self, info: str) -> None:
        if self.callback is not None and self.last != 1.0:
            self(1.0, info)


class Trace:
    """An opt-in record of one attack call's iterates: per evaluated iterate, the surface
    loss ``[b]`` and the success flags ``[b]`` (:meth:`Objective.success`, what the attack
    stops on) of the ``b`` samples then in the batch. Passed down the call
    (``attack(..., trace=Trace())``) like progress, never stored on the attack; only
    attacks with ``traceable = True`` accept one. Recording keeps tensors the step rule
    computes anyway (no extra forward or backward pass) and changes no result.

    Pintor et al. 2022 ("Indicators of Attack Failure") read two failures off such a
    trace: a path that crossed the boundary while the returned point did not (silent
    success), and a loss still rising at the last steps (incomplete optimization)."""

    __slots__ = ("records",)

    def __init__(self) -> None:
        #: ``(restart, idx [b], loss [b], fooled [b])`` per evaluated iterate, in order;
        #: ``idx`` numbers the samples of the call's ``x``.
        self.records: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def record(
        self, restart: int, idx: torch.Tensor, loss: torch.Tensor, fooled: torch.Tensor
    ) -> None:
        """One evaluated iterate of ``restart`` for the samples ``idx`` of the call."""
        self.records.append((restart, idx.detach(), loss.detach(), fooled.detach()))

    def restarts(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per restart, ``(loss [S, n], fooled [S, n])`` on the CPU over its ``S``
        evaluated iterates: loss NaN and fooled False where a sample was not in the batch
        (it had left it, fooled, or a restart skipped it)."""
        out = []
        for r in sorted({rec[0] for rec in self.records}):
            rows = [rec[1:] for rec in self.records if rec[0] == r]
            loss = torch.full((len(rows), n), float("nan"))
            fooled = torch.zeros((len(rows), n), dtype=torch.bool)
            for i, (idx, value, hit) in enumerate(rows):
                loss[i, idx.cpu()] = value.float().cpu()
                fooled[i, idx.cpu()] = hit.cpu()
            out.append((loss, fooled))
        return out


def check_output(name: str, x: torch.Tensor, x_adv: torch.Tensor) -> None:
    """Raise if ``x_adv`` is not an image batch of ``x``'s shape with pixels in [0, 1]."""
    if x_adv.shape != x.shape:
        raise DmlError(
            f"{name}: returned shape {tuple(x_adv.shape)} for inputs of shape {tuple(x.shape)}"
        )
    if x_adv.numel() == 0:
        return
    lo, hi = (float(v) for v in torch.aminmax(x_adv))
    if not (lo >= 0.0 and hi <= 1.0):  # also false for NaN
        x_lo, x_hi = (float(v) for v in torch.aminmax(x))
        raise DmlError(
            f"{name}: returned pixels outside [0, 1] (min {lo:.4g}, max {hi:.4g}; the input "
            f"spans {x_lo:.4g}..{x_hi:.4g})"
        )


class AttackBase:
    """What every attack does around its step rule; subclasses are dataclasses.

    ``attack(model, x, y, target=None, *, progress=None)``: turns ``model`` into an
    :class:`Objective` (:func:`as_objective`), resolves the targets (a targeted attack draws
    wrong labels with its seed when none are given, an untargeted one refuses a target:
    :func:`resolve_target`), detaches ``x``, runs :meth:`forward` under
    ``seeded(self.seed, x.device)`` (torch's global RNG fixed inside, the caller's restored
    after), and checks that the result has ``x``'s shape and pixels in [0, 1].

    Hooks a subclass may override (all but :meth:`forward` have defaults):

    - :meth:`forward` ``(objective, x, y, target, progress, **prepared) -> x_adv``: the step
      rule. ``progress(fraction, info)`` is always callable (a no-op without a callback).
    - :meth:`resolve_target`: the targets given to :meth:`forward`.
    - :meth:`prepare`: work before seeding, on the caller's RNG (e.g. a forward pass that
      counts the classes); its dict goes to :meth:`forward` as keyword arguments.
    - ``reseed = False``: run :meth:`forward` on the caller's RNG (an attack with its own
      generators).

    ``progress``: optional ``progress(fraction, info)``, called as a long attack goes
    (fraction of this call's work in [0, 1], non-decreasing) and always with 1.0 at the end
    of the call. It is passed down the call, never stored.

    ``trace``: optional :class:`Trace` the step rule appends every evaluated iterate to
    (attacks with ``traceable = True`` and no ``target_classes``; others refuse one). It is
    passed down the call, never stored; without one nothing is recorded.

    An attack with ``target_classes = k > 0`` is untargeted in what it scores but aims at
    classes: it runs :meth:`forward` toward each of the ``k`` wrong classes with the largest
    summed logits of the clean input (runner-up first; a call that starts at the i-th
    target is seeded ``seed + i``; few samples run several targets per call, see
    :meth:`_over_targets`), and keeps per sample the first result whose decision is wrong
    (the first target's result where none is): AutoAttack's APGD-T, and what the ``agree``
    surfaces need. Inside each run an iterate whose decision is any wrong class is a success
    (the step rules check ``success(..., y)`` without the target), not only one that
    reaches the target.
    """

    name: str
    norm: str
    eps: float | None
    targeted: bool
    seed: int
    #: Run :meth:`forward` under ``seeded(self.seed, x.device)``.
    reseed: ClassVar[bool] = True
    #: :meth:`forward` takes a ``trace`` keyword (a :class:`Trace`, given only when asked).
    traceable: ClassVar[bool] = False

    def __call__(
        self,
        model: nn.Module | Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None = None,
        *,
        progress: Progress | None = None,
        trace: Trace | None = None,
    ) -> torch.Tensor:
        objective = as_objective(model)
        target = self.resolve_target(objective, x, y, target)
        x = x.detach()
        prepared = self.prepare(objective, x)
        if trace is not None:
            if not self.traceable or getattr(self, "target_classes", 0):
                raise DmlError(f"{self.name}: this attack keeps no loss trace")
            prepared = {**prepared, "trace": trace}
        report = CallProgress(progress, x.device)
        if getattr(self, "target_classes", 0):
            x_adv = self._over_targets(objective, x, y, report, prepared)
        else:
            rng = seeded(self.seed, x.device) if self.reseed else contextlib.nullcontext()
            with rng:
                x_adv = self.forward(objective, x, y, target, report, **prepared).detach()
        check_output(self.name, x, x_adv)
        report.finish(f"{self.name}: done")
        return x_adv

    def forward(
        self,
        objective: Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        progress: CallProgress,
    ) -> torch.Tensor:
        """The adversarial ``[B, C, H, W]`` of detached ``x`` (the step rule)."""
        raise NotImplementedError

    def _over_targets(
        self,
        objective: Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        report: CallProgress,
        prepared: dict[str, Any],
    ) -> torch.Tensor:
        """:meth:`forward` toward each of the top ``target_classes`` wrong classes (see the
        class docstring); ``[B, C, H, W]``.

        Targets run in order, each on the samples no earlier target fooled; when those are
        few (fewer than :data:`TARGET_BATCH_ROWS`), the next targets run together in one
        :meth:`forward` on stacked copies of the samples, one copy per target
        (:func:`per_call`), so a small batch still fills the hardware. Every copy gets the
        full budget; a sample keeps its first fooling copy in target order (the runner-up
        first)."""
        with seeded(self.seed, x.device), torch.no_grad():
            ranked = ranked_wrong(objective.logits(x)[None], y, self.target_classes)  # [k, B]
        k = len(ranked)
        out = x.clone()
        done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        i = 0
        while i < k:
            todo = (~done).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            c = per_call(k - i, len(todo))  # targets in this call
            b = len(todo)
            xs = x[todo].repeat(c, *([1] * (x.dim() - 1)))  # [c * b, ...], target-major
            ys, ts = y[todo].repeat(c), ranked[i : i + c, todo].reshape(-1)
            part = report.span(i, i + c, k)
            with seeded(self.seed + i, x.device):
                xa = self.forward(objective, xs, ys, ts, part, **prepared).detach()
                hit = objective.success(xa, objective.logits(xa).detach(), ys, None)
            xa, hit = xa.view(c, b, *x.shape[1:]), hit.view(c, b)
            if i == 0:
                out[todo] = xa[0]
            fooled = hit.any(0)
            first = hit.to(torch.int8).argmax(0)  # the first fooling copy, in target order
            out[todo[fooled]] = xa[first[fooled], fooled.nonzero().squeeze(1)]
            done[todo[fooled]] = True
            i += c
        return out

    def resolve_target(
        self,
        objective: Objective,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """The targets of a targeted attack (drawn with its seed if not given), else None."""
        return resolve_target(self, objective, x, y, target)

    def prepare(self, objective: Objective, x: torch.Tensor) -> dict[str, Any]:
        """Keyword arguments of :meth:`forward` computed before seeding (none by default)."""
        return {}

    def setting(self) -> dict[str, Any]:
        """The parameters, stored with every result (and hashed into result file names)."""
        return asdict(self)  # type: ignore[arg-type]  # subclasses are dataclasses
