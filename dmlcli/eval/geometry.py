"""Gradient and loss-surface geometry of the members (A.7, Fig. 9-11; Fig. 2 and 17).

**Gradient alignment** (:func:`gradient_cosines`). For every sample ``x`` with label ``y``
and member k, ``g_k = grad_x CE(F_k(x), y)``; for every pair ``k < t`` the cosine similarity
of ``g_k`` and ``g_t`` and of their signs (what PGD steps along). Rows (kind ``gradients``):
``idx, label, member_a, member_b`` (1-based) ``, cosine, sign_cosine, norm_a, norm_b`` — one
row per (sample, member pair): a histogram of ``cosine`` per pair is Fig. 9-11.

**Loss surface** (:func:`loss_surface`). Around a sample ``x_s``: the points
``clip(x_s + r * d + theta * P, 0, 1)`` for ``r`` on ``linspace(0, r_max, grid)`` and
``theta`` on ``linspace(-theta_max, theta_max, grid)``, ``P ~ N(0, noise_std^2 I)`` (one
draw per sample, ``noise_std = 0.05``) and ``d`` the direction of the gradient of the
ensemble's cross-entropy (CE of the summed member logits, the attack surface): ``sign``
(``sign(g)``, so ``r`` is an L-inf step) or ``normalized`` (``g`` rescaled to the L2 length
of ``sign(g)``, i.e. ``sqrt(D)``, so both directions are comparable). Rows (kind
``surface``), long format: ``idx, label, model, r, theta, loss`` with ``model`` in
``member:1..K`` and ``sum`` (the ensemble's CE) — one row per (sample, model, r, theta). To
plot Fig. 2 for one sample and member::

    grid = df[(df.idx == i) & (df.model == "member:1")].pivot(index="r", columns="theta",
                                                               values="loss")
    ax.plot_surface(*np.meshgrid(grid.columns, grid.index), grid.to_numpy())
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from dmlcli import results
from dmlcli.data import to_float
from dmlcli.errors import DmlError
from dmlcli.eval.jobs import Job, Tick
from dmlcli.models.io import Run
from dmlcli.runtime import mix_seed

DIRECTIONS = ("sign", "normalized")


def member_input_gradients(ensemble: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``grad_x CE(F_k(x), y)`` for every member: ``[K, B, D]`` for ``x`` ``[B, C, H, W]``.

    One forward pass and K backward passes (each member's CE alone; the per-sample losses
    are summed, which leaves every sample's gradient its own).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = ensemble(x)  # [K, B, C]
        k = logits.shape[0]
        grads = []
        for m in range(k):
            loss = F.cross_entropy(logits[m], y, reduction="sum")
            (g,) = torch.autograd.grad(loss, x, retain_graph=m < k - 1)
            grads.append(g.flatten(1))
    return torch.stack(grads).detach()


def pair_cosines(grads: torch.Tensor) -> dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]:
    """For gradients ``[K, B, D]``: ``{(a, b): (cosine [B], sign cosine [B])}`` for ``a < b``.

    A zero gradient has cosine 0 with everything (``eps`` in the norm). Each gradient is first
    divided by its largest entry (the cosine is scale-free): a saturated softmax gives
    gradients near 1e-40, whose squared norms underflow in float32 and made cosines garbage.
    """
    k = grads.shape[0]
    signs = grads.sign()
    peak = grads.abs().amax(dim=-1, keepdim=True)
    grads = torch.where(peak > 0, grads / peak.clamp_min(torch.finfo(grads.dtype).tiny), grads)
    out = {}
    for a in range(k):
        for b in range(a + 1, k):
            cos = F.cosine_similarity(grads[a], grads[b], dim=1, eps=1e-12)
            sign_cos = F.cosine_similarity(signs[a], signs[b], dim=1, eps=1e-30)
            out[(a, b)] = (cos, sign_cos)
    return out


def gradient_cosines(
    ensemble: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: Sequence[int],
    batch_size: int = 256,
    on_batch: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Cosine similarity of every member pair's input gradients over ``x`` ``[N, C, H, W]``.

    Returns the ``gradients`` rows described in the module docstring.
    """
    frames = []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        grads = member_input_gradients(ensemble, xb, yb)
        norms = grads.norm(dim=2)
        ib = np.asarray(idx[start : start + batch_size])
        for (a, b), (cos, sign_cos) in pair_cosines(grads).items():
            frames.append(
                pd.DataFrame(
                    {
                        "idx": ib,
                        "label": yb.cpu().numpy(),
                        "member_a": a + 1,
                        "member_b": b + 1,
                        "cosine": cos.cpu().numpy().astype(np.float64),
                        "sign_cosine": sign_cos.cpu().numpy().astype(np.float64),
                        "norm_a": norms[a].cpu().numpy().astype(np.float64),
                        "norm_b": norms[b].cpu().numpy().astype(np.float64),
                    }
                )
            )
        if on_batch is not None:
            on_batch(len(xb))
    df = pd.concat(frames, ignore_index=True)
    return df.sort_values(["member_a", "member_b", "idx"], kind="stable", ignore_index=True)


@dataclass
class SurfaceSettings:
    """The grid of Fig. 2: ``r`` in ``[0, r_max]``, ``theta`` in ``[-theta_max, theta_max]``."""

    grid: int = 21
    r_max: float = 0.1
    theta_max: float = 0.1
    noise_std: float = 0.05
    direction: str = "sign"

    def validate(self) -> SurfaceSettings:
        if self.grid < 2:
            raise DmlError(f"--grid must be at least 2; got {self.grid}")
        for flag, value in (
            ("--r-max", self.r_max),
            ("--theta-max", self.theta_max),
            ("--noise-std", self.noise_std),
        ):
            if not (np.isfinite(value) and value > 0):
                raise DmlError(f"{flag} must be a finite number > 0; got {value}")
        if self.direction not in DIRECTIONS:
            raise DmlError(
                f"unknown --direction {self.direction!r}; choose {' or '.join(DIRECTIONS)}"
            )
        return self

    def setting(self) -> dict[str, Any]:
        return asdict(self)


def ensemble_direction(
    ensemble: nn.Module, x: torch.Tensor, y: torch.Tensor, direction: str
) -> torch.Tensor:
    """Direction ``d`` ``[B, C, H, W]`` from the gradient of CE(summed logits, y)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(ensemble(x).sum(0), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, x)
    if direction == "sign":
        return g.sign()
    if direction == "normalized":
        flat = g.flatten(1)
        scale = flat.shape[1] ** 0.5 / flat.norm(dim=1).clamp_min(1e-30)
        return g * scale.view(-1, *([1] * (g.dim() - 1)))
    raise DmlError(f"unknown direction {direction!r}; choose {' or '.join(DIRECTIONS)}")


@torch.no_grad()
def loss_surface(
    ensemble: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: Sequence[int],
    settings: SurfaceSettings,
    seed: int = 0,
    batch_size: int = 512,
    on_sample: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Each member's CE (and the ensemble's) on the Fig. 2 grid around every image of ``x``.

    ``x`` ``[N, C, H, W]``, ``y`` ``[N]``; ``P`` is drawn per sample from a generator seeded
    by ``(seed, idx)``. Returns the ``surface`` rows described in the module docstring.
    """
    s = settings.validate()
    steps = np.arange(s.grid, dtype=np.float64)
    rs = steps / (s.grid - 1) * s.r_max
    thetas = (2 * steps - (s.grid - 1)) / (s.grid - 1) * s.theta_max  # exact 0 for odd grids
    r_np, t_np = (a.reshape(-1) for a in np.meshgrid(rs, thetas, indexing="ij"))
    rr = torch.as_tensor(r_np, dtype=x.dtype, device=x.device)
    tt = torch.as_tensor(t_np, dtype=x.dtype, device=x.device)
    frames = []
    for i in range(len(x)):
        gen = torch.Generator(device=x.device).manual_seed(mix_seed(seed, int(idx[i])))
        p = torch.randn(x[i].shape, generator=gen, device=x.device) * s.noise_std
        d = ensemble_direction(ensemble, x[i : i + 1], y[i : i + 1], s.direction)[0]
        view = (-1,) + (1,) * x[i].dim()
        points = (x[i] + rr.view(view) * d + tt.view(view) * p).clamp(0, 1)
        losses = []
        for start in range(0, len(points), batch_size):
            logits = ensemble(points[start : start + batch_size])  # [K, b, C]
            target = y[i].expand(logits.shape[1])
            member = torch.stack([F.cross_entropy(lg, target, reduction="none") for lg in logits])
            total = F.cross_entropy(logits.sum(0), target, reduction="none")
            losses.append(torch.cat([member, total[None]]))
        loss = torch.cat(losses, dim=1).cpu().numpy().astype(np.float64)  # [K + 1, grid^2]
        k = loss.shape[0] - 1
        names = [f"member:{m + 1}" for m in range(k)] + ["sum"]
        for m, name in enumerate(names):
            frames.append(
                pd.DataFrame(
                    {
                        "idx": int(idx[i]),
                        "label": int(y[i]),
                        "model": name,
                        "r": r_np,
                        "theta": t_np,
                        "loss": loss[m],
                    }
                )
            )
        if on_sample is not None:
            on_sample(1)
    return pd.concat(frames, ignore_index=True)


def geometry_job(
    run: Run,
    kind: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    *,
    seed: int = 0,
    settings: SurfaceSettings | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> Job:
    """``gradients`` (cosine of members' input gradients, A.7) or ``surface`` (loss surfaces,
    Fig. 2) of ``run`` on the samples ``indices`` ``[n]`` of ``images`` uint8
    ``[N, C, H, W]``, computed in one block (a few seconds)."""
    if kind not in ("gradients", "surface"):
        raise DmlError(f"unknown geometry {kind!r}; choose gradients or surface")
    if batch_size < 1:
        raise DmlError(f"--batch-size must be at least 1; got {batch_size}")
    s = (settings or SurfaceSettings()).validate()
    setting: dict[str, Any] = {"n": len(indices)}
    if kind == "surface":
        setting.update(s.setting())
    setting.update(seed=seed, checkpoint=run.checkpoint)
    for p in run.model.parameters():
        p.requires_grad_(False)
    config = getattr(run.model, "config", None)
    extra = {
        "dataset": run.dataset,
        "members": run.num_members,
        "head": config.head if config is not None else "custom",
    }

    def compute(start: int, stop: int, tick: Tick) -> tuple[dict, dict]:
        torch.manual_seed(seed)
        idx = indices[start:stop]
        x = to_float(images[idx]).to(device)
        y = labels[idx].to(device)
        total, done = len(idx), {"n": 0}

        def advance(count: int) -> None:
            done["n"] += count
            tick(done["n"] / total, "")

        model = run.model.to(device)
        if kind == "gradients":
            df = gradient_cosines(model, x, y, idx.tolist(), batch_size, advance)
        else:
            df = loss_surface(model, x, y, idx.tolist(), s, seed, batch_size, advance)
        return {"rows": results.frame(kind, df)}, {}

    return Job(
        kind=kind,
        run=run.name,
        setting=setting,
        ids=indices.tolist(),
        compute=compute,
        size=max(len(indices), 1),
        label=kind,
        extra=extra,
        id_column="idx",
    )
