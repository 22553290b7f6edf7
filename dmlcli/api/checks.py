"""``dml check``: sanity checks for gradient masking and failed attacks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dmlcli.api._common import RunContext, check_decision, eval_subset
from dmlcli.api.outcome import Outcome
from dmlcli.api.settings import (
    DATA_DIR_HELP,
    N_HELP,
    RUN_HELP,
    Common,
    argument,
    entry_point,
    option,
)
from dmlcli.data import dataset_info
from dmlcli.errors import DmlError
from dmlcli.eval import check as chk
from dmlcli.models.io import Run
from dmlcli.runner import Reporter, run_jobs
from dmlcli.runs import open_run
from dmlcli.units import parse_eps


@dataclass(kw_only=True)
class CheckSettings(Common):
    """The options of ``dml check`` / :func:`check` (each field is one option)."""

    run: str = argument(RUN_HELP)
    baseline: str | None = option(
        None, "An undefended run of the same dataset the attacks must break."
    )
    surrogate: str | None = option(
        None, "Transfer APGD-CE adversarials from this run (per-sample check)."
    )
    eps: str | float | None = option(None, "L-inf budget in pixels (default: the first paper eps).")
    large_eps: str | float | None = option(
        None, "Budget where accuracy must reach ~0 (default 4x paper eps, <= 0.5)."
    )
    n: int = option(200, N_HELP)
    decision: str = option("vote", "Decision scored: vote (paper), meta-vote, sum, member:k.")
    steps: int = option(20, "PGD steps (doubled in the budget check).")
    restarts: int = option(1, "PGD restarts (doubled in the budget check).")
    queries: int = option(1000, "RayS (hard-label, on the decision) queries per sample.")
    eot: int = option(10, "EOT draws on randomized heads.")
    batch_size: int = option(500, "Images per batch (kept as a part).")
    data_dir: str | Path | None = option(None, DATA_DIR_HELP)

    def check(self) -> None:
        self.positive("n", "batch_size")
        if self.eps is not None:
            parse_eps(self.eps)
        if self.large_eps is not None:
            parse_eps(self.large_eps)


@dataclass
class CheckOutcome(Outcome):
    """:func:`check`'s rows (the ``check`` result: one row per check) and the budgets and
    samples the checks ran with."""

    eps: float = 0.0  # the L-inf budget in pixels (default: the dataset's first paper eps)
    large_eps: float = 0.0  # where accuracy must reach ~0 (default: 4x paper eps, <= 0.5)
    n: int = 0  # evaluation samples
    seed: int = 0  # the seed of the evaluation subset and of the attacks


@entry_point(CheckSettings)
def check(s: CheckSettings, progress: Reporter | None = None) -> CheckOutcome:
    """Sanity checks for gradient masking and failed attacks (Carlini et al. 2019; AutoAttack's
    checks; Pintor et al. 2022) on ``n`` samples at ``eps`` (default: the dataset's first
    paper eps): iterative vs single-step, more budget, silent success and incomplete
    optimization (Pintor et al.'s indicators, from the loss trace of a PGD kept by loss), a
    large eps (default 4x the largest paper eps, at most 0.5) and the eps sweep, RayS on the
    decision (``queries`` per sample; and a transfer from ``surrogate``) vs the white-box
    attacks per sample, zero input gradients per surface, randomness and, with
    ``baseline``, that the attacks break an undefended model. Options: :class:`CheckSettings`.

    Returns a :class:`CheckOutcome`: the rows of one ``check`` result, one row per check
    (``status`` pass/warn/fail, ``value``, ``threshold``, ``detail``), and the ``eps``,
    ``large_eps``, ``n`` and ``seed`` they were computed with."""
    ctx = RunContext.of(s, progress)
    r = open_run(s.run, ctx.store)
    budgets = _budgets(s, r)
    check_decision(s.decision, r.num_members)
    baseline = _reference(s.baseline, "--baseline", r, ctx)
    surrogate = _reference(s.surrogate, "--surrogate", r, ctx)
    images, labels, indices = eval_subset(r, s.n, s.seed, s.data_dir)
    job = chk.check_job(
        r, images, labels, indices, budgets, seed=s.seed, baseline=baseline,
        surrogate=surrogate, device=ctx.device,
    )  # fmt: skip
    for m in (r, baseline, surrogate):
        if m is not None:
            m.model.to(ctx.device)
    outcomes = run_jobs(ctx.store, [job], force=ctx.force, progress=ctx.progress)
    return CheckOutcome.of(
        outcomes, eps=budgets.eps, large_eps=budgets.large_eps, n=s.n, seed=s.seed
    )


def _budgets(s: CheckSettings, r: Run) -> chk.CheckSettings:
    """The checked attack set (:class:`dmlcli.eval.check.CheckSettings`) of ``r``: ``eps``
    by default the first paper eps of its dataset, ``large_eps`` by default
    :func:`~dmlcli.eval.check.default_large_eps`."""
    info = dataset_info(r.dataset)
    eps = parse_eps(s.eps if s.eps is not None else info.paper_eps[0])
    large = parse_eps(s.large_eps) if s.large_eps is not None else chk.default_large_eps(info, eps)
    return chk.CheckSettings(
        eps=eps, large_eps=large, decision=s.decision, steps=s.steps, restarts=s.restarts,
        queries=s.queries, eot=s.eot, batch_size=s.batch_size,
    ).validate()  # fmt: skip


def _reference(name: str | None, flag: str, r: Run, ctx: RunContext) -> Run | None:
    """The run ``name`` (``--baseline`` or ``--surrogate``), which must have been trained on
    ``r``'s dataset; None when not given."""
    if not name:
        return None
    other = open_run(name, ctx.store)
    if other.dataset != r.dataset:
        raise DmlError(f"{flag} {other.name} was trained on {other.dataset}, not {r.dataset}")
    return other
