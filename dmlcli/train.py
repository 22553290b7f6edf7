"""Joint training of all members (Eq. 3), the cross-entropy baseline, and exact resume.

Every step's randomness (data order, augmentation, randomized heads, FGSM) is derived from
``(seed, epoch, step)``, so a run resumed from a checkpoint takes exactly the steps an
uninterrupted run would have taken and ends with identical weights (same device and threads).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from dmlcli.data import augment_batch, to_float
from dmlcli.defenses import DEFENSES, defense_terms
from dmlcli.errors import DmlError
from dmlcli.eval.benign import accuracies, member_logits
from dmlcli.models.aggregate import sum_logits, vote
from dmlcli.models.ensemble import Ensemble
from dmlcli.runtime import mix_seed, process_group_rank

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("none", "cosine", "step")


@dataclass
class TrainerSettings:
    """The training loop's resolved optimisation settings of a run (stored in the checkpoint
    as ``config.training``); ``dml train``'s options are
    :class:`dmlcli.api.training.TrainSettings`."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    augment: str = "none"
    adv_train: str = "none"
    adv_eps: float = 10 / 255
    eval_attack: str = "none"
    eval_eps: float = 0.0
    eval_n: int = 1000
    checkpoint_every: int = 0
    defense: str = "dml"
    defense_args: dict[str, float] = field(default_factory=dict)

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1; got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1; got {self.batch_size}"),
            (
                self.optimizer in OPTIMIZERS,
                f"unknown --optimizer {self.optimizer!r}; choose sgd or adam",
            ),
            (
                self.schedule in SCHEDULES,
                f"unknown --schedule {self.schedule!r}; choose none, cosine or step",
            ),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr must be > 0; got {self.lr}"),
            (self.weight_decay >= 0, "--weight-decay must be >= 0"),
            (
                self.augment in ("none", "crop-flip"),
                f"unknown --augment {self.augment!r}; choose none or crop-flip",
            ),
            (
                self.adv_train in ("none", "fgsm"),
                f"unknown --adv-train {self.adv_train!r}; choose none or fgsm",
            ),
            (
                self.eval_attack in ("none", "fgsm"),
                f"unknown --eval-attack {self.eval_attack!r}; choose none or fgsm",
            ),
            (0 <= self.adv_eps <= 1 and 0 <= self.eval_eps <= 1, "eps must be within [0, 1]"),
            (self.checkpoint_every >= 0, "--checkpoint-every must be >= 0"),
            (self.eval_n >= 1, "--eval-n must be at least 1"),
            (
                self.defense in DEFENSES,
                f"unknown --defense {self.defense!r}; choose one of {', '.join(DEFENSES)}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise DmlError(message)


def fgsm_step(ensemble: Ensemble, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """One FGSM step on the summed logits (no random start, A.8): ``x`` ``[B, C, H, W]``."""
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(sum_logits(ensemble(x)), y)
    (grad,) = torch.autograd.grad(loss, x)
    return (x + eps * grad.sign()).clamp(0, 1).detach()


def _step_seed(seed: int, epoch: int, step: int) -> int:
    return mix_seed(seed, epoch * 10_007 + step) % (2**62)


def default_run_name(
    dataset: str, head: str, centers: str, diversity: str, adv: str, defense: str = "dml"
) -> str:
    """``digits-dml``, ``digits-baseline``, ``fashion-mnist-dml-1d``, ``digits-adp``, ... from
    the choices."""
    if defense not in ("dml", "baseline"):
        return "-".join([dataset, defense] + ([adv] if adv != "none" else []))
    parts = [dataset, "baseline" if head == "linear" else head]
    parts += ["1d"] if centers == "1d" else []
    parts += ["scaling"] if diversity == "scaling" and head != "linear" else []
    parts += [adv] if adv != "none" else []
    return "-".join(parts)


def parse_seeds(seeds: str | Sequence[int]) -> list[int]:
    """``"0,1,2"`` or ``[0, 1, 2]`` -> ``[0, 1, 2]``: at least two distinct seeds >= 0."""
    items = [t.strip() for t in seeds.split(",")] if isinstance(seeds, str) else list(seeds)
    try:
        out = [int(t) for t in items]
    except (TypeError, ValueError):
        raise DmlError(f"--seeds {seeds!r}: write whole numbers separated by commas") from None
    if any(s < 0 for s in out):
        raise DmlError(f"--seeds {seeds!r}: seeds must be >= 0")
    if len(set(out)) != len(out):
        raise DmlError(f"--seeds {seeds!r}: a seed is repeated")
    if len(out) < 2:
        raise DmlError(
            f"--seeds {seeds!r}: a spread over seeds needs at least two; use --seed for one run"
        )
    return out


class Trainer:
    """Trains an :class:`Ensemble` on in-memory uint8 data with its defense's objective
    (:func:`dmlcli.defenses.defense_terms`; Eq. 3 by default)."""

    def __init__(
        self,
        ensemble: Ensemble,
        train: tuple[torch.Tensor, torch.Tensor],
        test: tuple[torch.Tensor, torch.Tensor],
        settings: TrainerSettings,
        device: torch.device | str = "cpu",
    ) -> None:
        settings.validate()
        self.ensemble = ensemble.to(device)
        self.device = torch.device(device)
        self.rank, self.world = process_group_rank()
        self.model: torch.nn.Module = ensemble
        if self.world > 1:  # torchrun: gradients are averaged across ranks every step
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index or 0] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(ensemble, device_ids=ids)
        self.x_train, self.y_train = train
        self.x_test, self.y_test = test
        self.settings = settings
        self.seed = int(ensemble.config.seed)
        params = [p for p in ensemble.parameters() if p.requires_grad]
        if settings.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(
                params,
                lr=settings.lr,
                momentum=settings.momentum,
                weight_decay=settings.weight_decay,
                nesterov=settings.momentum > 0,
            )
        else:
            self.optimizer = torch.optim.Adam(
                params, lr=settings.lr, weight_decay=settings.weight_decay
            )
        self.steps_per_epoch = math.ceil(len(self.y_train) / settings.batch_size)
        self.epoch, self.step = 0, 0  # next step to run
        self.history: list[dict[str, Any]] = []
        self._epoch_sums: dict[str, float] = {}
        self._order, self._order_epoch = torch.empty(0, dtype=torch.long), -1

    # -- schedule ------------------------------------------------------------------------
    def lr_at(self, epoch: int, step: int) -> float:
        s = self.settings
        progress = (epoch + step / self.steps_per_epoch) / s.epochs
        if s.schedule == "cosine":
            return s.lr * 0.5 * (1 + math.cos(math.pi * progress))
        if s.schedule == "step":
            return s.lr * (0.1 ** int(progress * 3))
        return s.lr

    def epoch_order(self) -> torch.Tensor:
        """The current epoch's shuffled sample order (a pure function of seed and epoch)."""
        if self._order_epoch != self.epoch:
            gen = torch.Generator().manual_seed(_step_seed(self.seed, self.epoch, -1))
            self._order = torch.randperm(len(self.y_train), generator=gen)
            self._order_epoch = self.epoch
        return self._order

    # -- one step ------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """Run the next step; returns its loss terms and batch accuracy (vote, %)."""
        s, epoch, step = self.settings, self.epoch, self.step
        idx = self.epoch_order()[step * s.batch_size : (step + 1) * s.batch_size]
        gen = torch.Generator().manual_seed(_step_seed(self.seed, epoch, step))
        torch.manual_seed(_step_seed(self.seed, epoch, step))
        x = augment_batch(to_float(self.x_train[idx]), s.augment, gen)
        # Every rank draws the same global batch and keeps its own shard of it.
        x, y = (
            x[self.rank :: self.world].to(self.device),
            self.y_train[idx][self.rank :: self.world],
        )
        y = y.to(self.device)
        self.ensemble.train()
        if s.adv_train == "fgsm":
            x = fgsm_step(self.ensemble, x, y, s.adv_eps)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(epoch, step)
        progress = (epoch + step / self.steps_per_epoch) / s.epochs
        terms, logits = defense_terms(
            s.defense, s.defense_args, self.ensemble, self.model, x, y, progress, gen,
            self.distill_layers(epoch) if DEFENSES[s.defense].layers else None,
        )  # fmt: skip
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.optimizer.step()
        # One device sync per step for the logged numbers (not one per term): the same floats.
        hits = (vote(logits.detach()) == y).float().mean()
        values = torch.stack([v.detach() for v in terms.values()] + [hits]).tolist()
        out = dict(zip(terms, values[:-1], strict=True))
        out["acc"] = 100.0 * values[-1]
        for key, value in out.items():
            self._epoch_sums[key] = self._epoch_sums.get(key, 0.0) + value * len(y)
        self._epoch_sums["n"] = self._epoch_sums.get("n", 0.0) + len(y)
        self.step += 1
        return out

    def distill_layers(self, epoch: int) -> list[str]:
        """Each member's distillation layer for ``epoch`` (for a defense whose entry asks for
        ``layers``: DVERGE), drawn at random from the backbone's layers (a pure function of
        seed and epoch, as DVERGE draws per epoch)."""
        names = self.ensemble.feature_layers()
        gen = torch.Generator().manual_seed(_step_seed(self.seed, epoch, -3))
        picks = torch.randint(len(names), (self.ensemble.num_members,), generator=gen)
        return [names[i] for i in picks.tolist()]

    def end_epoch(self, seconds: float) -> dict[str, Any]:
        """Evaluate on the test set, append the epoch's history row and advance the epoch."""
        torch.manual_seed(_step_seed(self.seed, self.epoch, -2))
        self.ensemble.eval()
        logits = member_logits(self.ensemble, self.x_test)
        accs = accuracies(logits, self.y_test, self.ensemble.trainable_sets)
        n = self._epoch_sums.pop("n", 1.0)
        row: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "lr": self.lr_at(self.epoch, 0),
            "seconds": seconds,
        }
        row.update({f"train_{k}": v / n for k, v in self._epoch_sums.items()})
        row.update({f"test_{k}": v for k, v in accs.items()})
        if self.settings.eval_attack == "fgsm":
            row["test_robust_vote"] = self.robust_accuracy()
            row["eval_eps"] = self.settings.eval_eps
        self.history.append(row)
        self._epoch_sums = {}
        self.epoch, self.step = self.epoch + 1, 0
        return row

    def robust_accuracy(self) -> float:
        """FGSM (on summed logits) robust vote accuracy (%) on the first ``eval_n`` test images."""
        n = min(self.settings.eval_n, len(self.y_test))
        correct = 0
        for start in range(0, n, 256):
            x = to_float(self.x_test[start : min(start + 256, n)]).to(self.device)
            y = self.y_test[start : min(start + 256, n)].to(self.device)
            x_adv = fgsm_step(self.ensemble, x, y, self.settings.eval_eps)
            with torch.no_grad():
                correct += int((vote(self.ensemble(x_adv)) == y).sum())
        return 100.0 * correct / n

    @property
    def done(self) -> bool:
        return self.epoch >= self.settings.epochs

    # -- resume state --------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and JSON metadata that let a new Trainer continue exactly here."""
        tensors = {f"model.{k}": v for k, v in self.ensemble.state_dict().items()}
        opt = self.optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for idx, entry in opt["state"].items():
            for key, value in entry.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{idx}.{key}"] = value
                else:
                    scalars.setdefault(str(idx), {})[key] = value
        meta = {
            "epoch": self.epoch,
            "step": self.step,
            "history": self.history,
            "epoch_sums": self._epoch_sums,
            "optim_groups": opt["param_groups"],
            "optim_scalars": scalars,
            "settings": asdict(self.settings),
        }
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned (after building the same ensemble and data)."""
        if meta.get("settings") != asdict(self.settings):
            raise DmlError(
                "--resume: the saved run used other training settings; "
                "pass the same options or drop --resume"
            )
        model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.ensemble.load_state_dict(model)
        except RuntimeError:
            raise DmlError("--resume: the saved state does not match this model") from None
        state: dict[int, dict[str, Any]] = {}
        for name, value in tensors.items():
            if name.startswith("optim."):
                _, idx, key = name.split(".", 2)
                state.setdefault(int(idx), {})[key] = value
        for idx, entry in meta["optim_scalars"].items():
            state.setdefault(int(idx), {}).update(entry)
        self.optimizer.load_state_dict({"state": state, "param_groups": meta["optim_groups"]})
        self.epoch, self.step = meta["epoch"], meta["step"]
        self.history, self._epoch_sums = meta["history"], meta["epoch_sums"]


def run_training(
    trainer: Trainer,
    on_step: Callable[[Trainer, dict[str, float], float], None] | None = None,
    on_epoch: Callable[[Trainer, dict[str, Any]], None] | None = None,
    on_checkpoint: Callable[[Trainer], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the remaining steps and epochs, calling the hooks; returns the history rows.

    ``on_checkpoint`` is called every ``checkpoint_every`` steps and after every epoch.
    """
    every = trainer.settings.checkpoint_every
    while not trainer.done:
        start = time.perf_counter()
        while trainer.step < trainer.steps_per_epoch:
            t0 = time.perf_counter()
            out = trainer.train_step()
            if on_step:
                on_step(trainer, out, time.perf_counter() - t0)
            if every and trainer.step % every == 0 and trainer.step < trainer.steps_per_epoch:
                if on_checkpoint:
                    on_checkpoint(trainer)
        row = trainer.end_epoch(time.perf_counter() - start)
        if on_epoch:
            on_epoch(trainer, row)
        if on_checkpoint:
            on_checkpoint(trainer)
    return trainer.history
