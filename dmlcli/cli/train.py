"""``dml train``: train a DML ensemble (Eq. 3) or the cross-entropy baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dmlcli.cli.common import (
    ArtifactsOpt,
    DeviceOpt,
    ForceOpt,
    SeedOpt,
    console,
    open_store,
    parse_eps,
    progress,
    resolve_device,
    summary,
)
from dmlcli.errors import DmlError

# Epochs, batch size, optimizer and lr per dataset when the flags are not given.
DEFAULTS = {
    "digits": (12, 64, "adam", 2e-3),
    "mnist": (10, 128, "adam", 2e-3),
    "fashion-mnist": (10, 128, "adam", 2e-3),
    "cifar10": (100, 128, "sgd", 0.1),
    "resisc45": (60, 64, "sgd", 0.05),
}


def default_name(dataset: str, head: str, centers: str, diversity: str, adv: str) -> str:
    parts = [dataset, "baseline" if head == "linear" else head]
    parts += ["1d"] if centers == "1d" else []
    parts += ["scaling"] if diversity == "scaling" and head != "linear" else []
    parts += [adv] if adv != "none" else []
    return "-".join(parts)


def command(
    dataset: Annotated[str, typer.Argument(help="digits, mnist, fashion-mnist, cifar10, resisc45")],
    members: Annotated[int, typer.Option("--members", "-k", help="Ensemble size K.")] = 5,
    baseline: Annotated[bool, typer.Option("--baseline", help="Linear heads, CE only.")] = False,
    head: Annotated[str, typer.Option(help="dml, rdml, augdml or linear.")] = "dml",
    prior: Annotated[str | None, typer.Option(help="Initialise backbones from this run.")] = None,
    name: Annotated[str | None, typer.Option(help="Run name (default from the choices).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (dataset default).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (dataset default).")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd or adam.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: Annotated[str, typer.Option(help="none, cosine or step.")] = "cosine",
    augment: Annotated[
        str | None, typer.Option(help="none or crop-flip (dataset default).")
    ] = None,
    m_mode: Annotated[str, typer.Option(help="diag (paper) or full (P^T P).")] = "diag",
    m_init: Annotated[
        str, typer.Option(help="Trainable M entries: uniform U(0,1) or fixed.")
    ] = "uniform",
    m_fixed: Annotated[float, typer.Option(help="Value of the fixed M entries.")] = 0.1,
    centers: Annotated[str, typer.Option(help="identity or 1d (A.5).")] = "identity",
    diversity: Annotated[
        str, typer.Option(help="split (I_k, paper) or scaling (A.9.1).")
    ] = "split",
    head_samples: Annotated[int, typer.Option(help="Monte-Carlo draws T of R-DML/AUG-DML.")] = 20,
    head_sigma: Annotated[float, typer.Option(help="Noise std of R-DML/AUG-DML.")] = 0.1,
    gamma: Annotated[float, typer.Option(help="Weight of the orthogonality term (Eq. 3).")] = 0.01,
    beta: Annotated[float, typer.Option(help="Weight of the L1 term (Eq. 3).")] = 0.01,
    adv_train: Annotated[str, typer.Option(help="none or fgsm (A.8).")] = "none",
    adv_eps: Annotated[str, typer.Option(help="FGSM training eps, e.g. 10/255.")] = "10/255",
    eval_attack: Annotated[
        str, typer.Option(help="none or fgsm: robust accuracy per epoch.")
    ] = "none",
    eval_eps: Annotated[str, typer.Option(help="Eps of --eval-attack.")] = "0.1",
    image_size: Annotated[int | None, typer.Option(help="Resize images (RESISC-45).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Folder with the dataset's files.")] = None,
    download: Annotated[bool, typer.Option(help="Let torchvision download missing files.")] = True,
    resume: Annotated[bool, typer.Option(help="Continue from the run's last checkpoint.")] = False,
    checkpoint_every: Annotated[int, typer.Option(help="Also checkpoint every N steps.")] = 0,
    mode: Annotated[str, typer.Option(help="Member evaluation: auto, batched or loop.")] = "auto",
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Train a K-member DML ensemble (or --baseline) and store it as safetensors."""
    import torch

    from dmlcli.config import resolve_config
    from dmlcli.data import dataset_info, load_dataset
    from dmlcli.models.ensemble import Ensemble
    from dmlcli.store import RESUME_FILE, load_ensemble, read_tensors, save_ensemble, save_tensors
    from dmlcli.train import Trainer, TrainSettings, run_training

    info = dataset_info(dataset)
    head = "linear" if baseline else head
    if baseline and prior:
        raise DmlError("--baseline and --prior exclude each other")
    config = resolve_config(
        dataset,
        members,
        head,
        image_size=image_size,
        m_mode=m_mode,
        m_init=m_init,
        m_fixed=m_fixed,
        centers=centers,
        diversity=diversity,
        head_samples=head_samples,
        head_sigma=head_sigma,
        gamma=gamma,
        beta=beta,
        seed=seed,
    )
    d_epochs, d_batch, d_opt, d_lr = DEFAULTS[dataset]
    settings = TrainSettings(
        epochs=epochs if epochs is not None else d_epochs,
        batch_size=batch_size if batch_size is not None else d_batch,
        optimizer=optimizer or d_opt,
        lr=lr if lr is not None else d_lr,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
        augment=augment or info.augment,
        adv_train=adv_train,
        adv_eps=parse_eps(adv_eps),
        eval_attack=eval_attack,
        eval_eps=parse_eps(eval_eps),
        checkpoint_every=checkpoint_every,
    )
    settings.validate()
    dev, rank = _init_distributed(resolve_device(device))
    store = open_store(artifacts)
    run = name or default_name(dataset, head, centers, diversity, adv_train)
    run_dir = store.run_dir(run)
    prior_model = None
    if prior:
        prior_model = load_ensemble(store.resolve_checkpoint(prior))
        if prior_model.config["dataset"] != dataset:
            raise DmlError(
                f"--prior {prior} was trained on {prior_model.config['dataset']}, not {dataset}"
            )
    if store.has_run(run) and not force:
        console.print(
            f"[yellow]{run} exists[/yellow] in {run_dir}; nothing to do "
            "(--force retrains, --name picks another name)"
        )
        _print_summary(
            run, load_ensemble(store.model_path(run)).meta.get("benign", {}), store.model_path(run)
        )
        return
    resume_path = run_dir / RESUME_FILE
    if resume and not resume_path.is_file():
        console.print(f"[yellow]no checkpoint to resume in {run_dir}; starting fresh[/yellow]")
    config["training"] = vars(settings).copy()
    config["prior"] = prior
    train_data = load_dataset(dataset, "train", data_dir, download, config["image_size"])
    test_data = load_dataset(dataset, "test", data_dir, download, config["image_size"])
    ensemble = Ensemble(config, mode=mode)
    if prior_model is not None:
        ensemble.load_backbones_from(prior_model)
    trainer = Trainer(ensemble, train_data, test_data, settings, device=dev)
    if resume and resume_path.is_file():
        tensors, meta, _ = read_tensors(resume_path)
        if meta.get("config") != config:
            raise DmlError(f"--resume: {resume_path} belongs to a run with other settings")
        trainer.load_state(tensors, meta["trainer"])
        console.print(f"resuming {run} at epoch {trainer.epoch + 1}, step {trainer.step}")
    if force:
        store.model_path(run).unlink(missing_ok=True)

    def checkpoint(t: Trainer) -> None:
        if rank != 0:
            return
        tensors, meta = t.state()
        save_tensors(resume_path, tensors, {"config": config, "trainer": meta})

    def write_history(t: Trainer, row: dict) -> None:
        import pandas as pd

        from dmlcli.store import write_parquet

        if rank != 0:
            return
        write_parquet(
            run_dir / "history.parquet", pd.DataFrame(t.history), {"run": run, "config": config}
        )
        bar.update(epoch_task, advance=1, info=f"test vote {row['test_vote']:.2f}%")

    total = settings.epochs * trainer.steps_per_epoch
    done = trainer.epoch * trainer.steps_per_epoch + trainer.step
    bar_or_quiet = progress()
    bar_or_quiet.disable = rank != 0
    with bar_or_quiet as bar:
        epoch_task = bar.add_task(
            f"train {run}", total=settings.epochs, info="", completed=trainer.epoch
        )
        step_task = bar.add_task("steps", total=total, completed=done, info="")

        def on_step(t: Trainer, out: dict, seconds: float) -> None:
            rate = settings.batch_size / max(seconds, 1e-9)
            bar.update(
                step_task,
                advance=1,
                info=(
                    f"epoch {t.epoch + 1}/{settings.epochs} loss {out['total']:.3f} "
                    f"acc {out['acc']:.1f}% {rate:,.0f} img/s"
                ),
            )

        run_training(trainer, on_step, write_history, checkpoint)
    if rank != 0:
        torch.distributed.destroy_process_group()
        return
    final = trainer.history[-1]
    benign = {k[5:]: v for k, v in final.items() if k.startswith("test_") and "robust" not in k}
    path = store.model_path(run)
    save_ensemble(path, trainer.ensemble.cpu(), {"benign": benign, "run": run})
    resume_path.unlink(missing_ok=True)
    _print_summary(run, benign, path, run_dir / "history.parquet")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _init_distributed(device: str) -> tuple[str, int]:
    """Join the torchrun process group if there is one: (device of this rank, rank).

    gloo on the CPU, nccl on GPUs (one per local rank). Without torchrun: (device, 0).
    """
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device, 0
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device, dist.get_rank()


def _print_summary(run: str, benign: dict[str, float], *files: Path) -> None:
    rows = [(k, v) for k, v in benign.items()]
    summary(f"{run}: benign test accuracy (%)", ["model / decision", "accuracy"], rows, files)
