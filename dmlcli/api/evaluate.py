"""``dml clever``, ``dml certify`` and ``dml geometry``: per-sample scores of one run (CLEVER,
randomized-smoothing certificates, gradient similarity and loss surfaces)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dmlcli.api._common import RunContext, check_head_swap, eval_subset, with_head
from dmlcli.api.outcome import Outcome
from dmlcli.api.settings import (
    DATA_DIR_HELP,
    N_HELP,
    RUN_HELP,
    Common,
    Parts,
    argument,
    entry_point,
    flag,
    option,
)
from dmlcli.data import load_dataset
from dmlcli.errors import DmlError
from dmlcli.eval import certify as ce
from dmlcli.eval import clever as cl
from dmlcli.eval import geometry as geo
from dmlcli.eval.jobs import Job
from dmlcli.models.io import Run
from dmlcli.runner import Outcome as JobOutcome
from dmlcli.runner import Reporter, run_jobs
from dmlcli.runs import open_run


# -- clever -----------------------------------------------------------------------------------
@dataclass(kw_only=True)
class CleverSettings(Parts):
    """The options of ``dml clever`` / :func:`clever` (each field is one option)."""

    run: str = argument(RUN_HELP)
    n: int = option(1000, N_HELP)
    norm: str = option("2", "Ball norm p: 2, inf or 1 (dual norm q).")
    radius: float = option(2.0, "Radius R of the sampling ball.")
    nb_batches: int = option(500, "Batches N_b (batch maxima).")
    batch_size: int = option(1024, "Points per batch N_s.")
    pool_factor: int = option(10, "Gradient pool = factor x batch size (ART); 0: fresh points.")
    target: str = option("sum", "sum (summed member logits, the paper) or member:K.")
    c_init: list[float] | None = option(
        None,
        "Weibull shape start(s) of the fit, the best kept (repeatable; default Weng et al.'s "
        "0.1 1 5 10 20 50 100).",
    )
    grad_batch: int = option(512, "Points per forward/backward pass (speed and memory only).")

    def check(self) -> None:
        super().check()
        self.estimator()

    def estimator(self) -> cl.CleverSettings:
        """The CLEVER estimator's settings (:class:`~dmlcli.eval.clever.CleverSettings`),
        checked."""
        return cl.CleverSettings(
            norm=cl.parse_norm(self.norm), radius=self.radius, nb_batches=self.nb_batches,
            batch_size=self.batch_size, pool_factor=self.pool_factor,
            c_init=cl.SHAPE_STARTS if self.c_init is None else self.c_init,
            grad_batch=self.grad_batch,
        ).validate()  # fmt: skip


@entry_point(CleverSettings)
def clever(s: CleverSettings, progress: Reporter | None = None) -> Outcome:
    """Untargeted CLEVER scores (Weng et al. 2018) of ``target`` per sample (Fig. 1, 7, 8).
    ``c_init``: the Weibull shape start(s) of the fit, the best (KS p-value) kept; default
    Weng et al.'s ``0.1 1 5 10 20 50 100``. Options: :class:`CleverSettings`.

    Returns the rows of the run (schema ``clever``: one per sample); the stored result's
    ``meta['head_lipschitz']`` holds the DML head's Lipschitz bounds (Lemma 1, A.1), one
    entry per member (absent for a linear head).
    """
    ctx = RunContext.of(s, progress)
    r = open_run(s.run, ctx.store)
    cl.ScoredModel(r.model, s.target)  # checks the target
    images, labels, indices = eval_subset(r, s.n, s.seed, s.data_dir)
    job = cl.clever_job(
        r, images, labels, indices, s.estimator(), target=s.target, seed=s.seed,
        part_size=s.part_size, device=ctx.device,
    )  # fmt: skip
    return Outcome.of(_run(ctx, [job]))


def _run(ctx: RunContext, jobs: list[Job]) -> list[JobOutcome]:
    """Run ``jobs`` in the context's store (its shard, ``force`` and progress)."""
    return run_jobs(ctx.store, jobs, force=ctx.force, shard=ctx.shard, progress=ctx.progress)


# -- certify ----------------------------------------------------------------------------------
@dataclass(kw_only=True)
class CertifySettings(Parts):
    """The options of ``dml certify`` / :func:`certify` (each field is one option)."""

    run: str = argument(RUN_HELP)
    sigma: float = option(0.25, "Std of the Gaussian pixel noise.")
    n0: int = option(100, "Draws for the class guess.")
    n: int = option(100_000, "Draws for the lower bound.")
    alpha: float = option(0.001, "Failure probability.")
    n_samples: int = option(500, N_HELP)
    decision: str = option("vote", "Base classifier: vote, sum, meta-vote, mean-softmax, member:K.")
    head: str | None = option(None, "Swap the DML head for certification: dml, rdml, augdml.")
    head_sigma: float | None = option(None, "Noise std of the swapped head.")
    head_samples: int | None = option(None, "Monte-Carlo draws T of the swapped head.")
    predict_n: int = option(1000, "Draws for PREDICT (binomial test; columns smoothed*).")
    batch_size: int = option(1000, "Noise draws per forward pass.")

    def check(self) -> None:
        super().check()
        self.smoothing()
        check_head_swap(self.head, self.head_sigma, self.head_samples)

    def smoothing(self) -> ce.CertifySettings:
        """CERTIFY/PREDICT's settings (:class:`~dmlcli.eval.certify.CertifySettings`),
        checked."""
        return ce.CertifySettings(
            sigma=self.sigma, n0=self.n0, n=self.n, alpha=self.alpha, predict_n=self.predict_n,
            batch_size=self.batch_size,
        ).validate()  # fmt: skip


@entry_point(CertifySettings)
def certify(s: CertifySettings, progress: Reporter | None = None) -> Outcome:
    """Randomized-smoothing CERTIFY and PREDICT (Cohen et al. 2019) of the ``decision`` on
    ``n_samples`` samples (A.9, Fig. 14-16); ``head`` evaluates the same weights behind
    another DML head (e.g. R-DML with ``head_sigma``). Options: :class:`CertifySettings`.

    Returns the rows of the run (schema ``certify``: one per sample); the stored result's
    ``meta['setting']['head']`` names the head certified.
    """
    ctx = RunContext.of(s, progress)
    r = open_run(s.run, ctx.store)
    trained = r.model.config.head if hasattr(r.model, "config") else None
    r = with_head(r, s.head, s.head_sigma, s.head_samples)
    images, labels, indices = eval_subset(r, s.n_samples, s.seed, s.data_dir)
    job = ce.certify_job(
        r, images, labels, indices, s.smoothing(), decision=s.decision, seed=s.seed,
        part_size=s.part_size, device=ctx.device, trained_head=trained,
    )  # fmt: skip
    return Outcome.of(_run(ctx, [job]))


# -- geometry ---------------------------------------------------------------------------------
@dataclass(kw_only=True)
class GeometrySettings(Common):
    """The options of ``dml geometry`` / :func:`geometry` (each field is one option)."""

    run: str = argument(RUN_HELP)
    gradients: bool = flag("Cosine of members' input gradients (A.7).")
    surface: bool = flag("Loss surfaces around samples (Fig. 2).")
    n: int = option(1000, "Samples for --gradients (a seeded subset).")
    surface_samples: int = option(3, "Samples for --surface (a seeded subset of this size).")
    grid: int = option(21, "Grid points per axis of the surface.")
    r_max: float = option(0.1, "Largest step r along the gradient.")
    theta_max: float = option(0.1, "Largest |theta| along the noise P.")
    noise_std: float = option(0.05, "Std of the noise direction P.")
    direction: str = option("sign", "sign or normalized gradient of the ensemble's CE.")
    batch_size: int = option(256, "Samples / grid points per pass.")
    data_dir: str | Path | None = option(None, DATA_DIR_HELP)

    def check(self) -> None:
        self.landscape()
        self.positive("batch_size")
        if "surface" in self.measures() and self.surface_samples < 1:
            raise DmlError(f"--surface-samples must be at least 1; got {self.surface_samples}")

    def measures(self) -> list[str]:
        """What is computed: ``gradients`` and/or ``surface`` (both when neither is asked)."""
        asked = [m for m in ("gradients", "surface") if getattr(self, m)]
        return asked or ["gradients", "surface"]

    def landscape(self) -> geo.SurfaceSettings:
        """The loss surfaces' grid (:class:`~dmlcli.eval.geometry.SurfaceSettings`), checked."""
        return geo.SurfaceSettings(
            self.grid, self.r_max, self.theta_max, self.noise_std, self.direction
        ).validate()


@entry_point(GeometrySettings)
def geometry(s: GeometrySettings, progress: Reporter | None = None) -> Outcome:
    """Cosine of members' input gradients per pair (``gradients``, A.7, Fig. 9-11) and loss
    surfaces around samples (``surface``, Fig. 2, 17); both when neither is asked for.
    Options: :class:`GeometrySettings`.

    Returns the rows of each result: schema ``gradients`` (one per sample and member pair),
    then schema ``surface`` (one per sample, model and grid point).
    """
    ctx = RunContext.of(s, progress)
    r = open_run(s.run, ctx.store)
    jobs: list[Job] = []
    if "gradients" in s.measures():
        images, labels, indices = eval_subset(r, s.n, s.seed, s.data_dir)
        jobs.append(geo.geometry_job(r, "gradients", images, labels, indices, seed=s.seed,
                                     batch_size=s.batch_size, device=ctx.device))  # fmt: skip
    if "surface" in s.measures():
        jobs.append(_surface_job(r, s, ctx))
    # never sharded (no --shard, whatever torchrun's RANK says)
    return Outcome.of(run_jobs(ctx.store, jobs, force=ctx.force, progress=ctx.progress))


def _surface_job(r: Run, s: GeometrySettings, ctx: RunContext) -> Job:
    """The loss-surface job of ``r`` on ``s.surface_samples`` seeded test samples."""
    images, labels = load_dataset(r.dataset, "test", s.data_dir or r.data_dir,
                                  image_size=r.image_size)  # fmt: skip
    if s.surface_samples > len(labels):
        raise DmlError(
            f"--surface-samples {s.surface_samples} is larger than the test set "
            f"({len(labels)} samples)"
        )
    _, _, indices = eval_subset(r, s.surface_samples, s.seed, s.data_dir)
    return geo.geometry_job(r, "surface", images, labels, indices, seed=s.seed,
                            settings=s.landscape(), batch_size=s.batch_size,
                            device=ctx.device)  # fmt: skip
