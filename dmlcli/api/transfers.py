"""``dml transfer``: adversarials crafted on some members scored on the others (Table 4) and
the adaptive CW-L2 distortions (Table 5)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmlcli.api._common import RunContext, as_list, check_decision, eval_subset
from dmlcli.api.outcome import Outcome
from dmlcli.api.settings import DATA_DIR_HELP, RUN_HELP, Common, argument, entry_point, flag, option
from dmlcli.data import dataset_info
from dmlcli.errors import DmlError
from dmlcli.eval import transfer as tr
from dmlcli.eval.jobs import Job
from dmlcli.models.io import Run
from dmlcli.runner import Reporter, run_jobs
from dmlcli.runs import open_run
from dmlcli.units import parse_eps, parse_eps_list


@dataclass(kw_only=True)
class TransferSettings(Common):
    """The options of ``dml transfer`` / :func:`transfer` (each field is one option)."""

    run: str = argument(RUN_HELP)
    source: list[str] | None = option(
        None, "ensemble, member:k or all (every member); repeatable. Default member:1."
    )
    attack: str = option("pgd", "fgsm, bim, pgd, apgd-ce or apgd-dlr.")
    eps: list[str | float] | None = option(None, "L-inf budget(s): 0.2, 8/255 (repeatable).")
    steps: int = option(10, "Attack steps (PGD-10 in Table 4).")
    step_size: float | None = option(None, "Step size (default 2.5 eps/steps).")
    restarts: int = option(1, "Restarts.")
    loss: str = option("ce", "ce, cw, dlr or logit.")
    targeted: bool = flag("Targeted at random wrong labels (Table 4, 'Targeted').")
    decision: str = option("vote", "Ensemble decision: vote, meta-vote, sum.")
    cw_distortion: bool = flag("Run the adaptive CW-L2 distortion study (Table 5) instead.")
    kappa: list[float] | None = option(None, "CW confidence(s) (repeatable; default 0).")
    cw_c: float = option(1.0, "CW penalty constant (paper's gamma).")
    cw_steps: int = option(1000, "CW Adam steps (Table 5: 1000).")
    cw_lr: float = option(0.1, "CW Adam learning rate (Table 5: 0.1).")
    cw_search_steps: int = option(0, "CW binary-search rounds over c (0: the paper's fixed c).")
    n: int | None = option(None, "Samples (default 1000; 100 with --cw-distortion).")
    dataset: str | None = option(None, "Dataset the checkpoint must have been trained on.")
    data_dir: str | Path | None = option(None, DATA_DIR_HELP)
    batch_size: int = option(500, "Images per attack batch.")

    def check(self) -> None:
        tr.check_attack(self.attack)
        self.positive("batch_size")
        if self.dataset:
            dataset_info(self.dataset)
        if self.eps:
            parse_eps_list(self.eps)

    def samples(self) -> int:
        """The evaluation samples: ``n``, by default 1000 (100 with ``cw_distortion``)."""
        if self.n is not None:
            return self.n
        return 100 if self.cw_distortion else 1000

    def sources(self, members: int) -> list[str]:
        """The members attacked (default ``member:1``; ``ensemble`` and ``all`` with
        ``cw_distortion``), resolved for a ``members``-member ensemble."""
        default = ["ensemble", "all"] if self.cw_distortion else ["member:1"]
        return tr.resolve_sources(as_list(self.source) or default, members)


@entry_point(TransferSettings)
def transfer(s: TransferSettings, progress: Reporter | None = None) -> Outcome:
    """Adversarials crafted on ``source`` (``member:k``, ``ensemble`` or ``all`` members)
    scored on every member and on the ensemble (Table 4; schema ``transfer``), or with
    ``cw_distortion`` the adaptive CW-L2 distortion per source and ``kappa`` (Table 5;
    schema ``cw-distortion``). ``n`` defaults to 1000 (100 with ``cw_distortion``).
    Options: :class:`TransferSettings`.

    Returns an :class:`~dmlcli.api.outcome.Outcome`: ``rows``, one per sample, source and
    scored model (or per sample, source and kappa with ``cw_distortion``), and ``results``,
    one stored result per source and eps (or kappa)."""
    ctx = RunContext.of(s, progress)
    r = open_run(s.run, ctx.store)
    if s.dataset and s.dataset != r.dataset:
        raise DmlError(f"{r.name} was trained on {r.dataset}, not {s.dataset}")
    check_decision(s.decision, r.num_members)
    jobs = _jobs(s, r, ctx)
    r.model.to(ctx.device)
    return Outcome.of(run_jobs(ctx.store, jobs, force=ctx.force, progress=ctx.progress))


def _attacks(s: TransferSettings, r: Run) -> list[tuple[str, str, dict[str, Any]]]:
    """(source, attack, checked parameters) of every result: each source at each kappa
    (CW-L2) or at each eps (default: the dataset's transfer eps of the paper)."""
    sources = s.sources(r.num_members)
    out = []
    if s.cw_distortion:
        for kappa in s.kappa or [0.0]:
            params = tr.cw_params(s.cw_c, kappa, s.cw_steps, s.cw_lr, s.targeted,
                                  s.cw_search_steps)  # fmt: skip
            out += [(source, "cw", params) for source in sources]
        return out
    eps = parse_eps_list(s.eps) if s.eps else [parse_eps(dataset_info(r.dataset).transfer_eps)]
    for e in eps:
        params = tr.attack_params(s.attack, e, s.steps, s.restarts, s.loss, s.targeted,
                                  s.step_size)  # fmt: skip
        out += [(source, s.attack, params) for source in sources]
    return out


def _jobs(s: TransferSettings, r: Run, ctx: RunContext) -> list[Job]:
    """The job of every (source, attack, parameters) on ``r``'s evaluation subset (each
    attack checked before the data is read)."""
    attacks = _attacks(s, r)
    images, labels, indices = eval_subset(r, s.samples(), s.seed, s.data_dir)
    return [
        tr.transfer_job(
            r,
            source,
            attack,
            params,
            images,
            labels,
            indices,
            seed=s.seed,
            decision=s.decision,
            batch_size=s.batch_size,
            device=ctx.device,
            cw=s.cw_distortion,
        )  # fmt: skip
        for source, attack, params in attacks
    ]
