"""Distance map layers (DML) for K members at once.

Every head maps backbone outputs ``z`` of shape ``[K, B, D]`` (one row per member) to logits
``[K, B, C]``. For the DML, ``logit_c = -d_c(z)`` with ``d_c(z) = sqrt((z-c)^T M (z-c))``
(Eq. 2), ``M = P^T P``. Centers are fixed; in ``diag`` mode ``M`` is diagonal and only the
entries of the member's set ``I_k`` are trainable (Section 3.3); in ``full`` mode ``P`` is
lower-triangular and only its rows in ``I_k`` are trainable.

Randomized heads (Section 4): R-DML averages ``||(P + delta_t)(z - c)||`` over T draws of
``delta_t ~ N(0, sigma^2 I)`` (Eq. 5); AUG-DML (A.8) averages the DML over ``z + eps_t``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dmlcli.errors import DmlError

HEADS = ("linear", "dml", "rdml", "augdml", "mmc")
DML_HEADS = ("dml", "rdml", "augdml")
_EPS = 1e-12  # inside the square root: finite gradients at z = c (distance error <= 1e-6)


def safe_norm(sq: torch.Tensor) -> torch.Tensor:
    """``sqrt(sq + 1e-12)``: a distance with a finite (zero) gradient where ``sq = 0``."""
    return torch.sqrt(sq + _EPS)


def partition(num_classes: int, members: int) -> list[list[int]]:
    """The disjoint trainable index sets ``I_k``: ``range(C)`` cut into K contiguous chunks.

    For C = 10, K = 5 every member gets two entries, as in the paper's experiments.
    """
    if members > num_classes:
        raise DmlError(
            f"{members} members cannot each own a trainable entry of a {num_classes}-class M; "
            f"use at most {num_classes} members or --diversity scaling"
        )
    bounds = [round(i * num_classes / members) for i in range(members + 1)]
    return [list(range(bounds[k], bounds[k + 1])) for k in range(members)]


def member_permutations(num_classes: int, members: int, seed: int) -> list[list[int]]:
    """One distinct random permutation of the classes per member (seeded)."""
    gen = torch.Generator().manual_seed(seed + 7919)
    perms: list[list[int]] = []
    while len(perms) < members:
        perm = torch.randperm(num_classes, generator=gen).tolist()
        if perm not in perms or len(perms) >= math.factorial(min(num_classes, 10)):
            perms.append(perm)
    return perms


def make_centers(permutations: list[list[int]], kind: str) -> torch.Tensor:
    """Class centers ``[K, C, D]`` with ``D = C``.

    ``identity``: center of class j for member k is the column ``e_{perm_k[j]}`` of the
    identity (Section 5). ``1d``: all centers lie on the line through ``1/sqrt(C)`` at
    positions ``perm_k[j]`` (A.5, 1-D projection).
    """
    perm = torch.tensor(permutations, dtype=torch.long)
    k, c = perm.shape
    if kind == "identity":
        return torch.eye(c)[perm]
    if kind == "1d":
        direction = torch.full((c,), 1.0 / math.sqrt(c))
        return perm.float()[..., None] * direction
    raise DmlError(f"unknown centers kind {kind!r}; choose identity or 1d")


class LinearHead(nn.Module):
    """Baseline head: the backbone's last linear layer already gives the logits."""

    randomized = False

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z


class DMLHead(nn.Module):
    """DML for K members: ``z`` ``[K, B, D]`` -> logits ``-d`` ``[K, B, C]`` (Eq. 2).

    Args:
        permutations: K permutations of the C classes (center shuffling per member).
        trainable_sets: the sets ``I_k`` (disjoint); other entries stay fixed.
        m_mode: ``diag`` (M diagonal, the paper's choice) or ``full`` (``M = P^T P``).
        m_init: ``uniform`` (trainable entries ~ U(0, 1), Section 3.3) or ``fixed``.
        m_fixed: value of the non-trainable diagonal entries of M (0.1 in the paper).
        centers: ``identity`` or ``1d``.
        scales: if given (A.9.1 diversity by scaling) ``M_k = s_k I`` with ``s_k`` trainable
            and no trainable split.
        noise: ``none``, ``rdml`` (noise on P, Eq. 4-5) or ``augdml`` (noise on z, A.8).
        samples, sigma: Monte-Carlo draws T and noise std of the randomized heads.
    """

    def __init__(
        self,
        permutations: list[list[int]],
        trainable_sets: list[list[int]],
        m_mode: str = "diag",
        m_init: str = "uniform",
        m_fixed: float = 0.1,
        centers: str = "identity",
        scales: list[float] | None = None,
        noise: str = "none",
        samples: int = 20,
        sigma: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if m_mode not in ("diag", "full"):
            raise DmlError(f"unknown M mode {m_mode!r}; choose diag or full")
        if m_init not in ("uniform", "fixed"):
            raise DmlError(f"unknown M init {m_init!r}; choose uniform or fixed")
        if noise not in ("none", "rdml", "augdml"):
            raise DmlError(f"unknown head noise {noise!r}; choose none, rdml or augdml")
        if samples < 1 or sigma < 0:
            raise DmlError("randomized heads need --head-samples >= 1 and --head-sigma >= 0")
        k, c = len(permutations), len(permutations[0])
        self.m_mode, self.noise, self.samples, self.sigma = m_mode, noise, samples, sigma
        self.randomized = noise != "none"
        self.scaled = scales is not None
        self.register_buffer("centers", make_centers(permutations, centers))
        mask = torch.zeros(k, c, dtype=torch.bool)
        for member, indices in enumerate(trainable_sets):
            mask[member, indices] = True
        self.register_buffer("mask", mask)
        gen = torch.Generator().manual_seed(seed + 104729)
        init = (
            torch.rand(k, c, generator=gen) if m_init == "uniform" else torch.full((k, c), m_fixed)
        )
        if self.scaled:
            self.scale = nn.Parameter(torch.tensor(scales, dtype=torch.float32))
        elif m_mode == "diag":
            self.m = nn.Parameter(torch.where(mask, init, torch.full_like(init, m_fixed)))
            self.register_buffer("m_fixed", torch.full((k, c), float(m_fixed)))
        else:
            eye = torch.eye(c).expand(k, c, c)
            p0 = eye * init.sqrt()[:, None, :]
            self.p = nn.Parameter(p0.clone())
            self.register_buffer("p_fixed", eye * math.sqrt(m_fixed))
            rows = mask[:, :, None].expand(k, c, c)
            self.register_buffer("p_mask", rows & torch.ones(c, c, dtype=torch.bool).tril())

    @property
    def num_members(self) -> int:
        return self.centers.shape[0]

    def diag_m(self) -> torch.Tensor:
        """The diagonal of every member's M, ``[K, D]`` (diag and scaling modes)."""
        if self.scaled:
            d = self.centers.shape[-1]
            return self.scale.abs()[:, None].expand(-1, d)
        return torch.where(self.mask, self.m.abs(), self.m_fixed)

    def p_matrix(self) -> torch.Tensor:
        """Every member's lower-triangular ``P`` with ``M = P^T P``, ``[K, D, D]``."""
        if self.m_mode == "full" and not self.scaled:
            return torch.where(self.p_mask, self.p, self.p_fixed).tril()
        return torch.diag_embed(self.diag_m().sqrt())

    def m_matrix(self) -> torch.Tensor:
        """Every member's ``M = P^T P``, ``[K, D, D]``."""
        if self.m_mode == "full" and not self.scaled:
            p = self.p_matrix()
            return p.transpose(-1, -2) @ p
        return torch.diag_embed(self.diag_m())

    def trainable_m(self) -> torch.Tensor:
        """Entries of ``M_{I_k}`` summed in Eq. 3's L1 term, zero elsewhere: ``[K, D, D]``."""
        m = self.m_matrix()
        if self.scaled:
            return m
        return m * self.mask[:, :, None]

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Deterministic distances ``d_c(z)`` ``[K, B, C]`` for ``z`` ``[K, B, D]``."""
        diff = z[:, :, None, :] - self.centers[:, None, :, :]  # [K, B, C, D]
        if self.m_mode == "full" and not self.scaled:
            proj = torch.einsum("kij,kbcj->kbci", self.p_matrix(), diff)
            return safe_norm(proj.pow(2).sum(-1))
        return safe_norm((diff.pow(2) * self.diag_m()[:, None, None, :]).sum(-1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.noise == "none":
            return -self.distances(z)
        t = self.samples
        if self.noise == "augdml":
            k, b, d = z.shape
            noisy = z[:, None] + self.sigma * torch.randn(
                k, t, b, d, device=z.device, dtype=z.dtype
            )
            return -self.distances(noisy.view(k, t * b, d)).view(k, t, b, -1).mean(1)
        # R-DML, Eq. 5: mean over t of ||(P + delta_t)(z - c)||.
        p = self.p_matrix()
        delta = self.sigma * torch.randn(t, *p.shape, device=z.device, dtype=z.dtype)
        diff = z[:, :, None, :] - self.centers[:, None, :, :]
        proj = torch.einsum("tkij,kbcj->tkbci", p[None] + delta, diff)
        return -safe_norm(proj.pow(2).sum(-1)).mean(0)


def mm_centers(num_classes: int, dim: int, norm: float) -> torch.Tensor:
    """Max-Mahalanobis centers ``[C, D]`` (Pang et al. 2018, 2020): the C vertices of a
    regular simplex centred at the origin, every center of L2 norm ``norm`` (C_MM) and every
    pair with inner product ``-norm^2 / (C - 1)``, the largest possible minimal distance.

    Built as the rows of ``I - 11^T / C`` rescaled (they span a (C-1)-dimensional subspace of
    R^C), padded with zeros when ``D > C``; an orthogonal rotation of the paper's iterative
    construction, so the same geometry.
    """
    if dim < num_classes - 1:
        raise DmlError(f"MMC needs features of at least {num_classes - 1} dimensions; got {dim}")
    simplex = torch.eye(num_classes) - 1.0 / num_classes
    simplex = norm * simplex / simplex.norm(dim=1, keepdim=True)
    if dim < num_classes:  # D = C - 1: express the simplex in an orthonormal basis of its span
        basis = torch.linalg.svd(simplex, full_matrices=False).Vh[:dim]  # [D, C]
        return simplex @ basis.T
    return torch.cat([simplex, torch.zeros(num_classes, dim - num_classes)], dim=1)


class MMCHead(nn.Module):
    """Max-Mahalanobis center head (Pang et al. 2020, "Rethinking softmax cross-entropy loss
    for adversarial robustness"): logits
    ``-1/2 ||z - mu_c||^2`` ``[K, B, C]`` for features ``z`` ``[K, B, D]``; the centers
    ``mu`` ``[C, D]`` are fixed (:func:`mm_centers`) and shared by the members. The MMC loss
    ``1/2 ||z - mu_y||^2`` is minus the true class's logit."""

    randomized = False

    def __init__(self, num_classes: int, dim: int, norm: float = 10.0) -> None:
        super().__init__()
        self.register_buffer("centers", mm_centers(num_classes, dim, norm))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        diff = z[:, :, None, :] - self.centers[None, None]  # [K, B, C, D]
        return -0.5 * diff.pow(2).sum(-1)
