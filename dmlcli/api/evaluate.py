"""``dml clever``, ``dml certify`` and ``dml geometry``: per-sample scores of one run (CLEVER,
randomized-smoothing certificates, gradient similarity and loss surfaces)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from dmlcli.api._common import PathLike, check_batch, eval_subset, rows_of
from dmlcli.data import load_dataset
from dmlcli.errors import DmlError
from dmlcli.eval import certify as ce
from dmlcli.eval import clever as cl
from dmlcli.eval import geometry as geo
from dmlcli.models.io import Run
from dmlcli.runner import Reporter, run_jobs
from dmlcli.runs import open_run
from dmlcli.runtime import Shard, parse_shard, resolve_device
from dmlcli.store import Store


# -- clever -----------------------------------------------------------------------------------
def clever(
    run: str,
    *,
    n: int = 1000,
    norm: str = "2",
    radius: float = 2.0,
    nb_batches: int = 500,
    batch_size: int = 1024,
    pool_factor: int = 10,
    target: str = "sum",
    c_init: float | Sequence[float] | None = None,
    grad_batch: int = 512,
    data_dir: PathLike | None = None,
    part_size: int = 10,
    shard: str | None = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    artifacts: PathLike | None = None,
    progress: Reporter | None = None,
) -> pd.DataFrame:
    """Untargeted CLEVER scores (Weng et al. 2018) of ``target`` per sample (Fig. 1, 7, 8;
    schema ``clever``); the result's metadata holds the DML head's Lipschitz bounds.
    ``c_init``: the Weibull shape start(s) of the fit, the best (KS p-value) kept; default
    Weng et al.'s ``0.1 1 5 10 20 50 100``."""
    shard_of = _part_options(shard, part_size)
    starts = cl.SHAPE_STARTS if c_init is None else c_init
    settings = cl.CleverSettings(
        norm=cl.parse_norm(norm), radius=radius, nb_batches=nb_batches,
        batch_size=batch_size, pool_factor=pool_factor, c_init=starts, grad_batch=grad_batch,
    ).validate()  # fmt: skip
    dev = resolve_device(device)
    store = Store(artifacts)
    r = open_run(run, store)
    cl.ScoredModel(r.model, target)  # checks the target
    images, labels, indices = eval_subset(r, n, seed, data_dir)
    job = cl.clever_job(
        r, images, labels, indices, settings, target=target, seed=seed, part_size=part_size,
        device=dev,
    )  # fmt: skip
    return rows_of(run_jobs(store, [job], force=force, shard=shard_of, progress=progress))


def _part_options(shard: str | None, part_size: int) -> Shard | None:
    """The shard to run (:func:`~dmlcli.runtime.parse_shard`), after checking ``--part-size``."""
    if part_size < 1:
        raise DmlError(f"--part-size must be at least 1; got {part_size}")
    return parse_shard(shard)


# -- certify ----------------------------------------------------------------------------------
def certify(
    run: str,
    *,
    sigma: float = 0.25,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    n_samples: int = 500,
    decision: str = "vote",
    head: str | None = None,
    head_sigma: float | None = None,
    head_samples: int | None = None,
    predict_n: int = 1000,
    batch_size: int = 1000,
    data_dir: PathLike | None = None,
    part_size: int = 10,
    shard: str | None = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    artifacts: PathLike | None = None,
    progress: Reporter | None = None,
) -> pd.DataFrame:
    """Randomized-smoothing CERTIFY and PREDICT (Cohen et al. 2019) of the ``decision`` on
    ``n_samples`` samples (A.9, Fig. 14-16; schema ``certify``); ``head`` evaluates the same
    weights behind another DML head (e.g. R-DML with ``head_sigma``)."""
    shard_of = _part_options(shard, part_size)
    settings = ce.CertifySettings(
        sigma=sigma, n0=n0, n=n, alpha=alpha, predict_n=predict_n, batch_size=batch_size
    ).validate()
    if (head_sigma is not None or head_samples is not None) and head is None:
        raise DmlError("--head-sigma/--head-samples only apply with --head dml|rdml|augdml")
    dev = resolve_device(device)
    store = Store(artifacts)
    r = open_run(run, store)
    trained = r.model.config.head if hasattr(r.model, "config") else None
    if head is not None:
        if not hasattr(r.model, "with_head"):
            raise DmlError(f"--head: {r.name} has no DML head to swap")
        r = Run(r.name, r.model.with_head(head, head_sigma, head_samples), r.checkpoint,
                r.dataset, r.meta, r.path)  # fmt: skip
    images, labels, indices = eval_subset(r, n_samples, seed, data_dir)
    job = ce.certify_job(
        r, images, labels, indices, settings, decision=decision, seed=seed,
        part_size=part_size, device=dev, trained_head=trained,
    )  # fmt: skip
    return rows_of(run_jobs(store, [job], force=force, shard=shard_of, progress=progress))


# -- geometry ---------------------------------------------------------------------------------
def geometry(
    run: str,
    *,
    gradients: bool = False,
    surface: bool = False,
    n: int = 1000,
    surface_samples: int = 3,
    grid: int = 21,
    r_max: float = 0.1,
    theta_max: float = 0.1,
    noise_std: float = 0.05,
    direction: str = "sign",
    batch_size: int = 256,
    data_dir: PathLike | None = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    artifacts: PathLike | None = None,
    progress: Reporter | None = None,
) -> pd.DataFrame:
    """Cosine of members' input gradients per pair (``gradients``, A.7, Fig. 9-11) and loss
    surfaces around samples (``surface``, Fig. 2, 17); both when neither is asked for."""
    if not gradients and not surface:
        gradients = surface = True
    settings = geo.SurfaceSettings(grid, r_max, theta_max, noise_std, direction).validate()
    check_batch(batch_size)
    if surface and surface_samples < 1:
        raise DmlError(f"--surface-samples must be at least 1; got {surface_samples}")
    dev = resolve_device(device)
    store = Store(artifacts)
    r = open_run(run, store)
    jobs = []
    if gradients:
        images, labels, indices = eval_subset(r, n, seed, data_dir)
        jobs.append(geo.geometry_job(r, "gradients", images, labels, indices, seed=seed,
                                     batch_size=batch_size, device=dev))  # fmt: skip
    if surface:
        images, labels = load_dataset(r.dataset, "test", data_dir or r.data_dir,
                                      image_size=r.image_size)  # fmt: skip
        if surface_samples > len(labels):
            raise DmlError(
                f"--surface-samples {surface_samples} is larger than the test set "
                f"({len(labels)} samples)"
            )
        _, _, indices = eval_subset(r, surface_samples, seed, data_dir)
        job = geo.geometry_job(r, "surface", images, labels, indices, seed=seed,
                               settings=settings, batch_size=batch_size, device=dev)  # fmt: skip
        jobs.append(job)
    return rows_of(run_jobs(store, jobs, force=force, progress=progress))
