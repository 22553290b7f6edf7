"""``dml detect``: adversary detection by member disagreement or uncertainty (A.4, A.5)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from dmlcli import results
from dmlcli.api._common import PathLike, as_list, eval_subset, rows_of
from dmlcli.errors import DmlError
from dmlcli.eval import detect as det
from dmlcli.models.io import Run
from dmlcli.runner import Outcome, Reporter, run_jobs
from dmlcli.runs import open_run
from dmlcli.runtime import parse_shard, resolve_device
from dmlcli.store import Store
from dmlcli.units import parse_eps

DETECT_ATTACKS = ("fgsm", "pgd", "adaptive")
RANDOM_DRAWS = 10  # forward passes per input of a randomized head when --draws is not given


def detect(
    run: str,
    *,
    method: str = "vote",
    attack: Sequence[str] | None = None,
    fit_attack: Sequence[str] | None = None,
    eps: str | float = "0.3",
    n: int = 1000,
    nu: int | None = None,
    draws: int | None = None,
    noise_sigma: float = 0.1,
    steps: int = 40,
    step_size: str | float | None = None,
    adaptive_loss: str = "ce",
    adaptive_targets: int = 3,
    fpr: float = 0.05,
    var_weight: float = 1.0,
    eot: int | None = None,
    head: str | None = None,
    head_sigma: float | None = None,
    head_samples: int | None = None,
    batch_size: int = 500,
    shard: str | None = None,
    data_dir: PathLike | None = None,
    seed: int = 0,
    device: str = "auto",
    force: bool = False,
    artifacts: PathLike | None = None,
    progress: Reporter | None = None,
) -> pd.DataFrame:
    """Adversary detection by member disagreement (``vote``, Eq. 8) or uncertainty and a
    logistic regression (A.5.1), against FGSM, PGD and an adaptive attack that knows the
    detector. The regression is fit once on the fit half (benign + noisy vs the adversarials
    of ``fit_attack``, default fgsm and pgd, crafted even when not in ``attack``), frozen, and
    every attack (the adaptive one included) is scored against it on the eval half. One
    ``detect`` result holds the rows of every attack, one ``detect-roc`` result their ROC
    points; the rows of the ``detect`` result are returned. ``attrs['nu']`` and
    ``attrs['fpr']`` are the operating points the command prints (``results.detect_nu_table``
    and ``results.detector_table``), ``attrs['aucs']`` the AUC per attack."""
    if parse_shard(shard) is not None:
        raise DmlError(
            "dml detect cannot be sharded: its detector is fit on every sample; run it in one "
            "process (unset WORLD_SIZE under torchrun); an interrupted run resumes its batches"
        )
    attacks = det.check_attacks(as_list(attack) or list(DETECT_ATTACKS))
    fit_attacks = det.check_fit_attacks(as_list(fit_attack) or list(det.FIT_ATTACKS))
    results.check_fpr(fpr)
    eps_value = parse_eps(eps)
    step_value = parse_eps(step_size) if step_size is not None else None
    if (head_sigma is not None or head_samples is not None) and head is None:
        raise DmlError("--head-sigma/--head-samples only apply with --head rdml|augdml|dml")
    if n < 1:
        raise DmlError(f"--n must be at least 1; got {n}")
    dev = resolve_device(device)
    store = Store(artifacts)
    r = open_run(run, store)
    if head is not None:
        if not hasattr(r.model, "with_head"):
            raise DmlError(f"--head: {r.name} has no DML head to swap")
        r = Run(r.name, r.model.with_head(head, head_sigma, head_samples), r.checkpoint,
                r.dataset, r.meta, r.path)  # fmt: skip
    k = r.num_members
    nu = det.check_nu(nu if nu is not None else det.default_nu(k), k)
    det.check_method(method, k, r.randomized)
    if draws is not None and draws < 1:
        raise DmlError(f"--draws must be at least 1; got {draws}")
    notes = []
    if method != "uncertainty" and fit_attack is not None:
        notes.append("--fit-attack applies to --method uncertainty only; the vote fits nothing")
    if not r.randomized:
        if draws not in (None, 1):
            notes.append("deterministic head: every draw is the same; --draws 1")
        draws = 1
    draws = draws or RANDOM_DRAWS
    settings = det.DetectSettings(
        method=method, eps=eps_value, draws=draws, noise_sigma=noise_sigma, seed=seed,
        steps=steps, step_size=step_value, adaptive_loss=adaptive_loss,
        adaptive_targets=adaptive_targets, var_weight=var_weight,
        eot=eot if eot is not None else draws, batch_size=batch_size,
        attacks=tuple(attacks), fit_attacks=tuple(fit_attacks),
    )  # fmt: skip
    settings.validate()
    for note in notes:
        (progress or Reporter()).note(note)
    cached = store.result_path("detect", r.name, det.detect_setting(r, settings, n))
    outcomes: list[Outcome] = []
    if force or not cached.is_file():
        images, labels, indices = eval_subset(r, n, seed, data_dir)
        r.model.to(dev)
        x = images[indices].float().div_(255.0)
        data = det.prepare(r.model, x, labels[indices], indices.numpy(), settings)
        job = det.detect_job(r, data, settings, n)
        outcomes = run_jobs(store, [job], force=force, progress=progress)
    else:
        job = det.detect_job(r, det.Benign.empty(), settings, n)
        outcomes = run_jobs(store, [job], progress=progress)
    df = rows_of(outcomes)
    df.attrs.update(nu=nu, fpr=fpr, method=method, eps=eps_value, attacks=attacks)
    df.attrs.update(fit_attacks=fit_attacks if method == "uncertainty" else [])
    df.attrs["aucs"] = dict(outcomes[0].meta.get("aucs", {}))
    return df
