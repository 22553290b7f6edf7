"""CLEVER scores (Weng et al. 2018) and the Lipschitz bound of the DML head (Lemma 1, A.1).

CLEVER estimates the local Lipschitz constant of the margin ``f_c - f_j`` around ``x`` by
extreme value theory: gradients are taken at points drawn uniformly from the ``L_p`` ball of
radius ``R`` around ``x`` (clipped to [0, 1]); the dual norm ``||grad(f_c - f_j)||_q``
(``1/p + 1/q = 1``) is maximised within each of ``nb_batches`` batches of ``batch_size``
points; a reverse Weibull distribution fitted to those maxima gives the location ``L_j``
(its finite right endpoint, the estimated maximum gradient norm) and

    score = min_j min((f_c(x) - f_j(x)) / L_j, R),

``c`` the class the scored model predicts at ``x`` (untargeted CLEVER, ``clever_u``). The
paper scores the ensemble's summed logits (Fig. 1, 7, 8: ``L_2``, ``R = 2``, 1000 images).

Like the adversarial-robustness-toolbox, gradients are evaluated at a pool of
``pool_factor * batch_size`` points and the ``nb_batches`` batches are drawn from that pool
with replacement (``pool_factor = 0``: fresh points for every batch, Weng et al.'s original
``nb_batches * batch_size`` evaluations). Unlike it, one pool serves every class ``j`` (all
margin gradients come from one forward pass and ``C`` backward passes over a large batch,
several samples' pools sharing a batch when they are small), and the Weibull fit keeps the
location strictly inside a bounded range above the largest observed maximum instead of
collapsing onto it or running off; like Weng et al.'s reference code (and unlike ART) it is
run from several shape starts and the best fit by KS p-value is kept; a fit whose location
hits the top of the range is marked ``capped`` (see :func:`fit_reverse_weibull`).

Result rows (one per sample and scored model) are built by :func:`results_frame`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from dmlcli import results
from dmlcli.data import to_float
from dmlcli.errors import DmlError
from dmlcli.eval.jobs import Job, Tick
from dmlcli.models.aggregate import parse_member
from dmlcli.models.io import Run
from dmlcli.runtime import mix_seed, seeded

NORMS = {"1": 1.0, "2": 2.0, "inf": math.inf}
DRAW_CHUNK = 256  # points drawn per generator call: fixed, so draws never depend on batching


def parse_norm(text: str | float) -> float:
    """``'1'``, ``'2'`` or ``'inf'`` (also ``1``, ``2``, ``math.inf``) -> the order p."""
    key = str(text).strip().lower()
    key = {"1.0": "1", "2.0": "2", "linf": "inf", "l2": "2", "l1": "1"}.get(key, key)
    if key not in NORMS:
        raise DmlError(f"unknown norm {text!r}; choose 1, 2 or inf")
    return NORMS[key]


def norm_name(p: float) -> str:
    """``2.0`` -> ``'2'``, ``inf`` -> ``'inf'``."""
    return "inf" if math.isinf(p) else str(int(p))


def dual_order(p: float) -> float:
    """The dual exponent q with ``1/p + 1/q = 1``: 1 <-> inf, 2 <-> 2."""
    return {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}[parse_norm(p)]


def sample_ball(
    n: int,
    shape: tuple[int, ...],
    radius: float,
    norm: float,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``n`` points ``[n, *shape]`` uniform in the ``L_norm`` ball of ``radius`` around 0.

    ``L_2``: Gaussian direction times ``radius * U^(1/d)``; ``L_inf``: uniform per
    coordinate; ``L_1``: a uniform point of the simplex (normalised exponentials, one slack
    coordinate) with random signs.
    """
    d = int(np.prod(shape))
    kw: dict[str, Any] = {"generator": generator, "device": device}
    if norm == 2.0:
        g = torch.randn(n, d, **kw)
        u = torch.rand(n, 1, **kw).pow(1.0 / d)
        out = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12) * u * radius
    elif math.isinf(norm):
        out = (torch.rand(n, d, **kw) * 2 - 1) * radius
    elif norm == 1.0:
        e = -torch.rand(n, d + 1, **kw).clamp_min(1e-12).log()  # Exp(1)
        simplex = (e / e.sum(1, keepdim=True))[:, :d]
        signs = torch.randint(0, 2, (n, d), **kw).float() * 2 - 1
        out = simplex * signs * radius
    else:
        raise DmlError(f"unknown norm {norm!r}; choose 1, 2 or inf")
    return out.view(n, *shape)


@dataclass
class WeibullFit:
    """A reverse Weibull fitted to batch maxima: ``L - m ~ Weibull(shape, scale)``.

    ``location`` is ``L`` (the right endpoint); ``status`` is ``ok``, ``boundary`` (the
    endpoint sits at the observed maximum: the likelihood has no interior optimum),
    ``capped`` (the endpoint sits at its upper bound, :data:`MAX_OFFSET` ranges above the
    observed maximum: the likelihood wanted it higher, so ``L`` may be too low and the score
    too high), ``ill-conditioned`` (KS fallback to the observed maximum) or ``degenerate``
    (all maxima equal: a constant gradient norm, ``L`` = that value). ``start`` is the shape
    start the kept fit came from.
    """

    location: float
    shape: float
    scale: float
    ks_pvalue: float
    status: str
    observed_max: float
    start: float = math.nan


#: Weibull shape starts of the fit: Weng et al.'s reference code (``clever.py``, ``c_init``).
SHAPE_STARTS: tuple[float, ...] = (0.1, 1.0, 5.0, 10.0, 20.0, 50.0, 100.0)
MAX_OFFSET = 1.0  # the endpoint is at most this many ranges of the maxima above their max
MIN_OFFSET = 1e-6  # ... and at least this many (the likelihood is unbounded at 0 for c < 1)
ILL_CONDITIONED_P = 0.001  # Weng et al.: below this KS p-value use the observed maximum
#: How a fit is made and kept; stored in every result's setting (a new rule, a new result).
FIT_RULE = "profile-mle;rescaled-to-range;moment-start-per-shape;best-ks-then-nll"


def _moment_offset(d: np.ndarray, c0: float) -> float:
    """The offset ``off`` at which ``d + off`` has the mean and variance of a Weibull of shape
    ``c0`` (what scipy's ``fit`` starts location and scale from), clipped to its bounds."""
    g1, g2 = math.gamma(1 + 1 / c0), math.gamma(1 + 2 / c0)
    spread = g2 - g1 * g1
    if not (math.isfinite(spread) and spread > 0):
        return 0.05
    scale = float(d.std()) / math.sqrt(spread)
    return min(max(scale * g1 - float(d.mean()), 2 * MIN_OFFSET), 0.99 * MAX_OFFSET)


def _fit_from(d: np.ndarray, c0: float) -> tuple[float, float, float, str]:
    """Profile-likelihood fit of ``d + off ~ Weibull(c, s)`` (``d`` rescaled to range 1) from
    shape ``c0``: (c, off, negative log-likelihood, status), status ``boundary`` / ``capped``
    where ``off`` sits at its lower / upper bound."""
    from scipy.optimize import minimize

    n = len(d)
    log_floor, log_cap = math.log(MIN_OFFSET), math.log(MAX_OFFSET)

    def nll(p: np.ndarray) -> float:
        c, off = math.exp(p[0]), math.exp(p[1])
        lz = np.log(d + off)
        czmax = c * float(lz.max())  # s^c = mean(z^c) (profiled), summed in log space
        log_mean_zc = czmax + math.log(float(np.exp(c * lz - czmax).mean()))
        return -n * math.log(c) + n * log_mean_zc - (c - 1) * float(lz.sum()) + n

    res = minimize(
        nll,
        np.array([math.log(c0), math.log(_moment_offset(d, c0))]),
        method="Nelder-Mead",
        bounds=[(math.log(1e-2), 6.0), (log_floor, log_cap)],
        options={"xatol": 1e-4, "fatol": 1e-7, "maxiter": 400},
    )
    status = "boundary" if res.x[1] <= log_floor + 1e-2 else "ok"
    status = "capped" if res.x[1] >= log_cap - 1e-3 else status
    return math.exp(res.x[0]), math.exp(res.x[1]), float(res.fun), status


def _weibull_cdf(c: float, off: float, scale: float) -> Callable[[np.ndarray], np.ndarray]:
    """The CDF of ``d`` when ``d + off ~ Weibull(c, scale)`` (scipy's ``weibull_min(c,
    loc=-off, scale=scale).cdf``, without its per-call overhead)."""
    return lambda x: -np.expm1(-np.power(np.maximum(x + off, 0.0) / scale, c))


def shape_starts(c_init: float | Sequence[float]) -> tuple[float, ...]:
    """``--c-init`` (one start or several) -> sorted distinct starts, each finite and > 0."""
    values = [c_init] if isinstance(c_init, int | float | str) else list(c_init)
    try:
        starts = [float(v) for v in values]
    except (TypeError, ValueError):
        raise DmlError(f"--c-init must be numbers > 0; got {c_init!r}") from None
    if not starts:
        raise DmlError("--c-init needs at least one Weibull shape start")
    for v in starts:
        if not (math.isfinite(v) and v > 0):
            raise DmlError(f"--c-init (Weibull shape start) must be a finite number > 0; got {v:g}")
    return tuple(sorted(set(starts)))


def fit_reverse_weibull(
    maxima: np.ndarray,
    c_init: float | Sequence[float] = SHAPE_STARTS,
    ks_fallback: bool = True,
) -> WeibullFit:
    """Maximum-likelihood reverse Weibull fit to ``maxima`` ``[nb_batches]`` (Weng et al.).

    As in Weng et al.'s reference code, the maxima are first shifted by their maximum and
    divided by their range (``d = (max - m) / range`` lies in [0, 1]; the fit's location and
    scale are mapped back), and the fit is run from every shape start in ``c_init`` (default
    the reference's :data:`SHAPE_STARTS`; a start far from the true shape can end in a poor
    local optimum); the fit with the best KS p-value is kept (ties: the higher likelihood).
    Each fit profiles the scale out analytically and Nelder-Mead (scipy) searches the shape
    and the offset ``L - max(maxima)`` in log space, started where a Weibull of the start
    shape matches the mean and variance of ``d`` and bounded to
    ``[MIN_OFFSET, MAX_OFFSET]`` ranges. scipy's generic ``weibull_min.fit`` (what ART calls)
    often returns ``L = max(maxima)`` exactly (a degenerate point of infinite density) or,
    now and then, a location millions of times the observed maximum (a CLEVER score of ~0);
    the bounded optimum avoids both, and a fit whose offset hits the upper bound is marked
    ``capped`` (``L`` is then a lower bound of what the likelihood wanted). A best KS
    p-value below 0.001 marks the maxima ill-conditioned and the observed maximum is used
    (as in the reference). ``status``: ``ok``, ``boundary``/``capped`` (offset at its
    lower/upper bound), ``ill-conditioned`` or ``degenerate`` (all maxima equal, e.g. a
    linear model).

    ``ks_fallback=False`` keeps the fitted location whatever the p-value. Maxima of batches
    resampled from a finite pool repeat the pool's top values, and a KS test against a
    continuous law rejects such ties almost always (about half of all fits on a trained
    Fashion-MNIST ensemble). Falling back to the observed maximum would then lower ``L`` and
    raise the score, in the defense's favour; the bounded fit is never below it.
    """
    from scipy.stats import kstest

    m = np.asarray(maxima, dtype=np.float64)
    if not np.isfinite(m).all():
        raise DmlError("CLEVER: non-finite gradient norms (the model returns NaN gradients)")
    top, spread = float(m.max()), float(m.max() - m.min())
    if spread <= 1e-6 * max(abs(top), 1e-12):
        return WeibullFit(top, math.nan, math.nan, math.nan, "degenerate", top)
    d = (top - m) / spread
    best: tuple[float, float] | None = None  # (KS p-value, -nll) of the kept fit
    fit: WeibullFit | None = None
    for c0 in shape_starts(c_init):
        c, off, nll, status = _fit_from(d, c0)
        scale = float(np.mean((d + off) ** c) ** (1.0 / c))
        pvalue = float(kstest(d, _weibull_cdf(c, off, scale)).pvalue)
        rank = (pvalue if math.isfinite(pvalue) else -1.0, -nll)
        if best is None or rank > best:
            best = rank
            fit = WeibullFit(top + off * spread, c, scale * spread, pvalue, status, top, c0)
    assert fit is not None
    if ks_fallback and not fit.ks_pvalue >= ILL_CONDITIONED_P:
        return WeibullFit(
            top, fit.shape, fit.scale, fit.ks_pvalue, "ill-conditioned", top, fit.start
        )
    return fit


@dataclass
class CleverSettings:
    """CLEVER settings; defaults are the paper's (Weng et al.'s ``N_b = 500``, ``N_s = 1024``).

    ``c_init``: the Weibull shape start(s) of the fit (default Weng et al.'s seven; the best
    fit by KS p-value is kept, :func:`fit_reverse_weibull`). ``grad_batch`` is how many
    points go through one forward/backward; it changes speed and
    memory, never the scores (512 was fastest for LeNet-5 on 1 and 2 CPU threads:
    ``benchmarks/clever_throughput.py``).
    """

    norm: float = 2.0
    radius: float = 2.0
    nb_batches: int = 500
    batch_size: int = 1024
    pool_factor: int = 10
    c_init: float | Sequence[float] = SHAPE_STARTS  # Weibull shape start(s) of the fit
    grad_batch: int = 512

    def validate(self) -> CleverSettings:
        self.norm = parse_norm(self.norm)
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise DmlError(f"--radius must be a finite number > 0; got {self.radius}")
        if self.nb_batches < 3:
            raise DmlError(f"--nb-batches must be at least 3 (Weibull fit); got {self.nb_batches}")
        if self.batch_size < 1:
            raise DmlError(f"--batch-size must be at least 1; got {self.batch_size}")
        if self.pool_factor < 0:
            raise DmlError(f"--pool-factor must be >= 0 (0 = fresh points); got {self.pool_factor}")
        self.c_init = shape_starts(self.c_init)
        if self.grad_batch < 1:
            raise DmlError(f"--grad-batch must be at least 1; got {self.grad_batch}")
        return self

    @property
    def pool(self) -> int:
        """Distinct gradient evaluations per sample."""
        if self.pool_factor == 0:
            return self.nb_batches * self.batch_size
        return self.pool_factor * self.batch_size

    def setting(self) -> dict[str, Any]:
        out = asdict(self)
        out["norm"] = norm_name(self.norm)
        out.pop("grad_batch")  # does not change the result
        # How points are drawn and fits are kept: results computed before either changed
        # (draws sized by the gradient batch; the KS fallback on pooled maxima; one shape
        # start) get other keys.
        out["draw_chunk"] = DRAW_CHUNK
        out["ks_fallback"] = self.pool_factor == 0
        out["c_init"] = list(shape_starts(self.c_init))
        out["fit"] = FIT_RULE
        out["max_offset"] = MAX_OFFSET
        return out


class ScoredModel(nn.Module):
    """What CLEVER scores: ``x`` ``[B, C, H, W]`` -> logits ``[B, classes]``.

    ``target='sum'``: the summed member logits (the paper's choice); ``'member:k'`` (1-based):
    member k alone.
    """

    def __init__(self, ensemble: nn.Module, target: str = "sum") -> None:
        super().__init__()
        self.ensemble, self.target = ensemble, target
        if target == "sum":
            self.k = None
        elif target.startswith("member:"):
            self.k = parse_member(target, ensemble.num_members)
        else:
            raise DmlError(f"unknown --target {target!r}; choose sum or member:K")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.ensemble(x)
        return logits.sum(0) if self.k is None else logits[self.k]


def margin_grad_norms(
    model: nn.Module, points: torch.Tensor, pred: torch.Tensor, q: float, num_classes: int
) -> torch.Tensor:
    """``||grad_x (f_c - f_j)(point)||_q`` for every point and class: ``[N, C]`` (0 at j = c).

    ``points``: ``[N, C_in, H, W]``; ``pred``: ``[N]`` the reference class c of each point.
    One forward pass and ``C - 1`` vector-Jacobian products over the whole batch: the k-th
    backs ``e_c - e_j`` through the logits with ``j`` the k-th class other than each point's
    ``c`` (the margin to c itself is identically 0 and needs no pass).
    """
    n = len(points)
    points = points.detach().requires_grad_(True)
    pred = pred.to(points.device)
    rows = torch.arange(n, device=points.device)
    out = torch.zeros(n, num_classes, device=points.device)
    with torch.enable_grad():
        logits = model(points)
        for k in range(num_classes - 1):
            j = k + (pred <= k).long()  # skip c: classes 0..c-1, then c+1..C-1
            v = torch.zeros_like(logits)
            v[rows, pred] = 1.0
            v[rows, j] = -1.0
            (grad,) = torch.autograd.grad(logits, points, v, retain_graph=k < num_classes - 2)
            out[rows, j] = grad.flatten(1).norm(p=q, dim=1).to(out.dtype)
    return out.detach()


@dataclass
class CleverResult:
    """CLEVER of one sample: the score and, per class j, margin, location and fit."""

    score: float
    pred: int
    argmin_class: int
    margins: list[float]
    fits: list[WeibullFit | None]
    seconds: float = math.nan


def _batch_maxima(
    norms: torch.Tensor, s: CleverSettings, generator: torch.Generator
) -> torch.Tensor:
    """``[pool, C]`` gradient norms -> ``[nb_batches, C]`` batch maxima."""
    if s.pool_factor == 0:
        return norms.view(s.nb_batches, s.batch_size, -1).amax(1)
    idx = torch.randint(
        0, len(norms), (s.nb_batches, s.batch_size), generator=generator, device=norms.device
    )
    return norms[idx].amax(1)


def score_sample(
    margins: np.ndarray, pred: int, maxima: np.ndarray, s: CleverSettings
) -> CleverResult:
    """Fit every class's maxima (``[nb_batches, C]``) and combine with ``margins`` ``[C]``."""
    fits: list[WeibullFit | None] = []
    scores = np.full(len(margins), np.inf)
    for j in range(len(margins)):
        if j == pred:
            fits.append(None)
            continue
        # With a pool (pool_factor > 0) the maxima have ties: no KS fallback (see the fit).
        fit = fit_reverse_weibull(maxima[:, j], s.c_init, ks_fallback=s.pool_factor == 0)
        fits.append(fit)
        scores[j] = min(margins[j] / fit.location, s.radius) if fit.location > 0 else s.radius
    j_min = int(np.argmin(scores))
    return CleverResult(float(scores[j_min]), pred, j_min, [float(v) for v in margins], fits)


def clever_u(
    model: nn.Module,
    x: torch.Tensor,
    settings: CleverSettings,
    seeds: list[int] | None = None,
    on_sample: Callable[[int, CleverResult], None] | None = None,
) -> list[CleverResult]:
    """Untargeted CLEVER for every image of ``x`` ``[N, C, H, W]`` (pixels in [0, 1]).

    ``model`` maps pixels to logits ``[B, classes]`` (e.g. :class:`ScoredModel`); ``seeds``
    (one per sample, default ``0..N-1``) make each sample's draws independent of the others
    and of the batching (drawn :data:`DRAW_CHUNK` points at a time). Points are streamed
    through gradient batches of ``settings.grad_batch`` (a small pool shares a batch with
    other samples' pools);
    ``on_sample(i, result)`` is called as each sample completes.
    """
    s = settings.validate()
    device = x.device
    q = dual_order(s.norm)
    seeds = list(range(len(x))) if seeds is None else [int(v) for v in seeds]
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)])
    c = logits.shape[1]
    preds = logits.argmax(1)
    margins = (logits.gather(1, preds[:, None]) - logits).double().cpu().numpy()
    results: dict[int, CleverResult] = {}
    gens: dict[int, torch.Generator] = {}
    collected: dict[int, list[torch.Tensor]] = {}
    buffer: list[tuple[int, torch.Tensor]] = []
    clock = [time.perf_counter()]

    def flush() -> None:
        pts = torch.cat([p for _, p in buffer])
        ref = torch.cat([preds[i].expand(len(p)) for i, p in buffer])
        norms = torch.cat(
            [
                margin_grad_norms(model, p, r, q, c)
                for p, r in zip(pts.split(s.grad_batch), ref.split(s.grad_batch), strict=True)
            ]
        )
        for (i, _), part in zip(buffer, norms.split([len(p) for _, p in buffer]), strict=True):
            collected[i].append(part)
            if sum(len(t) for t in collected[i]) == s.pool:
                maxima = _batch_maxima(torch.cat(collected.pop(i)), s, gens.pop(i))
                res = score_sample(margins[i], int(preds[i]), maxima.cpu().numpy(), s)
                now = time.perf_counter()
                res.seconds, clock[0] = now - clock[0], now
                results[i] = res
                if on_sample is not None:
                    on_sample(i, res)
        buffer.clear()

    shape = tuple(x.shape[1:])
    for i in range(len(x)):
        gens[i] = torch.Generator(device=device).manual_seed(seeds[i])
        collected[i] = []
        for done in range(0, s.pool, DRAW_CHUNK):
            m = min(DRAW_CHUNK, s.pool - done)
            pts = x[i] + sample_ball(m, shape, s.radius, s.norm, gens[i], device)
            buffer.append((i, pts.clamp_(0, 1)))
            if sum(len(p) for _, p in buffer) >= s.grad_batch:
                flush()
    if buffer:
        flush()
    return [results[i] for i in range(len(x))]


def results_frame(
    results: list[CleverResult],
    idx: np.ndarray,
    labels: np.ndarray,
    target: str,
    first: int = 0,
) -> pd.DataFrame:
    """One row per sample: ``sample`` (position in the evaluation subset, counted from
    ``first`` for a batch starting there), ``idx`` (test-set
    index), ``label``, ``pred``, ``correct``, ``model`` (the scored target), ``score``
    (CLEVER w.r.t. the predicted class), ``score_label`` (``score`` if the prediction is
    right, else 0: the paper's "non-zero CLEVER scores"), ``argmin_class``, ``seconds``, and
    per class j (lists of length C, NaN / ``""`` at j = pred): ``margin``, ``location`` (the
    fitted max gradient norm ``L_j``), ``observed_max``, ``weibull_shape``,
    ``weibull_scale``, ``ks_pvalue``, ``fit_status``.
    """
    rows = []
    for pos, (res, i, y) in enumerate(zip(results, idx, labels, strict=True)):

        def col(name: str, fits: list[WeibullFit | None] = res.fits) -> list[float]:
            return [math.nan if f is None else float(getattr(f, name)) for f in fits]

        rows.append(
            {
                "sample": first + pos,
                "idx": int(i),
                "label": int(y),
                "pred": res.pred,
                "correct": bool(res.pred == int(y)),
                "model": target,
                "score": res.score,
                "score_label": res.score if res.pred == int(y) else 0.0,
                "argmin_class": res.argmin_class,
                "seconds": float(getattr(res, "seconds", math.nan)),
                "margin": [math.nan if j == res.pred else v for j, v in enumerate(res.margins)],
                "location": col("location"),
                "observed_max": col("observed_max"),
                "weibull_shape": col("shape"),
                "weibull_scale": col("scale"),
                "ks_pvalue": col("ks_pvalue"),
                "fit_status": ["" if f is None else f.status for f in res.fits],
            }
        )
    return pd.DataFrame(rows)


def head_lipschitz(ensemble: nn.Module) -> list[dict[str, float]] | None:
    """Lipschitz bounds of every member's DML head (Lemma 1 and A.1); None for linear heads.

    Per member: ``p_spectral = ||P||_2`` (each distance ``d_c(z) = ||P (z - c)||`` is exactly
    this Lipschitz in z, so a logit margin ``d_j - d_c`` is at most twice it),
    ``lemma1 = sqrt(2) ||P||_2`` (Lemma 1), ``alpha_m = max_i M_ii``, ``beta_m = min_i M_ii``
    and the paper's diagonal form (A.1) ``alpha_m^(1/4)`` and ``beta_m^(1/4)``. For a diagonal
    M, ``||P||_2 = sqrt(alpha_m)``.
    """
    head = getattr(ensemble, "head", None)
    if head is None or not hasattr(head, "p_matrix"):
        return None
    with torch.no_grad():
        p = head.p_matrix().double().cpu()
        m = head.m_matrix().double().cpu()
    out = []
    for k in range(len(p)):
        spectral = float(torch.linalg.matrix_norm(p[k], ord=2))
        diag = m[k].diagonal().abs()
        out.append(
            {
                "member": k + 1,
                "p_spectral": spectral,
                "lemma1": math.sqrt(2.0) * spectral,
                "margin_bound": 2.0 * spectral,
                "alpha_m": float(diag.max()),
                "beta_m": float(diag.min()),
                "paper_diag_upper": float(diag.max()) ** 0.25,
                "paper_diag_lower": float(diag.min()) ** 0.25,
            }
        )
    return out


def clever_job(
    run: Run,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    settings: CleverSettings,
    *,
    target: str = "sum",
    seed: int = 0,
    part_size: int = 10,
    device: str | torch.device = "cpu",
) -> Job:
    """CLEVER scores of ``target`` (``sum`` or ``member:k``) for the evaluation samples
    ``indices`` ``[n]`` of ``images`` uint8 ``[N, C, H, W]``; ``part_size`` samples a block.
    Every sample draws from its own generator (``seed``, its test index), so scores do not
    depend on blocks, shards or ``grad_batch``."""
    settings.validate()
    scored = ScoredModel(run.model, target)
    for p in run.model.parameters():
        p.requires_grad_(False)
    setting = {
        **settings.setting(),
        "n": len(indices),
        "seed": seed,
        "target": target,
        "checkpoint": run.checkpoint,
    }
    config = getattr(run.model, "config", None)
    extra = {
        "dataset": run.dataset,
        "members": run.num_members,
        "head": config.head if config is not None else "custom",
        "head_lipschitz": head_lipschitz(run.model),
    }
    seeds = [mix_seed(seed, int(i)) for i in indices]

    def compute(start: int, stop: int, tick: Tick) -> tuple[dict, dict]:
        idx = indices[start:stop]
        x = to_float(images[idx]).to(device)
        count = {"done": 0}

        def done(i: int, res: CleverResult) -> None:
            count["done"] += 1
            tick(count["done"] / len(idx), "")

        with seeded(seed + start, device):  # randomized heads draw from the global generator
            res = clever_u(scored.to(device), x, settings, seeds=seeds[start:stop], on_sample=done)
        rows = results_frame(res, idx.numpy(), labels[idx].numpy(), target, start)
        return {"rows": results.frame("clever", rows)}, {}

    def info(df: pd.DataFrame) -> str:
        return f"median {float(np.median(df['score'])):.3f}"

    return Job(
        kind="clever",
        run=run.name,
        setting=setting,
        ids=indices.tolist(),
        compute=compute,
        size=part_size,
        label=f"clever {target} L{norm_name(settings.norm)} R={settings.radius:g}",
        extra=extra,
        id_column="idx",
        columns=["sample", "score", "score_label", "fit_status", "seconds"],
        info=info,
    )
