"""``dml train``: :func:`train` one ensemble, or one run per seed of a group."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from dmlcli.api._common import PathLike, as_list
from dmlcli.data import dataset_info, load_dataset
from dmlcli.defenses import parse_defense_args, resolve_defense, resolve_defense_args
from dmlcli.errors import DmlError
from dmlcli.files import (
    read_parquet,
    read_tensors,
    save_tensors,
    write_parquet,
)
from dmlcli.models.config import resolve_config
from dmlcli.models.ensemble import Ensemble
from dmlcli.models.io import checkpoint_config, save_ensemble
from dmlcli.runner import Reporter
from dmlcli.runs import open_run
from dmlcli.runtime import init_distributed, resolve_device
from dmlcli.store import Store, validate_name
from dmlcli.train import Trainer, TrainSettings, default_run_name, parse_seeds, run_training
from dmlcli.units import parse_eps


def train(
    dataset: str,
    *,
    members: int = 5,
    defense: str | None = None,
    defense_arg: Sequence[str] | None = None,
    baseline: bool = False,
    head: str = "dml",
    backbone: str | None = None,
    prior: str | None = None,
    name: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    optimizer: str | None = None,
    lr: float | None = None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    augment: str | None = None,
    m_mode: str = "diag",
    m_init: str = "uniform",
    m_fixed: float = 0.1,
    centers: str = "identity",
    diversity: str = "split",
    head_samples: int = 20,
    head_sigma: float = 0.1,
    gamma: float = 0.01,
    beta: float = 0.01,
    adv_train: str = "none",
    adv_eps: str = "10/255",
    eval_attack: str = "none",
    eval_eps: str = "0.1",
    image_size: int | None = None,
    data_dir: PathLike | None = None,
    download: bool = True,
    resume: bool = False,
    checkpoint_every: int = 0,
    mode: str = "auto",
    seed: int = 0,
    seeds: str | Sequence[int] | None = None,
    device: str = "auto",
    force: bool = False,
    artifacts: PathLike | None = None,
    progress: Reporter | None = None,
) -> pd.DataFrame:
    """Train a K-member ensemble with ``defense``'s objective (:mod:`dmlcli.defenses`: ``dml``,
    Eq. 3, by default; ``baseline=True`` is ``defense="baseline"``) and store it as
    ``models/<run>/model.safetensors``; returns the per-epoch history.

    ``defense_arg``: ``["name=value", ...]`` overriding the defense's hyperparameters.
    ``seeds`` (``"0,1,2"`` or a list, at least two): one run per seed, ``<run>-seed<s>``, a
    group that ``attack``, ``compare`` and ``report`` aggregate; a ``prior`` naming a group
    gives each seed the prior of the same seed. The history then has a ``run`` column.

    ``attrs``: ``run``, ``benign`` (accuracy % per decision and member), ``files`` and
    ``status`` (``new``, or ``exists`` when the run was already there: nothing is trained
    unless ``force``); with ``seeds`` also ``runs``: one such dict per seed.
    """
    defense, head = resolve_defense(defense, baseline, head)
    run = validate_name(
        name or default_run_name(dataset, head, centers, diversity, adv_train, defense)
    )
    if seeds is not None:
        return _train_seeds(dict(locals()))
    defense_args = resolve_defense_args(defense, parse_defense_args(as_list(defense_arg)))
    reporter = progress or Reporter()
    info = dataset_info(dataset)
    if defense == "baseline" and prior:
        raise DmlError("--baseline and --prior exclude each other")
    config = resolve_config(
        dataset, members, head, backbone=backbone, image_size=image_size, m_mode=m_mode,
        m_init=m_init, m_fixed=m_fixed, centers=centers, diversity=diversity,
        head_samples=head_samples, head_sigma=head_sigma, gamma=gamma, beta=beta, seed=seed,
    )  # fmt: skip
    d = info.train
    settings = TrainSettings(
        epochs=epochs if epochs is not None else d.epochs,
        batch_size=batch_size if batch_size is not None else d.batch_size,
        optimizer=optimizer or d.optimizer,
        lr=lr if lr is not None else d.lr,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
        augment=augment or info.augment,
        adv_train=adv_train,
        adv_eps=parse_eps(adv_eps),
        eval_attack=eval_attack,
        eval_eps=parse_eps(eval_eps),
        checkpoint_every=checkpoint_every,
        defense=defense,
        defense_args=dict(defense_args or {}),
    )
    settings.validate()
    store = Store(artifacts)
    prior_run = open_run(prior, store) if prior else None
    if prior_run is not None and prior_run.dataset != dataset:
        raise DmlError(f"--prior {prior} was trained on {prior_run.dataset}, not {dataset}")
    model_path = store.checkpoint_path(run)
    if store.has_run(run) and not force:
        _, meta = checkpoint_config(model_path)
        history = store.history_path(run)
        df = read_parquet(history)[0] if history.is_file() else pd.DataFrame()
        df.attrs.update(run=run, benign=meta.get("benign", {}), files=[], status="exists")
        return df
    dev, rank = init_distributed(resolve_device(device))
    resume_path = store.resume_path(run)
    config = config.replace(
        training=vars(settings).copy(), prior=prior_run.name if prior_run else None
    )
    train_data = load_dataset(dataset, "train", data_dir, download, config.image_size)
    test_data = load_dataset(dataset, "test", data_dir, download, config.image_size)
    ensemble = Ensemble(config, mode=mode)
    if prior_run is not None:
        ensemble.load_backbones_from(prior_run.model)
    trainer = Trainer(ensemble, train_data, test_data, settings, device=dev)
    if resume and not resume_path.is_file():
        reporter.note(f"no checkpoint to resume in {store.run_dir(run)}; starting fresh")
    if resume and resume_path.is_file():
        tensors, meta, _ = read_tensors(resume_path)
        if meta.get("config") != config.to_json():
            raise DmlError(f"--resume: {resume_path} belongs to a run with other settings")
        trainer.load_state(tensors, meta["trainer"])
        reporter.note(f"resuming {run} at epoch {trainer.epoch + 1}, step {trainer.step}")
    if force:
        model_path.unlink(missing_ok=True)
    meta_common = {"run": run, "config": config.to_json()}

    def checkpoint(t: Trainer) -> None:
        if rank == 0:
            tensors, state = t.state()
            save_tensors(resume_path, tensors, {"config": config.to_json(), "trainer": state})

    def write_history(t: Trainer, row: dict) -> None:
        if rank == 0:
            write_parquet(store.history_path(run), pd.DataFrame(t.history), meta_common)

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

    run_training(trainer, on_step, write_history, checkpoint)
    history = pd.DataFrame(trainer.history)
    if rank == 0:
        final = trainer.history[-1]
        benign = {k[5:]: v for k, v in final.items() if k.startswith("test_") and "robust" not in k}
        extra = {"benign": benign, "run": run}
        if data_dir is not None:
            extra["data_dir"] = str(Path(data_dir).resolve())
        save_ensemble(model_path, trainer.ensemble.cpu(), extra)
        resume_path.unlink(missing_ok=True)
        history.attrs.update(
            run=run, benign=benign, status="new", files=[model_path, store.history_path(run)]
        )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return history


def _train_seeds(options: dict[str, Any]) -> pd.DataFrame:
    """:func:`train` once per seed of ``options["seeds"]``: runs ``<run>-seed<s>`` of the
    group ``options["run"]``, each with the same seed's run of a ``prior`` group; the
    histories with ``run`` and ``seed``."""
    store = Store(options["artifacts"])
    seeds, prior, group = parse_seeds(options.pop("seeds")), options.pop("prior"), options["run"]
    for key in ("name", "seed", "run"):
        options.pop(key)
    prior_group = store.group_runs(prior) if prior else {}
    frames, runs = [], []
    for s in seeds:
        prior_s = prior_group.get(s, prior)
        df = train(**options, name=store.seed_run(group, s), seed=s, prior=prior_s)
        runs.append(dict(df.attrs))
        frames.append(df.assign(run=df.attrs["run"], seed=s))
    history = pd.concat(frames, ignore_index=True)
    history.attrs.update(
        run=group,
        runs=runs,
        benign=runs[-1].get("benign", {}),
        files=[f for r in runs for f in r.get("files", [])],
        status="exists" if all(r.get("status") == "exists" for r in runs) else "new",
    )
    return history
