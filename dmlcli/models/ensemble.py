"""The ensemble as one module: K backbones (stacked parameters) and one K-member head.

``Ensemble(config)(x)`` takes pixels ``x`` ``[B, C, H, W]`` in [0, 1] and returns the member
logits ``[K, B, classes]``; how they are combined is up to :mod:`dmlcli.models.aggregate`.
Member k is ``F_k = h_k o G_k`` (Section 3). Backbone parameters are stored stacked
(``[K, ...]`` per tensor) and evaluated either with ``torch.func.vmap`` (``batched``) or with
a plain loop over members (``loop``, the reference); both share the same parameters.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from dmlcli.errors import DmlError
from dmlcli.models.backbones import create_backbone
from dmlcli.models.config import EnsembleConfig
from dmlcli.models.dml import DML_HEADS, HEADS, DMLHead, LinearHead, MMCHead

MODES = ("auto", "batched", "loop")
# Measured with benchmarks/train_throughput.py: on the CPU the loop is faster for every
# backbone here; vmap pays on CUDA. ResNet's BatchNorm always runs in the loop.
_DEFAULT_MODE = {"cpu": "loop", "cuda": "batched"}


def _key(name: str) -> str:
    return name.replace(".", "__")


def build_head(config: EnsembleConfig) -> nn.Module:
    """The head named by ``config.head``: ``linear``, ``dml``, ``rdml``, ``augdml`` or ``mmc``."""
    head = config.head
    if head not in HEADS:
        raise DmlError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    if head == "linear":
        return LinearHead()
    if head == "mmc":
        return MMCHead(config.num_classes, config.num_classes, config.mmc_norm)
    return DMLHead(
        permutations=[list(p) for p in config.permutations or ()],
        trainable_sets=[list(s) for s in config.trainable_sets],
        m_mode=config.m_mode,
        m_init=config.m_init,
        m_fixed=config.m_fixed,
        centers=config.centers,
        scales=None if config.scales is None else list(config.scales),
        noise={"dml": "none", "rdml": "rdml", "augdml": "augdml"}[head],
        samples=config.head_samples,
        sigma=config.head_sigma,
        seed=config.seed,
    )


class Ensemble(nn.Module):
    """K members ``h_k(G_k(x))`` evaluated together.

    Args:
        config: the run configuration (see :func:`dmlcli.models.config.resolve_config`);
            kept as ``self.config`` and stored with every checkpoint.
        mode: ``batched`` (vmap over stacked parameters), ``loop`` (reference) or ``auto``
            (the faster one for the device, see ``_DEFAULT_MODE``).
    """

    def __init__(self, config: EnsembleConfig, mode: str = "auto") -> None:
        super().__init__()
        if mode not in MODES:
            raise DmlError(f"unknown ensemble mode {mode!r}; choose one of {', '.join(MODES)}")
        self.config = config
        self.mode = mode
        k = config.members
        torch.manual_seed(config.seed)
        members = [
            create_backbone(
                config.backbone,
                config.in_channels,
                config.num_classes,
                config.image_size,
                config.mean,
                config.std,
            )
            for _ in range(k)
        ]
        params, buffers = stack_module_state(members)
        self.backbone = nn.ParameterDict(
            {_key(n): nn.Parameter(_member_channels_last(p)) for n, p in params.items()}
        )
        for n, b in buffers.items():
            self.register_buffer("bb_" + _key(n), b)
        self._param_names = list(params)
        self._buffer_names = list(buffers)
        self._has_batchnorm = any(isinstance(m, nn.BatchNorm2d) for m in members[0].modules())
        # The template's own tensors are never used: functional_call swaps in the stacked ones.
        self.__dict__["_template"] = copy.deepcopy(members[0]).to("meta")
        self.head = build_head(config)

    @property
    def num_members(self) -> int:
        return self.config.members

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def randomized(self) -> bool:
        """True when the head draws noise on every forward pass (R-DML, AUG-DML)."""
        return bool(getattr(self.head, "randomized", False))

    @property
    def trainable_sets(self) -> list[list[int]]:
        """The sets ``I_k`` of each member (empty lists for the baseline and scaling heads)."""
        return [list(s) for s in self.config.trainable_sets]

    def _stacked(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        params = {n: self.backbone[_key(n)] for n in self._param_names}
        buffers = {n: getattr(self, "bb_" + _key(n)) for n in self._buffer_names}
        return params, buffers

    def resolved_mode(self, device: torch.device) -> str:
        """``batched`` or ``loop`` for this device (BatchNorm backbones always loop)."""
        if self._has_batchnorm:
            return "loop"
        if self.mode != "auto":
            return self.mode
        return _DEFAULT_MODE.get(device.type, "batched")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone outputs ``z = G_k(x)``: ``[B, C, H, W]`` -> ``[K, B, D]``."""
        template = self.__dict__["_template"]
        template.train(self.training)
        params, buffers = self._stacked()
        if self.resolved_mode(x.device) == "batched":

            def one(p: dict, b: dict, inp: torch.Tensor) -> torch.Tensor:
                return functional_call(template, (p, b), (inp,))

            return vmap(one, in_dims=(0, 0, None), randomness="different")(params, buffers, x)
        p_k = {n: t.unbind(0) for n, t in params.items()}  # unbind: one backward, not K
        if x.device.type == "cpu" and x.dim() == 4:
            # oneDNN's convolutions and pooling run faster on NHWC (channels-last) than on
            # NCHW (benchmarks/train_throughput.py); the values are the same. Conv weights
            # are stored channels-last per member too (they decide the layout for 1-channel
            # inputs).
            x = x.contiguous(memory_format=torch.channels_last)
        b_k = {n: t.unbind(0) for n, t in buffers.items()}
        outs = []
        for k in range(self.num_members):
            p = {n: t[k] for n, t in p_k.items()}
            b = {n: t[k] for n, t in b_k.items()}
            outs.append(functional_call(template, (p, b), (x,)))
        return torch.stack(outs)

    def feature_layers(self) -> list[str]:
        """Names of the backbone's intermediate layers (each ReLU module or residual block),
        in forward order: the layers :meth:`member_features_at` can read (DVERGE)."""
        from dmlcli.models.backbones import BasicBlock

        template = self.__dict__["_template"]
        names = [
            n for n, m in template.named_modules() if isinstance(m, nn.ReLU | BasicBlock) and n
        ]
        return names

    def member_features_at(self, x: torch.Tensor, k: int, layer: str) -> torch.Tensor:
        """Member k's features at backbone ``layer`` (a name from :meth:`feature_layers`) for
        pixels ``x`` ``[B, C, H, W]``: a tensor ``[B, ...]``, taken before the ReLU (a
        residual block: its output), as DVERGE distills; later layers are not computed."""
        template = self.__dict__["_template"]
        template.train(self.training)
        params, buffers = self._stacked()
        p = {n: t[k] for n, t in params.items()}
        b = {n: t[k] for n, t in buffers.items()}
        seen: list[torch.Tensor] = []

        def hook(module: nn.Module, inp: Any, out: torch.Tensor) -> None:
            seen.append(inp[0] if isinstance(module, nn.ReLU) else out)
            raise _Reached

        handle = template.get_submodule(layer).register_forward_hook(hook)
        try:
            functional_call(template, (p, b), (x,))
        except _Reached:
            pass
        finally:
            handle.remove()
        return seen[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Member logits ``[K, B, classes]`` for pixels ``x`` ``[B, C, H, W]`` in [0, 1]."""
        return self.head(self.features(x))

    def member(self, k: int) -> nn.Module:
        """Member k alone as a module: ``x`` -> logits ``[B, classes]``."""
        if not 0 <= k < self.num_members:
            raise DmlError(f"member {k + 1} does not exist; members are 1..{self.num_members}")
        return _Member(self, k)

    def with_head(
        self, head: str, sigma: float | None = None, samples: int | None = None
    ) -> Ensemble:
        """The same weights behind another DML head (A.8, A.9: R-DML or AUG-DML noise at
        evaluation time). ``dml``, ``rdml`` and ``augdml`` hold the same parameters and
        buffers, so the state loads unchanged; ``sigma``/``samples`` set the new head's noise
        std and Monte-Carlo draws (this model's values otherwise). The global RNG is left as
        it was, and ``digest``/``meta`` are carried over (the weights are the same).
        """
        if head not in DML_HEADS:
            raise DmlError(f"--head {head!r}: choose dml, rdml or augdml")
        if not self.config.is_dml:
            raise DmlError(f"--head needs a DML run; this one has {self.config.head} heads")
        if sigma is not None and not (math.isfinite(sigma) and sigma >= 0):
            raise DmlError(f"--head-sigma must be a finite number >= 0; got {sigma}")
        if samples is not None and samples < 1:
            raise DmlError(f"--head-samples must be at least 1; got {samples}")
        changes: dict[str, Any] = {"head": head}
        if sigma is not None:
            changes["head_sigma"] = float(sigma)
        if samples is not None:
            changes["head_samples"] = int(samples)
        state = torch.get_rng_state()
        swapped = Ensemble(self.config.replace(**changes), mode=self.mode)
        torch.set_rng_state(state)  # building an Ensemble seeds the global generator
        swapped.load_state_dict(self.state_dict())
        for attr in ("digest", "meta"):
            if hasattr(self, attr):
                setattr(swapped, attr, getattr(self, attr))
        device = next(self.parameters()).device
        return swapped.train(self.training).to(device)

    def load_backbones_from(self, other: Ensemble) -> None:
        """Copy every member's backbone from ``other`` (``--prior``): same K, or K = 1."""
        if other.config.backbone != self.config.backbone:
            raise DmlError(
                f"prior run has backbone {other.config.backbone}, "
                f"this run needs {self.config.backbone}"
            )
        if other.num_members not in (1, self.num_members):
            raise DmlError(
                f"prior run has {other.num_members} members; need 1 or {self.num_members}"
            )
        source = other.state_dict()
        with torch.no_grad():
            for name, tensor in self.state_dict(keep_vars=True).items():
                if not name.startswith("head."):
                    tensor.copy_(source[name].expand_as(tensor))


class _Reached(Exception):
    """Stops a forward pass at the layer :meth:`Ensemble.member_features_at` reads."""


def _member_channels_last(stacked: torch.Tensor) -> torch.Tensor:
    """Stacked conv weights ``[K, O, I, H, W]`` laid out so every member's slice is
    channels-last (same values; other tensors are returned as they are)."""
    if stacked.dim() != 5:
        return stacked
    k, o, i, h, w = stacked.shape
    # Explicit strides: with one input channel the layouts are equal up to the stride of
    # the size-1 dimension, which oneDNN reads to pick the layout.
    strides = (o * h * w * i, h * w * i, 1, w * i, i)
    out = torch.empty_strided(stacked.shape, strides, dtype=stacked.dtype, device=stacked.device)
    return out.copy_(stacked)


class _Member(nn.Module):
    """View of member k of an :class:`Ensemble` as a ``[B, classes]`` classifier."""

    def __init__(self, ensemble: Ensemble, k: int) -> None:
        super().__init__()
        self.ensemble, self.k = ensemble, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ensemble(x)[self.k]
