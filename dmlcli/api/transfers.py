"""``dml transfer``: adversarials crafted on some members scored on the others (Table 4) and
the adaptive CW-L2 distortions (Table 5)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from dmlcli.api._common import PathLike, as_list, check_batch, check_decision, eval_subset, rows_of
from dmlcli.data import dataset_info
from dmlcli.errors import DmlError
from dmlcli.eval import transfer as tr
from dmlcli.runner import Reporter, run_jobs
from dmlcli.runs import open_run
from dmlcli.runtime import resolve_device
from dmlcli.store import Store
from dmlcli.units import parse_eps, parse_eps_list


def transfer(
    run: str,
    *,
    source: Sequence[str] | None = None,
    attack: str = "pgd",
    eps: Sequence[str | float] | None = None,
    steps: int = 10,
    step_size: float | None = None,
    restarts: int = 1,
    loss: str = "ce",
    targeted: bool = False,
    decision: str = "vote",
    cw_distortion: bool = False,
    kappa: Sequence[float] | None = None,
    cw_c: float = 1.0,
    cw_steps: int = 1000,
    cw_lr: float = 0.1,
    cw_search_steps: int = 0,
    n: int | None = None,
    dataset: str | None = None,
    data_dir: PathLike | None = None,
    batch_size: int = 500,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    artifacts: PathLike | None = None,
    progress: Reporter | None = None,
) -> pd.DataFrame:
    """Adversarials crafted on ``source`` (``member:k``, ``ensemble`` or ``all`` members)
    scored on every member and on the ensemble (Table 4; schema ``transfer``), or with
    ``cw_distortion`` the adaptive CW-L2 distortion per source and ``kappa`` (Table 5;
    schema ``cw-distortion``). ``n`` defaults to 1000 (100 with ``cw_distortion``)."""
    tr.check_attack(attack)
    check_batch(batch_size)
    if dataset:
        dataset_info(dataset)
    eps_given = parse_eps_list(eps) if eps else None
    dev = resolve_device(device)
    store = Store(artifacts)
    r = open_run(run, store)
    if dataset and dataset != r.dataset:
        raise DmlError(f"{r.name} was trained on {r.dataset}, not {dataset}")
    check_decision(decision, r.num_members)
    sources = tr.resolve_sources(
        as_list(source) or (["ensemble", "all"] if cw_distortion else ["member:1"]), r.num_members
    )
    eps_values = eps_given or [parse_eps(dataset_info(r.dataset).transfer_eps)]
    n = n if n is not None else (100 if cw_distortion else 1000)
    images, labels, indices = eval_subset(r, n, seed, data_dir)
    jobs = []
    if cw_distortion:
        for kap in list(kappa) if kappa else [0.0]:
            params = tr.cw_params(cw_c, kap, cw_steps, cw_lr, targeted, cw_search_steps)
            jobs += [(s, "cw", params) for s in sources]
    else:
        for e in eps_values:
            params = tr.attack_params(attack, e, steps, restarts, loss, targeted, step_size)
            jobs += [(s, attack, params) for s in sources]
    built = [
        tr.transfer_job(
            r,
            s,
            a,
            p,
            images,
            labels,
            indices,
            seed=seed,
            decision=decision,
            batch_size=batch_size,
            device=dev,
            cw=cw_distortion,
        )  # fmt: skip
        for s, a, p in jobs
    ]
    r.model.to(dev)
    return rows_of(run_jobs(store, built, force=force, progress=progress))
