"""``dml train``: :func:`train` one ensemble, or one run per seed of a group."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from dmlcli.api.outcome import Outcome
from dmlcli.api.settings import (
    DATA_DIR_HELP,
    DEVICE_HELP,
    FORCE_HELP,
    SEED_HELP,
    InStore,
    argument,
    entry_point,
    flag,
    option,
)
from dmlcli.data import dataset_info, list_datasets, load_dataset
from dmlcli.defenses import (
    list_defenses,
    parse_defense_args,
    resolve_defense,
    resolve_defense_args,
)
from dmlcli.errors import DmlError
from dmlcli.files import read_parquet, read_tensors, save_tensors, write_parquet
from dmlcli.models.backbones import list_backbones
from dmlcli.models.config import EnsembleConfig, resolve_config
from dmlcli.models.dml import HEADS
from dmlcli.models.ensemble import Ensemble
from dmlcli.models.io import Run, checkpoint_config, save_ensemble
from dmlcli.runner import Reporter
from dmlcli.runs import open_run
from dmlcli.runtime import init_distributed, resolve_device, world
from dmlcli.store import Store, validate_name
from dmlcli.train import (
    Trainer,
    TrainerSettings,
    default_run_name,
    parse_seeds,
    run_training,
)
from dmlcli.units import parse_eps


@dataclass(kw_only=True)
class TrainSettings(InStore):
    """The options of ``dml train`` / :func:`train` (each field is one option). Seed,
    device and force are declared here, not taken from :class:`~dmlcli.api.settings.Common`:
    ``--seed`` sits before ``--seeds``, among the command's own options."""

    dataset: str = argument(", ".join(list_datasets()) + ".")
    members: int = option(5, "Ensemble size K.", flags=("--members", "-k"))
    defense: str | None = option(
        None, f"Training objective: {', '.join(list_defenses())} (default dml)."
    )
    defense_arg: list[str] | None = option(
        None, "Override a defense hyperparameter, e.g. alpha=2 (repeatable)."
    )
    baseline: bool = flag("Same as --defense baseline.")
    head: str = option("dml", f"Member head: {', '.join(HEADS)}.")
    backbone: str | None = option(
        None, f"Member backbone: {', '.join(list_backbones())} (dataset default)."
    )
    prior: str | None = option(None, "Initialise backbones from this run.")
    name: str | None = option(None, "Run name (default from the choices).")
    epochs: int | None = option(None, "Epochs (dataset default).")
    batch_size: int | None = option(None, "Batch size (dataset default).")
    optimizer: str | None = option(None, "sgd or adam (dataset default).")
    lr: float | None = option(None, "Peak learning rate (dataset default).")
    momentum: float = option(0.9, "SGD momentum.")
    weight_decay: float = option(0.0, "Weight decay.")
    schedule: str = option("cosine", "none, cosine or step.")
    augment: str | None = option(None, "none or crop-flip (dataset default).")
    m_mode: str = option("diag", "diag (paper) or full (P^T P).")
    m_init: str = option("uniform", "Trainable M entries: uniform U(0,1) or fixed.")
    m_fixed: float = option(0.1, "Value of the fixed M entries.")
    centers: str = option("identity", "identity or 1d (A.5).")
    diversity: str = option("split", "split (I_k, paper) or scaling (A.9.1).")
    head_samples: int = option(20, "Monte-Carlo draws T of R-DML/AUG-DML.")
    head_sigma: float = option(0.1, "Noise std of R-DML/AUG-DML.")
    gamma: float = option(0.01, "Weight of the orthogonality term (Eq. 3).")
    beta: float = option(0.01, "Weight of the L1 term (Eq. 3).")
    adv_train: str = option("none", "none or fgsm (A.8).")
    adv_eps: str = option("10/255", "FGSM training eps, e.g. 10/255.")
    eval_attack: str = option("none", "none or fgsm: robust accuracy per epoch.")
    eval_eps: str = option("0.1", "Eps of --eval-attack.")
    image_size: int | None = option(None, "Resize images (RESISC-45).")
    data_dir: str | Path | None = option(None, DATA_DIR_HELP)
    download: bool = flag("Let torchvision download missing files.", default=True)
    resume: bool = flag("Continue from the run's last checkpoint.")
    checkpoint_every: int = option(0, "Also checkpoint every N steps.")
    mode: str = option("auto", "Member evaluation: auto, batched or loop.")
    seed: int = option(0, SEED_HELP)
    seeds: str | Sequence[int] | None = option(
        None, "One run per seed, e.g. 0,1,2 (runs NAME-seedS)."
    )
    device: str = option("auto", DEVICE_HELP)
    force: bool = flag(FORCE_HELP)

    def check(self) -> None:
        defense, _ = self.objective()
        group = self.run_name()
        for s in parse_seeds(self.seeds) if self.seeds is not None else []:
            Store.seed_run(group, s)
        dataset_info(self.dataset)
        if defense == "baseline" and self.prior:
            raise DmlError("--baseline and --prior exclude each other")
        self.model_config()
        self.trainer_settings()  # the defense's arguments too

    def objective(self) -> tuple[str, str]:
        """(defense, head) trained: ``defense``, ``baseline`` and ``head`` resolved
        (:func:`~dmlcli.defenses.resolve_defense`)."""
        return resolve_defense(self.defense, self.baseline, self.head)

    def run_name(self) -> str:
        """The run trained (with ``seeds``: the group): ``name``, or one from the choices."""
        defense, head = self.objective()
        choices = (self.dataset, head, self.centers, self.diversity, self.adv_train, defense)
        return validate_name(self.name or default_run_name(*choices))

    def model_config(self) -> EnsembleConfig:
        """The ensemble these settings build (:func:`~dmlcli.models.config.resolve_config`)."""
        return resolve_config(
            self.dataset, self.members, self.objective()[1], backbone=self.backbone,
            image_size=self.image_size, m_mode=self.m_mode, m_init=self.m_init,
            m_fixed=self.m_fixed, centers=self.centers, diversity=self.diversity,
            head_samples=self.head_samples, head_sigma=self.head_sigma, gamma=self.gamma,
            beta=self.beta, seed=self.seed,
        )  # fmt: skip

    def trainer_settings(self) -> TrainerSettings:
        """The training loop's settings (checked): every option left unset is the dataset's
        default, the defense's hyperparameters are its defaults with ``defense_arg`` over
        them."""
        defense = self.objective()[0]
        args = resolve_defense_args(defense, parse_defense_args(self.defense_arg))
        info = dataset_info(self.dataset)
        d = info.train
        out = TrainerSettings(
            epochs=self.epochs if self.epochs is not None else d.epochs,
            batch_size=self.batch_size if self.batch_size is not None else d.batch_size,
            optimizer=self.optimizer or d.optimizer,
            lr=self.lr if self.lr is not None else d.lr,
            momentum=self.momentum, weight_decay=self.weight_decay, schedule=self.schedule,
            augment=self.augment or info.augment, adv_train=self.adv_train,
            adv_eps=parse_eps(self.adv_eps), eval_attack=self.eval_attack,
            eval_eps=parse_eps(self.eval_eps), checkpoint_every=self.checkpoint_every,
            defense=defense, defense_args=dict(args),
        )  # fmt: skip
        out.validate()
        return out


@dataclass
class TrainOutcome(Outcome):
    """What :func:`train` did. ``rows`` is the per-epoch history (``epoch``, ``lr``,
    ``seconds``, the epoch's mean ``train_*`` loss terms and ``train_acc``, the ``test_*``
    accuracies (%) per decision and member, ``test_robust_vote`` with ``eval_attack``; with
    ``seeds`` also ``run`` and ``seed``); ``results`` is empty (a run is not a result)."""

    #: The run trained (with ``seeds``: the group).
    run: str = ""
    #: ``new``, or ``exists``: the run was there and nothing was trained (``force``
    #: retrains); with ``seeds``, ``exists`` when every seed's run was there.
    status: str = "new"
    #: The final benign test accuracy (%) per decision and member (``vote``, ``sum``, ...,
    #: ``member0``, ...); with ``seeds``, the last seed's.
    benign: dict[str, float] = field(default_factory=dict)
    #: The files written: each trained run's checkpoint and history (none when it existed).
    files: list[Path] = field(default_factory=list)
    #: With ``seeds``: one outcome per seed's run (``<run>-seed<s>``), in seed order.
    seeds: list[TrainOutcome] = field(default_factory=list)
    #: This process's torchrun rank: only rank 0 saves the run (and fills ``benign`` and
    #: ``files``) and reports it.
    rank: int = 0

    @property
    def new_files(self) -> list[Path]:
        """The files this call wrote (``files``)."""
        return list(self.files)


@entry_point(TrainSettings)
def train(s: TrainSettings, progress: Reporter | None = None) -> TrainOutcome:
    """Train a K-member ensemble with ``defense``'s objective (:mod:`dmlcli.defenses`: ``dml``,
    Eq. 3, by default; ``baseline=True`` is ``defense="baseline"``) and store it as
    ``models/<run>/model.safetensors``. Options: :class:`TrainSettings`.

    ``defense_arg``: ``["name=value", ...]`` overriding the defense's hyperparameters.
    ``seeds`` (``"0,1,2"`` or a list, at least two): one run per seed, ``<run>-seed<s>``, a
    group that ``attack``, ``compare`` and ``report`` aggregate; a ``prior`` naming a group
    gives each seed the prior of the same seed.

    Returns a :class:`TrainOutcome`: ``rows`` (the per-epoch history; with ``seeds`` of
    every seed's run, with ``run`` and ``seed`` columns), ``run``, ``benign`` (accuracy % per
    decision and member), ``files`` and ``status`` (``new``, or ``exists`` when the run was
    already there: nothing is trained unless ``force``); with ``seeds`` also ``seeds``: one
    such outcome per seed.
    """
    if s.seeds is not None:
        return _train_seeds(s, progress)
    return _train_run(s, progress or Reporter())


def _train_run(s: TrainSettings, reporter: Reporter) -> TrainOutcome:
    """:func:`train` one run (the steps below); an existing run is read back unless
    ``force``."""
    plan = _plan(s)
    if plan.store.has_run(plan.run) and not s.force:
        return _existing(plan.store, plan.run)
    device, rank = init_distributed(resolve_device(s.device))
    trainer = _trainer(s, plan, device, reporter)
    return _run_and_save(s, plan, trainer, rank, reporter)


@dataclass(frozen=True)
class _Plan:
    """What a training call resolved before anything runs: the store, the run, the
    ensemble's config (its training settings and prior recorded in it), the training loop's
    settings and the prior run."""

    store: Store
    run: str
    config: EnsembleConfig
    trainer: TrainerSettings
    prior: Run | None


def _plan(s: TrainSettings) -> _Plan:
    """Step 1: the config and the trainer's settings of ``s``, and the prior (trained on the
    same dataset)."""
    store = Store(s.artifacts)
    trainer = s.trainer_settings()
    prior = open_run(s.prior, store) if s.prior else None
    if prior is not None and prior.dataset != s.dataset:
        raise DmlError(f"--prior {s.prior} was trained on {prior.dataset}, not {s.dataset}")
    config = s.model_config().replace(
        training=vars(trainer).copy(), prior=prior.name if prior else None
    )
    return _Plan(store, s.run_name(), config, trainer, prior)


def _existing(store: Store, run: str) -> TrainOutcome:
    """Step 2, when the run is there: its stored history and benign accuracy, nothing
    trained."""
    _, meta = checkpoint_config(store.checkpoint_path(run))
    history = store.history_path(run)
    rows = read_parquet(history)[0] if history.is_file() else pd.DataFrame()
    benign = meta.get("benign", {})
    return TrainOutcome(rows=rows, run=run, status="exists", benign=benign, rank=world()[0])


def _trainer(s: TrainSettings, plan: _Plan, device: str, reporter: Reporter) -> Trainer:
    """Step 3: the trainer: the dataset's splits, the ensemble (backbones from the prior),
    and with ``resume`` the state of the run's last checkpoint."""
    size = plan.config.image_size
    train_data = load_dataset(s.dataset, "train", s.data_dir, s.download, size)
    test_data = load_dataset(s.dataset, "test", s.data_dir, s.download, size)
    ensemble = Ensemble(plan.config, mode=s.mode)
    if plan.prior is not None:
        ensemble.load_backbones_from(plan.prior.model)
    trainer = Trainer(ensemble, train_data, test_data, plan.trainer, device=device)
    if s.resume:
        _resume(trainer, plan, reporter)
    return trainer


def _resume(trainer: Trainer, plan: _Plan, reporter: Reporter) -> None:
    """Continue from the run's resume checkpoint, which must be of the same config (none:
    start fresh, with a note)."""
    path = plan.store.resume_path(plan.run)
    if not path.is_file():
        reporter.note(f"no checkpoint to resume in {plan.store.run_dir(plan.run)}; starting fresh")
        return
    tensors, meta, _ = read_tensors(path)
    if meta.get("config") != plan.config.to_json():
        raise DmlError(f"--resume: {path} belongs to a run with other settings")
    trainer.load_state(tensors, meta["trainer"])
    reporter.note(f"resuming {plan.run} at epoch {trainer.epoch + 1}, step {trainer.step}")


def _run_and_save(
    s: TrainSettings, plan: _Plan, trainer: Trainer, rank: int, reporter: Reporter
) -> TrainOutcome:
    """Step 4: train the remaining steps, then (rank 0) save the ensemble with its benign
    accuracy and drop the resume checkpoint; leave torchrun's process group."""
    store, run = plan.store, plan.run
    model_path = store.checkpoint_path(run)
    if s.force:
        model_path.unlink(missing_ok=True)
    run_training(trainer, *_hooks(plan, trainer, rank, reporter))
    out = TrainOutcome(rows=pd.DataFrame(trainer.history), run=run, rank=rank)
    if rank == 0:
        out.benign = _benign(trainer.history[-1])
        extra = {"benign": out.benign, "run": run}
        if s.data_dir is not None:
            extra["data_dir"] = str(Path(s.data_dir).resolve())
        save_ensemble(model_path, trainer.ensemble.cpu(), extra)
        store.resume_path(run).unlink(missing_ok=True)
        out.files = [model_path, store.history_path(run)]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return out


def _benign(final: dict) -> dict[str, float]:
    """The benign test accuracies (%) of the last epoch's history row, by decision and
    member (``test_vote`` -> ``vote``; robust accuracies left out)."""
    return {k[5:]: v for k, v in final.items() if k.startswith("test_") and "robust" not in k}


def _hooks(
    plan: _Plan, trainer: Trainer, rank: int, reporter: Reporter
) -> tuple[Callable[..., None], Callable[..., None], Callable[..., None]]:
    """:func:`~dmlcli.train.run_training`'s hooks (step, epoch, checkpoint): the progress
    bar (rank 0's), and rank 0 writes the history after every epoch and the state to resume
    from at every checkpoint."""
    store, run, settings, config = plan.store, plan.run, plan.trainer, plan.config.to_json()

    def checkpoint(t: Trainer) -> None:
        if rank == 0:
            tensors, state = t.state()
            save_tensors(store.resume_path(run), tensors, {"config": config, "trainer": state})

    def write_history(t: Trainer, row: dict) -> None:
        if rank == 0:
            meta = {"run": run, "config": config}
            write_parquet(store.history_path(run), pd.DataFrame(t.history), meta)

    total = settings.epochs * trainer.steps_per_epoch
    update = reporter.task(f"train {run}", total) if rank == 0 else Reporter().task("", 0)

    def on_step(t: Trainer, out: dict, seconds: float) -> None:
        rate = settings.batch_size / max(seconds, 1e-9)
        done = t.epoch * t.steps_per_epoch + t.step
        info = (
            f"epoch {t.epoch + 1}/{settings.epochs} loss {out['total']:.3f} "
            f"acc {out['acc']:.1f}% {rate:,.0f} img/s"
        )
        update(done, info)

    return on_step, write_history, checkpoint


def _train_seeds(s: TrainSettings, progress: Reporter | None) -> TrainOutcome:
    """:func:`train` once per seed of ``s.seeds``: runs ``<run>-seed<s>`` of the group
    ``<run>``, each with the same seed's run of a ``prior`` group; the histories with
    ``run`` and ``seed``."""
    store = Store(s.artifacts)
    group = s.run_name()
    prior_group = store.group_runs(s.prior) if s.prior else {}
    seeds = parse_seeds(s.seeds)  # type: ignore[arg-type]  # not None here
    outs = []
    for seed in seeds:
        one = dataclasses.replace(
            s, seeds=None, seed=seed, name=store.seed_run(group, seed),
            prior=prior_group.get(seed, s.prior),
        )  # fmt: skip
        outs.append(_train_run(one, progress or Reporter()))
    frames = [o.rows.assign(run=o.run, seed=seed) for o, seed in zip(outs, seeds, strict=True)]
    return TrainOutcome(
        rows=pd.concat(frames, ignore_index=True),
        run=group,
        status="exists" if all(o.status == "exists" for o in outs) else "new",
        benign=outs[-1].benign,
        files=[f for o in outs for f in o.files],
        seeds=outs,
        rank=outs[-1].rank,
    )
