"""``dml detect``: adversary detection by member disagreement or uncertainty (A.4, A.5, A.5.1)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dmlcli.cli.common import (
    ArtifactsOpt,
    DeviceOpt,
    ForceOpt,
    SeedOpt,
    console,
    format_eps,
    open_store,
    parse_eps,
    progress,
    resolve_device,
    summary,
)
from dmlcli.errors import DmlError

DEFAULT_ATTACKS = ["fgsm", "pgd", "adaptive"]
RANDOM_DRAWS = 10  # default --draws for randomized heads


def swap_head(model: Any, head: str, sigma: float | None, samples: int | None) -> Any:
    """The same weights behind another DML head (dml/rdml/augdml share their parameters)."""
    from dmlcli.models.dml import HEADS
    from dmlcli.models.ensemble import Ensemble

    if head not in HEADS or head == "linear":
        raise DmlError(f"--head {head!r}: choose dml, rdml or augdml")
    if model.config["head"] == "linear":
        raise DmlError("--head needs a DML run; this one has linear (baseline) heads")
    if sigma is not None and not sigma >= 0:
        raise DmlError(f"--head-sigma must be >= 0; got {sigma}")
    if samples is not None and samples < 1:
        raise DmlError(f"--head-samples must be at least 1; got {samples}")
    config = dict(model.config, head=head)
    if sigma is not None:
        config["head_sigma"] = sigma
    if samples is not None:
        config["head_samples"] = samples
    swapped = Ensemble(config, mode=model.mode)
    swapped.load_state_dict(model.state_dict())
    swapped.digest, swapped.meta = model.digest, model.meta
    return swapped.eval()


def command(
    checkpoint: Annotated[str, typer.Argument(help="Run name, run folder or .safetensors file.")],
    method: Annotated[
        str, typer.Option(help="vote (Eq. 8, A.4/A.5) or uncertainty (A.5.1).")
    ] = "vote",
    attack: Annotated[
        list[str] | None,
        typer.Option("--attack", help="fgsm, pgd or adaptive; repeat for several (default all)."),
    ] = None,
    eps: Annotated[str, typer.Option(help="L-inf budget in pixels, e.g. 0.3 or 8/255.")] = "0.3",
    n: Annotated[int, typer.Option("--n", help="Evaluation samples (eval_indices).")] = 1000,
    nu: Annotated[
        int | None, typer.Option(help="Threshold for the headline rates (default K//2+1).")
    ] = None,
    draws: Annotated[
        int | None, typer.Option(help=f"Forward passes per input (randomized: {RANDOM_DRAWS}).")
    ] = None,
    noise_sigma: Annotated[float, typer.Option(help="Std of the noisy negatives.")] = 0.1,
    steps: Annotated[int, typer.Option(help="PGD / adaptive iterations.")] = 40,
    step_size: Annotated[str | None, typer.Option(help="PGD step (default 2.5*eps/steps).")] = None,
    adaptive_loss: Annotated[str, typer.Option(help="Adaptive attack loss: ce or margin.")] = "ce",
    adaptive_targets: Annotated[
        int, typer.Option(help="Adaptive: target classes tried per sample, best kept.")
    ] = 3,
    fpr: Annotated[
        float,
        typer.Option(
            help="Uncertainty: also report the regression at this benign FPR (set on the fit half)."
        ),
    ] = 0.05,
    var_weight: Annotated[
        float, typer.Option(help="Adaptive vs uncertainty: weight of the variance match.")
    ] = 1.0,
    eot: Annotated[
        int | None, typer.Option(help="Adaptive: head draws per step (default --draws).")
    ] = None,
    head: Annotated[
        str | None, typer.Option(help="Swap the DML head at detection time: dml, rdml, augdml.")
    ] = None,
    head_sigma: Annotated[float | None, typer.Option(help="Noise std of the swapped head.")] = None,
    head_samples: Annotated[
        int | None, typer.Option(help="Monte-Carlo draws inside the swapped head.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Attack / inference batch size.")] = 500,
    shard: Annotated[
        str | None, typer.Option(help="Not supported: the detector is fit on every sample.")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Folder with the dataset's files.")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Detect adversarials by disagreement (threshold-nu vote) or uncertainty; ROC/AUC.

    Every crafted batch of adversarials is kept as a part file, so after Ctrl-C or a kill
    the same command crafts only the missing batches. '--shard' is refused (also under
    torchrun): the logistic regression and the ROC need every sample, so detection runs
    in one process.
    """
    from dmlcli.data import eval_indices, load_dataset, to_float
    from dmlcli.eval import detect as det
    from dmlcli.eval.parts import exit_on_interrupt, parse_shard
    from dmlcli.store import load_ensemble, read_parquet

    if parse_shard(shard) is not None:
        raise DmlError(
            "dml detect cannot be sharded: its detector is fit on every sample; run it in one "
            "process (unset WORLD_SIZE under torchrun); an interrupted run resumes its batches"
        )

    attacks = det.check_attacks(attack or DEFAULT_ATTACKS)
    det.check_fpr(fpr)
    eps_value = parse_eps(eps)
    step_value = parse_eps(step_size) if step_size is not None else None
    if (head_sigma is not None or head_samples is not None) and head is None:
        raise DmlError("--head-sigma/--head-samples only apply with --head rdml|augdml|dml")
    dev = resolve_device(device)
    store = open_store(artifacts)
    ckpt = store.resolve_checkpoint(checkpoint)
    run = store.run_name_of(ckpt)
    model = load_ensemble(ckpt)
    if head is not None:
        model = swap_head(model, head, head_sigma, head_samples)
    k = model.num_members
    nu = det.check_nu(nu if nu is not None else det.default_nu(k), k)
    det.check_method(method, k, model.randomized)
    if draws is not None and draws < 1:
        raise DmlError(f"--draws must be at least 1; got {draws}")
    if not model.randomized:
        if draws not in (None, 1):
            console.print("[yellow]deterministic head: every draw is the same; --draws 1[/yellow]")
        draws = 1
    draws = draws or RANDOM_DRAWS
    settings = det.DetectSettings(
        method=method,
        eps=eps_value,
        draws=draws,
        noise_sigma=noise_sigma,
        seed=seed,
        steps=steps,
        step_size=step_value,
        adaptive_loss=adaptive_loss,
        adaptive_targets=adaptive_targets,
        var_weight=var_weight,
        eot=eot if eot is not None else draws,
        batch_size=batch_size,
    )
    settings.validate()
    cfg = model.config
    if n < 1:
        raise DmlError(f"--n must be at least 1; got {n}")
    common = {
        "n": n,
        "checkpoint": model.digest,
        "head": cfg["head"],
        "head_sigma": cfg.get("head_sigma") if model.randomized else None,
        "head_samples": cfg.get("head_samples") if model.randomized else None,
    }
    settings_of = {a: {**settings.setting(a), **common} for a in attacks}
    todo = [
        a
        for a in attacks
        if force
        or not store.result_path("detect", run, settings_of[a]).is_file()
        or not store.result_path("detect-roc", run, settings_of[a]).is_file()
    ]
    for a in attacks:
        if a not in todo:
            path = store.result_path("detect", run, settings_of[a])
            console.print(
                f"[yellow]{a}: {path} exists[/yellow]; nothing to do (--force recomputes)"
            )

    frames: dict[str, Any] = {}
    aucs: dict[str, float] = {}
    files: list[Path] = []
    if todo:
        x_all, y_all = load_dataset(cfg["dataset"], "test", data_dir, image_size=cfg["image_size"])
        idx = eval_indices(len(y_all), n, seed)
        model = model.to(dev)
        x = to_float(x_all[idx])
        y = y_all[idx]
        data = det.prepare(model, x, y, idx.numpy(), settings)
        console.print(
            f"{run}: {len(data.y)} of {n} samples correctly classified; "
            f"K={k}, head {cfg['head']}, draws {draws}, eps {format_eps(eps_value)}"
        )
        with exit_on_interrupt(), progress() as bar:
            for a in todo:
                task = bar.add_task(f"{method}/{a}", total=len(data.y), info="")
                parts = _parts(store, run, settings_of[a], data, batch_size, a, force)
                adv = _craft(parts, model, a, settings, data, bar, task)
                df, curve, detector = det.detect_attack(model, data, a, settings, adv=adv)
                extra = {
                    "auc": curve.auc,
                    "members": k,
                    "dataset": cfg["dataset"],
                    "n_correct": int(len(data.y)),
                }
                if detector is not None:
                    extra["lr_fit_samples"] = sorted(
                        {int(s) for s in df["sample"].to_numpy()[detector.fit_rows]}
                    )
                roc_df = det.roc_frame(method, a, eps_value, curve)
                files.append(store.write_result("detect", run, settings_of[a], df, extra))
                files.append(store.write_result("detect-roc", run, settings_of[a], roc_df, extra))
                frames[a], aucs[a] = df, curve.auc
                parts.remove()
                bar.update(task, info=f"AUC {curve.auc:.3f}")
    for a in attacks:
        if a not in frames:
            frames[a], meta = read_parquet(store.result_path("detect", run, settings_of[a]))
            aucs[a] = float(meta["auc"])
    _print_tables(run, method, eps_value, nu, attacks, frames, aucs, files, fpr)


def _parts(store, run, setting, data, batch_size, attack, force) -> Any:
    """The part folder of one attack's adversarials (rows: sample, x_adv)."""
    from dmlcli.eval.parts import Parts

    parts = Parts.for_result(
        store,
        "detect",
        run,
        setting,
        data.samples.tolist(),
        batch_size,
        columns=["x_adv"],
        label=f"detect {attack} adversarials",
    )
    parts.prepare(force)
    return parts


def _craft(parts, model, attack, settings, data, bar, task) -> Any:
    """Adversarials ``[N, C, H, W]`` of every correct sample, batch by batch, kept as parts."""
    import numpy as np
    import pandas as pd
    import torch

    from dmlcli.eval import detect as det
    from dmlcli.eval.parts import run_batches

    batches: dict[int, torch.Tensor] = {}

    def compute(b: int, start: int, stop: int) -> tuple[dict, dict]:
        x, y = data.x[start:stop], data.y[start:stop]
        adv = det.craft_batch(model, attack, settings, x, y, start)
        rows = {"sample": data.samples[start:stop], "x_adv": list(adv.flatten(1).numpy())}
        return {"part": pd.DataFrame(rows)}, {}

    def on_batch(b: int, frames: dict) -> None:
        flat = np.stack(frames["part"]["x_adv"].to_numpy()).astype(np.float32)
        batches[b] = torch.from_numpy(flat).view(-1, *data.x.shape[1:])
        bar.update(task, advance=len(flat))

    run_batches(parts, compute, on_batch=on_batch)
    return torch.cat([batches[b] for b in sorted(batches)])


def _print_tables(
    run: str,
    method: str,
    eps: float,
    nu: int,
    attacks: list[str],
    frames: dict[str, Any],
    aucs: dict[str, float],
    files: list[Path],
    fpr: float = 0.05,
) -> None:
    from dmlcli.eval import detect as det

    tables = {a: det.nu_table(frames[a]).set_index("nu") for a in attacks}
    cols = ["nu", "attack", "benign acc %", "FPR %", "FPR noisy %", "det %", "undet+wrong %"]
    rows = []
    for v in tables[attacks[0]].index:
        for a in attacks:
            t = tables[a].loc[v]
            rows.append(
                [
                    v if v != nu else f"{v} *",
                    a,
                    t["benign_acc"],
                    t["fpr"],
                    t["fpr_noisy"],
                    t["detected"],
                    t["undetected_wrong"],
                ]
            )
        if len(attacks) > 1:  # per sample, whichever attack works
            flag = f"flagged_nu_{v}"
            worst = det.worst_case_undetected_wrong([frames[a] for a in attacks], flag)
            rows.append([v if v != nu else f"{v} *", "worst case", "", "", "", "", worst])
    summary(f"{run}: threshold-nu vote detector (Eq. 8), eps {format_eps(eps)}", cols, rows)

    # vote: the dissent score at the headline nu; uncertainty: the regression at p >= 0.5 and
    # at a benign FPR set on the fit half (its nu rates are in the table above).
    at = f"@{100 * fpr:g}%"
    if method == "uncertainty":
        head = ["attack", "AUC", "LR FPR %", "LR det %", "LR u+w %"]
        head += [f"FPR {at}", f"det {at}", f"u+w {at}"]
    else:
        head = ["attack", "AUC", f"det % nu={nu}", f"u+w % nu={nu}", "adv vote acc %"]
    rows = []
    for a in attacks:
        row = [a, f"{aucs[a]:.4f}"]
        if method == "uncertainty":
            for lr in (det.lr_rates(frames[a]), det.lr_rates_at_fpr(frames[a], fpr)):
                row += [lr["fpr"], lr["detected"], lr["undetected_wrong"]]
        else:
            r = tables[a].loc[nu]
            row += [r["detected"], r["undetected_wrong"], r["adv_vote_acc"]]
        rows.append(row)
    if len(attacks) > 1:  # per sample, whichever attack works
        if method == "uncertainty":
            evals = [f[f["half"] == "eval"] for f in frames.values()]
            at_fpr = [det.flag_at_fpr(f, fpr) for f in frames.values()]
            row = ["worst case", "", "", "", det.worst_case_undetected_wrong(evals, "flagged_lr")]
            row += ["", "", det.worst_case_undetected_wrong(at_fpr, "flagged_fpr")]
        else:
            worst = det.worst_case_undetected_wrong(list(frames.values()), f"flagged_nu_{nu}")
            row = ["worst case", "", "", worst, ""]
        rows.append(row)
    what = "dissent (K - top votes)" if method == "vote" else "uncertainty + LR, eval half"
    title = (
        f"{run}: detection by {what}, eps {format_eps(eps)} (u+w: undetected and wrong; "
        "worst case: per sample, any attack)"
    )
    summary(title, head, rows, files)
