"""Randomized smoothing (Cohen et al. 2019): CERTIFY, PREDICT and certified accuracy (A.9).

The smoothed classifier is ``g(x) = argmax_c P(f(x + delta) = c)``, ``delta ~ N(0, sigma^2 I)``,
where the base classifier ``f`` is a decision rule (``vote``, ``sum``, ...) applied to the
ensemble's member logits ``[K, B, C]``. Noise is added to the pixels and not clipped (as in
the reference implementation). Randomized heads (R-DML, AUG-DML) draw their own noise on every
forward pass; the guarantee still holds for the smoothed classifier over both noises.

- CERTIFY: a class guess from ``n0`` draws; ``n`` fresh draws; one-sided Clopper-Pearson
  lower bound ``p_A`` at level ``1 - alpha``; abstain (-1) if ``p_A < 1/2``, otherwise
  ``radius = sigma * Phi^-1(p_A)``.
- PREDICT: ``n`` draws; the top two counts ``n_A, n_B``; abstain unless a two-sided binomial
  test of ``n_A`` out of ``n_A + n_B`` at ``p = 1/2`` has p-value ``<= alpha``.

Result rows (Cohen et al.'s ``certify.py`` output): ``idx, label, predict, radius, correct,
seconds`` with ``predict = -1`` for an abstention, plus PREDICT's ``smoothed`` and
``smoothed_correct``, and the lower bound ``p_a``. :func:`certified_accuracy` turns them into
the curves of Fig. 14-16 (an abstention counts as wrong).
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
from dmlcli.models.aggregate import create_decision
from dmlcli.models.io import Run
from dmlcli.results import ABSTAIN
from dmlcli.runtime import mix_seed, seeded

DECISIONS = ("vote", "meta-vote", "sum", "mean-softmax")


@dataclass
class CertifySettings:
    """Settings of CERTIFY/PREDICT; defaults are Cohen et al.'s (``n = 100000``)."""

    sigma: float = 0.25
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    predict_n: int = 1000
    batch_size: int = 1000

    def validate(self) -> CertifySettings:
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise DmlError(f"--sigma must be a finite number > 0; got {self.sigma}")
        if not (0 < self.alpha < 1):
            raise DmlError(f"--alpha must lie in (0, 1); got {self.alpha}")
        for flag, value in (
            ("--n0", self.n0),
            ("--n", self.n),
            ("--predict-n", self.predict_n),
            ("--batch-size", self.batch_size),
        ):
            if value < 1:
                raise DmlError(f"{flag} must be at least 1; got {value}")
        if self.n0 > self.n:
            raise DmlError(
                f"--n0 {self.n0} is larger than --n {self.n}: the class guess should take "
                "fewer draws than the bound (Cohen et al.: n0 100, n 100000)"
            )
        return self

    def setting(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("batch_size")  # does not change the result
        return out


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided ``(1 - alpha)`` Clopper-Pearson lower bound on a binomial proportion."""
    from scipy.stats import beta

    if n_a <= 0:
        return 0.0
    return float(beta.ppf(alpha, n_a, n - n_a + 1))


def certified_radius(p_a: float, sigma: float) -> float:
    """``sigma * Phi^-1(p_a)`` (Cohen et al. Theorem 1 with ``p_B = 1 - p_A``)."""
    from scipy.stats import norm

    return float(sigma * norm.ppf(p_a))


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return with ``n`` draws: all ``n`` votes for the top class
    give ``pA = alpha^(1/n)`` (Clopper-Pearson), so ``R = sigma * Phi^-1(alpha^(1/n))``; radii
    above it are certified for no input, whatever the model."""
    return certified_radius(lower_confidence_bound(n, n, alpha), sigma)


def base_classifier(ensemble: nn.Module, decision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Pixels ``[B, C, H, W]`` -> labels ``[B]``: ``decision`` over the member logits."""
    rule = create_decision(decision, ensemble.trainable_sets)

    def classify(x: torch.Tensor) -> torch.Tensor:
        return rule(ensemble(x))

    return classify


@torch.no_grad()
def sample_counts(
    classify: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    num: int,
    sigma: float,
    num_classes: int,
    batch_size: int,
    generator: torch.Generator,
) -> np.ndarray:
    """Class counts ``[num_classes]`` of ``classify(x + sigma * N(0, I))`` over ``num`` draws.

    ``x``: one image ``[C, H, W]``; draws run in batches of ``batch_size``.
    """
    counts = torch.zeros(num_classes, dtype=torch.long, device=x.device)
    # One noise buffer for every batch, filled in place: no allocation per draw batch.
    buf = torch.empty(min(batch_size, num), *x.shape, dtype=x.dtype, device=x.device)
    remaining = num
    while remaining > 0:
        b = min(batch_size, remaining)
        batch = buf[:b]
        torch.randn(batch.shape, generator=generator, out=batch)
        batch.mul_(sigma).add_(x)
        labels = classify(batch)
        labels = labels[labels >= 0]
        counts += torch.bincount(labels, minlength=num_classes)
        remaining -= b
    return counts.cpu().numpy()


def certify(
    classify: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    settings: CertifySettings,
    num_classes: int,
    generator: torch.Generator,
) -> tuple[int, float, float]:
    """Cohen et al.'s CERTIFY for one image ``[C, H, W]``: ``(label or -1, radius, p_A)``."""
    s = settings
    counts0 = sample_counts(classify, x, s.n0, s.sigma, num_classes, s.batch_size, generator)
    guess = int(counts0.argmax())
    counts = sample_counts(classify, x, s.n, s.sigma, num_classes, s.batch_size, generator)
    p_a = lower_confidence_bound(int(counts[guess]), s.n, s.alpha)
    if p_a < 0.5:
        return ABSTAIN, 0.0, p_a
    return guess, certified_radius(p_a, s.sigma), p_a


def predict(
    classify: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    settings: CertifySettings,
    num_classes: int,
    generator: torch.Generator,
) -> int:
    """Cohen et al.'s PREDICT for one image ``[C, H, W]``: the label, or -1 (abstain)."""
    from scipy.stats import binomtest

    s = settings
    counts = sample_counts(classify, x, s.predict_n, s.sigma, num_classes, s.batch_size, generator)
    top2 = np.argsort(counts)[::-1][:2]
    n_a, n_b = int(counts[top2[0]]), int(counts[top2[1]])
    if n_a + n_b == 0 or binomtest(n_a, n_a + n_b, 0.5).pvalue > s.alpha:
        return ABSTAIN
    return int(top2[0])


def certify_samples(
    ensemble: nn.Module,
    decision: str,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: Sequence[int],
    settings: CertifySettings,
    seed: int = 0,
    on_sample: Callable[[dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """CERTIFY and PREDICT every image of ``x`` ``[N, C, H, W]`` (labels ``y`` ``[N]``).

    Each sample draws from its own generator seeded by ``(seed, idx)`` (and so does a
    randomized head, through the global generator forked per sample), so a row does not
    depend on which other samples were evaluated: any subset, resumed or sharded, gives the
    same rows. Returns the rows described in the module docstring.
    """
    s = settings.validate()
    classify = base_classifier(ensemble, decision)
    c = ensemble.num_classes
    rows = []
    for i in range(len(x)):
        t0 = time.perf_counter()
        sample_seed = mix_seed(seed, int(idx[i]))
        gen = torch.Generator(device=x.device).manual_seed(sample_seed)
        label = int(y[i])
        with seeded(sample_seed, x.device):
            pred, radius, p_a = certify(classify, x[i], s, c, gen)
            smoothed = predict(classify, x[i], s, c, gen)
        row = {
            "idx": int(idx[i]),
            "label": label,
            "predict": pred,
            "radius": radius,
            "correct": int(pred == label),
            "seconds": time.perf_counter() - t0,
            "p_a": p_a,
            "smoothed": smoothed,
            "smoothed_correct": int(smoothed == label),
        }
        rows.append(row)
        if on_sample is not None:
            on_sample(row)
    return pd.DataFrame(rows)


def certify_job(
    run: Run,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    settings: CertifySettings,
    *,
    decision: str = "vote",
    seed: int = 0,
    part_size: int = 10,
    device: str | torch.device = "cpu",
    trained_head: str | None = None,
) -> Job:
    """CERTIFY and PREDICT the smoothed ``decision`` of ``run`` on the evaluation samples
    ``indices`` ``[n]`` of ``images`` uint8 ``[N, C, H, W]``; ``part_size`` samples a block.
    ``trained_head`` names the head the weights were trained with when ``run.model`` has
    another one (:meth:`~dmlcli.models.ensemble.Ensemble.with_head`)."""
    settings.validate()
    create_decision(decision, getattr(run.model, "trainable_sets", [[]] * run.num_members))
    config = getattr(run.model, "config", None)
    head = config.head if config is not None else "custom"
    setting = {
        **settings.setting(),
        "n_samples": len(indices),
        "decision": decision,
        "seed": seed,
        "head": head,
        "head_sigma": config.head_sigma if run.randomized else None,
        "head_samples": config.head_samples if run.randomized else None,
        "checkpoint": run.checkpoint,
    }
    extra = {
        "dataset": run.dataset,
        "members": run.num_members,
        "trained_head": trained_head or head,
    }

    def compute(start: int, stop: int, tick: Tick) -> tuple[dict, dict]:
        idx = indices[start:stop]
        x = to_float(images[idx]).to(device)
        count = {"done": 0}

        def done(row: dict) -> None:
            count["done"] += 1
            tick(count["done"] / len(idx), "")

        rows = certify_samples(
            run.model.to(device), decision, x, labels[idx], idx.tolist(), settings, seed=seed,
            on_sample=done,
        )  # fmt: skip
        return {"rows": results.frame("certify", rows)}, {}

    def info(df: pd.DataFrame) -> str:
        certified = int((df["predict"] != ABSTAIN).sum())
        return f"certified {certified}, correct {int(df['correct'].sum())}"

    return Job(
        kind="certify",
        run=run.name,
        setting=setting,
        ids=indices.tolist(),
        compute=compute,
        size=part_size,
        label=f"certify {decision} sigma={settings.sigma:g}",
        extra=extra,
        id_column="idx",
        columns=["label", "predict", "radius", "correct", "seconds", "smoothed_correct"],
        info=info,
    )
