"""Where and how a computation runs: devices, torchrun ranks, shards and seeds.

Every seed the tool derives from ``--seed`` goes through :func:`mix_seed` or
:func:`scoring_seed`, so a batch, a sample or a training step draws the same numbers in any
run, resumed or sharded. torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` are read here
and nowhere else.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from dmlcli.errors import DmlError

#: A prime stride that keeps derived seeds of different samples/batches apart.
SEED_STRIDE = 1_000_003


def mix_seed(seed: int, index: int) -> int:
    """The seed of item ``index`` (a sample id, a position) under the run seed ``seed``."""
    return seed * SEED_STRIDE + index


def scoring_seed(seed: int) -> int:
    """The seed of the draw that scores an adversarial made with seed ``seed`` (randomized
    heads draw fresh noise for scoring, never the noise the attack saw)."""
    return seed + SEED_STRIDE


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Fix torch's global RNG (random starts, randomized heads) inside, restore it after."""
    device = torch.device(device)
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


# -- torchrun -------------------------------------------------------------------------------
def world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) outside torchrun."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        raise DmlError("WORLD_SIZE and RANK must be integers") from None
    if size > 1 and not 0 <= rank < size:
        raise DmlError(f"RANK {rank} is outside 0..{size - 1} (WORLD_SIZE {size})")
    return (rank, size) if size > 1 else (0, 1)


def local_rank() -> int | None:
    """torchrun's ``LOCAL_RANK`` (None outside torchrun)."""
    value = os.environ.get("LOCAL_RANK")
    try:
        return None if value is None else int(value)
    except ValueError:
        raise DmlError(f"LOCAL_RANK must be an integer; got {value!r}") from None


def process_group_rank() -> tuple[int, int]:
    """(rank, world size) of an initialized ``torch.distributed`` group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str) -> tuple[str, int]:
    """Join torchrun's process group when there is one (nccl on GPUs, gloo on the CPU):
    (this rank's device, rank). Outside torchrun: (``device``, 0)."""
    import torch.distributed as dist

    rank, size = world()
    if size <= 1:
        return device, 0
    if device.startswith("cuda"):
        device = f"cuda:{local_rank() or 0}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device, dist.get_rank()


def resolve_device(name: str = "auto") -> str:
    """``auto`` -> ``cuda`` (``cuda:LOCAL_RANK`` under torchrun) if available, else ``cpu``;
    checks ``cpu``, ``cuda``, ``cuda:N``."""
    if name == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        local = local_rank()
        return "cuda" if local is None else f"cuda:{local % torch.cuda.device_count()}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DmlError(f"--device {name}: no CUDA device is available here")
    if not (name == "cpu" or name.startswith("cuda")):
        raise DmlError(f"unknown --device {name!r}; use cpu, cuda or cuda:N")
    return name


# -- shards ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``: a contiguous block of a job's batches."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def block(self, batches: int) -> range:
        """This shard's contiguous block of batch numbers out of ``batches``."""
        lo = (self.index - 1) * batches // self.count
        hi = self.index * batches // self.count
        return range(lo, hi)


def parse_shard(text: str | None) -> Shard | None:
    """``'2/4'`` -> shard 2 of 4; ``None`` -> torchrun's ``RANK``/``WORLD_SIZE`` when
    ``WORLD_SIZE > 1``, else unsharded (``None``)."""
    if text is None:
        rank, size = world()
        return Shard(rank + 1, size) if size > 1 else None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise DmlError(f"cannot read --shard {text!r}; write i/n, e.g. 1/4") from None
    if not 1 <= i <= n:
        raise DmlError(f"--shard {text}: i must lie in 1..n")
    return Shard(i, n) if n > 1 else None
