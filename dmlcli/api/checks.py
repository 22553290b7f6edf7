"""``dml check``: sanity checks for gradient masking and failed attacks."""

from __future__ import annotations

import pandas as pd

from dmlcli.api._common import PathLike, check_batch, check_decision, eval_subset, rows_of
from dmlcli.data import dataset_info
from dmlcli.errors import DmlError
from dmlcli.runner import Reporter, run_jobs
from dmlcli.runs import open_run
from dmlcli.runtime import resolve_device
from dmlcli.store import Store
from dmlcli.units import parse_eps


def check(
    run: str,
    *,
    baseline: str | None = None,
    surrogate: str | None = None,
    eps: str | float | None = None,
    large_eps: str | float | None = None,
    n: int = 200,
    decision: str = "vote",
    steps: int = 20,
    restarts: int = 1,
    queries: int = 1000,
    eot: int = 10,
    batch_size: int = 500,
    data_dir: PathLike | None = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    artifacts: PathLike | None = None,
    progress: Reporter | None = None,
) -> pd.DataFrame:
    """Sanity checks for gradient masking and failed attacks (Carlini et al. 2019; AutoAttack's
    checks; Pintor et al. 2022) on ``n`` samples at ``eps`` (default: the dataset's first
    paper eps): iterative vs single-step, more budget, silent success and incomplete
    optimization (Pintor et al.'s indicators, from the loss trace of a PGD kept by loss), a
    large eps (default 4x the largest paper eps, at most 0.5) and the eps sweep, RayS on the
    decision (``queries`` per sample; and a transfer from ``surrogate``) vs the white-box
    attacks per sample, zero input gradients per surface, randomness and, with
    ``baseline``, that the attacks break an undefended model. One ``check`` result: one row
    per check (``status`` pass/warn/fail, ``value``, ``threshold``, ``detail``)."""
    from dmlcli.eval import check as chk

    if n < 1:
        raise DmlError(f"--n must be at least 1; got {n}")
    check_batch(batch_size)
    eps_value = parse_eps(eps) if eps is not None else None
    large_value = parse_eps(large_eps) if large_eps is not None else None
    dev = resolve_device(device)
    store = Store(artifacts)
    r = open_run(run, store)
    info = dataset_info(r.dataset)
    eps_value = eps_value if eps_value is not None else parse_eps(info.paper_eps[0])
    if large_value is None:
        large_value = chk.default_large_eps(info, eps_value)
    settings = chk.CheckSettings(
        eps=eps_value, large_eps=large_value, decision=decision, steps=steps,
        restarts=restarts, queries=queries, eot=eot, batch_size=batch_size,
    ).validate()  # fmt: skip
    check_decision(decision, r.num_members)
    others = {}
    for flag, ref in (("--baseline", baseline), ("--surrogate", surrogate)):
        other = open_run(ref, store) if ref else None
        if other is not None and other.dataset != r.dataset:
            raise DmlError(f"{flag} {other.name} was trained on {other.dataset}, not {r.dataset}")
        others[flag] = other
    images, labels, indices = eval_subset(r, n, seed, data_dir)
    job = chk.check_job(
        r, images, labels, indices, settings, seed=seed, baseline=others["--baseline"],
        surrogate=others["--surrogate"], device=dev,
    )  # fmt: skip
    for m in (r, *others.values()):
        if m is not None:
            m.model.to(dev)
    df = rows_of(run_jobs(store, [job], force=force, progress=progress))
    df.attrs.update(eps=settings.eps, large_eps=settings.large_eps, n=n, seed=seed)
    return df
