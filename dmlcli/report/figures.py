"""The paper's figures as PNG files (matplotlib, Agg backend), drawn from stored results.

Each builder takes the collection, a dataset and the output folder and returns a
:class:`Figure` (the PNG it wrote) or a :class:`~dmlcli.report.tables.Skip` naming what data
is missing. Files are named ``<dataset>-<key>.png`` and written atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmlcli.attacks import attack_entry
from dmlcli.files import atomic_write_bytes
from dmlcli.report.collect import Collection
from dmlcli.report.paper import split_label
from dmlcli.report.tables import Skip, attack_cells, attack_title, certified_curve, worst_cells
from dmlcli.results import REPORT_RADII
from dmlcli.units import eps_text

DPI = 110


@dataclass
class Figure:
    key: str
    title: str
    caption: str
    path: Path


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 10,
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "legend.fontsize": 8,
            "figure.dpi": DPI,
            "axes.grid": True,
            "grid.alpha": 0.3,
        }
    )
    return plt


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _colors(n: int) -> list:
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


# -- figures -------------------------------------------------------------------------------
def training_curves(col: Collection, dataset: str, out: Path) -> Figure | Skip:
    """Fig. 12, 13: test accuracy (vote, and robust if tracked) and loss per epoch."""
    key, title = "training", "Training curves (paper Fig. 12, 13)"
    runs = [r for r in col.runs_of(dataset) if r.history is not None and len(r.history)]
    if not runs:
        return Skip(key, title, "no training history")
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for color, r in zip(_colors(len(runs)), runs, strict=True):
        h = r.history
        if "test_vote" in h:
            ax1.plot(
                h["epoch"],
                h["test_vote"],
                "-o",
                ms=3,
                color=color,
                label=f"{r.label}: benign (vote)",
            )
        if "test_robust_vote" in h:
            eps = h["eval_eps"].iloc[-1] if "eval_eps" in h else None
            tag = f" eps={eps_text(float(eps))}" if eps is not None else ""
            ax1.plot(
                h["epoch"],
                h["test_robust_vote"],
                "--s",
                ms=3,
                color=color,
                label=f"{r.label}: FGSM robust{tag}",
            )
        if "train_acc" in h:
            ax1.plot(
                h["epoch"], h["train_acc"], ":", color=color, alpha=0.7, label=f"{r.label}: train"
            )
        if "train_total" in h:
            ax2.plot(
                h["epoch"],
                h["train_total"],
                "-o",
                ms=3,
                color=color,
                label=f"{r.label}: total (Eq. 3)",
            )
        if "train_ce" in h and r.head != "linear":
            ax2.plot(h["epoch"], h["train_ce"], "--", color=color, label=f"{r.label}: sum of CE")
    ax1.set(xlabel="epoch", ylabel="accuracy (%)", title="test accuracy")
    ax2.set(xlabel="epoch", ylabel="training loss", title="training loss")
    ax2.set_yscale("log")
    ax1.legend(loc="lower right")
    ax2.legend(loc="upper right")
    path = _save(fig, out / f"{dataset}-{key}.png")
    caption = "Per-epoch test accuracy (majority vote) and training loss of every run."
    return Figure(key, title, caption, path)


def distortion_accuracy(col: Collection, dataset: str, out: Path) -> Figure | Skip:
    """Fig. 18: robust accuracy vs eps per attack (paper protocol), clean accuracy at eps 0."""
    key, title = "distortion", "Distortion-accuracy curves (paper Fig. 18)"
    cells = [
        c
        for c in attack_cells(col, dataset)
        if c.eps is not None
        and c.decision == "vote"
        and not c.targeted
        and not c.surrogate
        and c.surface == "sum"
        and c.label != "worst-case"
        and c.robust is not None  # a cascade's cumulative accuracy is no curve of its own
    ]
    if not cells:
        return Skip(key, title, "no L-inf attack results")
    worst = [w for w in worst_cells(col, dataset) if w.decision == "vote"]
    runs = [r.name for r in col.runs_of(dataset) if any(c.result.run == r.name for c in cells)]
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        mine = [c for c in cells if c.result.run == run]
        labels = sorted({c.label for c in mine}, key=lambda s: split_label(s))
        clean = [c.clean for c in mine]
        ax.plot([0.0], [sum(clean) / len(clean)], "kx", ms=7, label="clean")
        for color, label in zip(_colors(len(labels)), labels, strict=True):
            pts = sorted((c.eps, c.robust, c.clean) for c in mine if c.label == label)
            if len(pts) == 1:  # one budget: a point, not a curve nobody measured
                name = attack_title(label, None)
                ax.plot([pts[0][0]], [pts[0][1]], "o", ms=5, color=color, label=name)
                continue
            xs = [0.0] + [p[0] for p in pts]
            ys = [pts[0][2]] + [p[1] for p in pts]
            ax.plot(xs, ys, "-o", ms=4, color=color, label=attack_title(label, None))
        ns = {c.n for c in mine}
        pts = sorted((w.eps, w.robust, w.clean) for w in worst if w.result.run == run and w.n in ns)
        if pts:
            xs = [0.0] + [p[0] for p in pts]
            ys = [pts[0][2]] + [p[1] for p in pts]
            ax.plot(xs, ys, "k--s", ms=5, lw=2, label="worst case (all stored attacks)")
        ax.set(
            xlabel="eps (L-inf, pixels)",
            ylabel="robust accuracy (%)",
            title=col.label(run),
            ylim=(-2, 102),
        )
        ax.legend(fontsize=7)
    path = _save(fig, out / f"{dataset}-{key}.png")
    caption = (
        "Robust accuracy (crafted on the summed logits, majority vote) against the "
        "L-inf budget; eps = 0 (x) is clean accuracy on the same samples. Attacks run at a "
        "single budget are single points. The dashed black curve is the stored per-sample "
        "worst case over every attack of the checkpoint (adaptive ones included)."
    )
    return Figure(key, title, caption, path)


def clever_histograms(col: Collection, dataset: str, out: Path) -> Figure | Skip:
    """Fig. 1, 7, 8: distribution of non-zero CLEVER scores (``score_label``: 0 where the
    prediction is wrong), baseline vs DML."""
    key, title = "clever", "CLEVER score distribution (paper Fig. 1, 7, 8)"
    results = [r for r in col.of("clever", dataset) if "score_label" in r.df.columns]
    results = [r for r in results if str(r.setting.get("target", "sum")) == "sum"] or results
    if not results:
        return Skip(key, title, "no CLEVER results")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    radius = float(results[0].setting.get("radius", 2.0) or 2.0)
    bins = np.linspace(0, radius, 31)
    for color, r in zip(_colors(len(results)), results, strict=True):
        s = r.df["score_label"].to_numpy(dtype=float)
        nz = s[s > 0]
        ax.hist(
            nz,
            bins=bins,
            alpha=0.55,
            color=color,
            label=f"{col.label(r.run)}: {len(nz)}/{len(s)} non-zero, median {np.median(s):.3f}",
        )
    ax.axvline(0.2, color="k", ls="--", lw=1, label="threshold 0.2 (Fig. 7, 8)")
    ax.set(
        xlabel=f"CLEVER score (L{results[0].setting.get('norm', '2')}, R={radius:g})",
        ylabel="samples",
        title="non-zero CLEVER scores of the summed logits",
    )
    ax.legend()
    path = _save(fig, out / f"{dataset}-{key}.png")
    caption = (
        "Histogram of the non-zero CLEVER scores per model: score_label, the score where the "
        "prediction is right (a wrong prediction scores 0 and is not counted); the legend's "
        "median is over all samples."
    )
    return Figure(key, title, caption, path)


def gradient_cosines(col: Collection, dataset: str, out: Path) -> Figure | Skip:
    """Fig. 9-11: cosine of members' input gradients (and of their signs) per run."""
    key, title = "gradients", "Cosine similarity of members' input gradients (paper Fig. 9-11)"
    results = [r for r in col.of("gradients", dataset) if "cosine" in r.df.columns]
    if not results:
        return Skip(key, title, "no gradient results (dml geometry --gradients)")
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(-1, 1, 41)
    for color, r in zip(_colors(len(results)), results, strict=True):
        gamma = col.runs[r.run].config.gamma if r.run in col.runs else None
        tag = f"{col.label(r.run)}" + (f" (gamma={gamma:g})" if gamma is not None else "")
        for ax, column in zip(axes, ("cosine", "sign_cosine"), strict=True):
            v = r.df[column].to_numpy(dtype=float)
            ax.hist(
                v,
                bins=bins,
                alpha=0.5,
                color=color,
                density=True,
                label=f"{tag}: mean {np.nanmean(v):.3f}",
            )
    axes[0].set(
        xlabel="cosine of input gradients", ylabel="density", title="gradients of member pairs"
    )
    axes[1].set(xlabel="cosine of gradient signs", ylabel="density", title="signs (what PGD uses)")
    for ax in axes:
        ax.legend()
    path = _save(fig, out / f"{dataset}-{key}.png")
    caption = "Pairwise cosine similarity of members' loss gradients w.r.t. the input."
    return Figure(key, title, caption, path)


def loss_surfaces(col: Collection, dataset: str, out: Path) -> Figure | Skip:
    """Fig. 2, 17: each member's loss around one sample along gradient and noise directions."""
    key, title = "surfaces", "Loss surfaces of the members around a sample (paper Fig. 2, 17)"
    results = [r for r in col.of("surface", dataset) if {"r", "theta", "loss"} <= set(r.df.columns)]
    if not results:
        return Skip(key, title, "no loss-surface results (dml geometry --surface)")
    plt = _plt()
    rows = []  # one row of panels per run: its members and the summed logits
    for r in results[:3]:
        df = r.df
        sample = df["idx"].iloc[0] if "idx" in df else None
        d = df[df["idx"] == sample] if sample is not None else df
        models = list(dict.fromkeys(d["model"])) if "model" in d else ["model"]
        rows.append([(r, sample, m, d[d["model"] == m] if "model" in d else d) for m in models])
    ncol = min(max(len(row) for row in rows), 6)
    fig = plt.figure(figsize=(3.1 * ncol, 3.0 * len(rows)))
    for i, row in enumerate(rows):
        for j, (r, sample, model, d) in enumerate(row[:ncol]):
            ax = fig.add_subplot(len(rows), ncol, i * ncol + j + 1, projection="3d")
            grid = d.pivot_table(index="theta", columns="r", values="loss")
            rr, tt = np.meshgrid(grid.columns.to_numpy(float), grid.index.to_numpy(float))
            ax.plot_surface(rr, tt, grid.to_numpy(float), cmap="viridis", linewidth=0)
            ax.set_title(f"{col.label(r.run)}: {model}\n(test #{sample})", fontsize=9)
            ax.set_xlabel("r (gradient)", fontsize=8)
            ax.set_ylabel("theta (noise)", fontsize=8)
            ax.set_zlabel("CE loss", fontsize=8)
            ax.tick_params(labelsize=7)
    path = _save(fig, out / f"{dataset}-{key}.png")
    caption = (
        "Cross-entropy of each member at x + r * d_grad + theta * P (d_grad: the "
        "ensemble's gradient direction, P ~ N(0, sigma^2)); diverse shapes mean the "
        "gradient of one member is a poor guide for the others."
    )
    return Figure(key, title, caption, path)


def _fit_caption(results: list) -> str:
    """Which attacks the uncertainty detectors of ``results`` were fit on (one sentence)."""
    fits = sorted(
        {", ".join(r.setting["fit_attacks"]) for r in results if r.setting.get("fit_attacks")}
    )
    if not fits:
        return ""
    return (
        f" The uncertainty regression is fit once on the fit half (benign + noisy vs "
        f"{' / '.join(fits)} adversarials) and frozen; every attack, the adaptive one "
        "included, is scored against that same detector on the eval half."
    )


def roc_curves(col: Collection, dataset: str, out: Path) -> Figure | Skip:
    """Fig. 3, 4, 6: ROC curves of the detectors with their AUC, one curve per attack."""
    key, title = "roc", "ROC curves of adversary detection (paper Fig. 3, 4, 6)"
    results = [r for r in col.of("detect-roc", dataset) if {"fpr", "tpr"} <= set(r.df.columns)]
    if not results:
        return Skip(key, title, "no detection ROC results (dml detect)")
    groups: dict[tuple[str, str], list] = {}
    for r in results:
        method = str(r.setting.get("method", r.df["method"].iloc[0] if "method" in r.df else "?"))
        groups.setdefault((r.run, method), []).append(r)
    plt = _plt()
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 4.2), squeeze=False)
    for ax, ((run, method), res) in zip(axes[0], groups.items(), strict=True):
        curves = []
        for r in res:
            df = r.df
            eps = float(r.setting.get("eps", df["eps"].iloc[0] if "eps" in df else math.nan))
            attacks = list(dict.fromkeys(df["attack"])) if "attack" in df else ["?"]
            for attack in attacks:
                part = df[df["attack"] == attack] if "attack" in df else df
                auc = r.meta.get("aucs", {}).get(attack)
                if auc is None:
                    auc = float(part["auc"].iloc[0]) if "auc" in part else math.nan
                curves.append((f"{attack} eps={eps_text(eps)}: AUC {auc:.3f}", part))
        for color, (label, part) in zip(_colors(len(curves)), curves, strict=True):
            ax.plot(part["fpr"], part["tpr"], color=color, label=label)
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set(
            xlabel="false positive rate",
            ylabel="true positive rate",
            title=f"{col.label(run)}\n{method} detector",
            xlim=(0, 1),
            ylim=(0, 1.01),
        )
        ax.legend(loc="lower right")
    path = _save(fig, out / f"{dataset}-{key}.png")
    caption = (
        "Detection of adversarials among correctly classified benign (and noisy) "
        "samples: vote = number of dissenting members (unanimity framework), "
        "uncertainty = logistic regression on the members' variance." + _fit_caption(results)
    )
    return Figure(key, title, caption, path)


def uncertainty_distributions(col: Collection, dataset: str, out: Path) -> Figure | Skip:
    """Fig. 5: uncertainty of benign, noisy and each attack's adversarial inputs."""
    key, title = "uncertainty", "Uncertainty distribution (paper Fig. 5)"
    results = [r for r in col.of("detect", dataset) if {"uncertainty", "kind"} <= set(r.df.columns)]
    results = [r for r in results if r.df["uncertainty"].abs().sum() > 0]
    if not results:
        return Skip(key, title, "no detection rows with uncertainty (dml detect)")
    results = results[:6]
    plt = _plt()
    fig, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        df = r.df
        u = df["uncertainty"].to_numpy(dtype=float)
        lo, hi = np.nanmin(u), np.nanmax(u)
        bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 31)
        adv = df["kind"] == "adversarial"
        attacks = list(dict.fromkeys(df.loc[adv, "attack"])) if "attack" in df else []
        groups = [(kind, df["kind"] == kind) for kind in ("benign", "noisy")]
        groups += [(f"{a} adversarial", adv & (df["attack"] == a)) for a in attacks]
        for color, (name, mask) in zip(_colors(len(groups)), groups, strict=True):
            v = df.loc[mask, "uncertainty"].to_numpy(dtype=float)
            if len(v):
                ax.hist(v, bins=bins, alpha=0.5, color=color, label=f"{name} (n={len(v)})")
        method = str(r.setting.get("method", "?"))
        eps = float(r.setting.get("eps", math.nan))
        ax.set(
            xlabel="uncertainty (variance across members and draws)",
            ylabel="samples",
            title=f"{col.label(r.run)}: {method}, eps={eps_text(eps)}",
        )
        ax.legend()
    path = _save(fig, out / f"{dataset}-{key}.png")
    return Figure(
        key,
        title,
        "Mean over classes of the softmax variance across members "
        "(and head draws for R-DML), per input kind and attack." + _fit_caption(results),
        path,
    )


def certified_accuracy(col: Collection, dataset: str, out: Path) -> Figure | Skip:
    """Fig. 14-16: certified accuracy vs L2 radius of the smoothed ensemble."""
    key, title = "certify", "Certified accuracy vs radius (paper Fig. 14-16)"
    results = [r for r in col.of("certify", dataset) if {"radius", "correct"} <= set(r.df.columns)]
    if not results:
        return Skip(key, title, "no certification results (dml certify)")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for color, r in zip(_colors(len(results)), results, strict=True):
        rad = r.df["radius"].to_numpy(dtype=float)
        top = max(float(np.nanmax(np.where(np.isfinite(rad), rad, 0))), REPORT_RADII[-1])
        grid = np.linspace(0, top * 1.05, 200)
        s = r.setting
        head = s.get("head", "?")
        extra = f", sigma_R={s.get('head_sigma')}" if s.get("head_sigma") else ""
        ax.plot(
            grid,
            certified_curve(r.df, grid),
            color=color,
            label=f"{col.label(r.run)} ({head}{extra}), sigma_c={s.get('sigma', '?')}",
        )
    ax.set(
        xlabel="L2 radius",
        ylabel="certified accuracy (%)",
        ylim=(-2, 102),
        title="randomized smoothing (Cohen et al. 2019)",
    )
    ax.legend()
    path = _save(fig, out / f"{dataset}-{key}.png")
    return Figure(key, title, "Share of samples certified correct at L2 radius >= r.", path)


def transfer_heatmap(col: Collection, dataset: str, out: Path) -> Figure | Skip:
    """Accuracy of each scored model under adversarials crafted on each source."""
    key, title = "transfer", "Transfer heat map: crafted on (rows) vs scored on (columns)"
    results = [r for r in col.of("transfer", dataset) if {"source", "scored"} <= set(r.df.columns)]
    if not results:
        return Skip(key, title, "no transfer results (dml transfer)")
    groups: dict[tuple, list[pd.DataFrame]] = {}
    for r in results:
        df = r.df
        eps = float(df["eps"].iloc[0]) if "eps" in df else math.nan
        targeted = bool(df["targeted"].iloc[0]) if "targeted" in df else False
        groups.setdefault((r.run, eps, targeted), []).append(df)
    items = list(groups.items())[:4]
    plt = _plt()
    height = 1.6 + 0.45 * max(len(pd.concat(f)["source"].unique()) for _, f in items)
    fig, axes = plt.subplots(1, len(items), figsize=(5.4 * len(items), height), squeeze=False)
    for ax, ((run, eps, targeted), frames) in zip(axes[0], items, strict=True):
        df = pd.concat(frames)
        m = 100.0 * df.pivot_table(
            index="source", columns="scored", values="adv_correct", aggfunc="mean"
        )
        order = [
            c
            for c in ["ensemble", *sorted(c for c in m.columns if c != "ensemble")]
            if c in m.columns
        ]
        rows = [c for c in order if c in m.index] + [i for i in m.index if i not in order]
        m = m.loc[rows, order]
        im = ax.imshow(m.to_numpy(), vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(order)), [c.replace("member:", "M") for c in order])
        ax.set_yticks(range(len(rows)), [c.replace("member:", "M") for c in rows])
        for i in range(len(rows)):
            for j in range(len(order)):
                v = m.iloc[i, j]
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8)
        ax.grid(False)
        mode = "targeted" if targeted else "untargeted"
        ax.set(
            xlabel="scored on",
            ylabel="crafted on",
            title=f"{col.label(run)}: {mode}, eps={eps_text(eps)}",
        )
        fig.colorbar(im, ax=ax, fraction=0.046, label="accuracy (%)")
    path = _save(fig, out / f"{dataset}-{key}.png")
    caption = (
        "Accuracy (%) of each member (M1..MK) and of the ensemble vote on adversarials "
        "crafted on one source; high off-diagonal values mean low transfer."
    )
    return Figure(key, title, caption, path)


def adversarial_grid(col: Collection, dataset: str, out: Path) -> Figure | Skip:
    """Fig. 19-21: clean images (first row) and adversarials of several attacks and models."""
    key, title = "examples", "Adversarial examples (paper Fig. 19-21)"
    results = [r for r in col.of("adv-examples", dataset) if {"x", "x_adv"} <= set(r.df.columns)]
    if not results:
        return Skip(key, title, "no stored adversarial examples (dml attack writes them)")
    cells = {c.result.path.name: c for c in attack_cells(col, dataset)}

    def rank(r: Any) -> tuple:
        s = r.setting
        label = str(s.get("attack", "?"))
        eps = (s.get("params") or {}).get("eps")
        return (
            col.runs_of(dataset).index(col.runs[r.run]) if r.run in col.runs else 9,
            attack_entry(split_label(label)[0]).example_order,
            -(eps or 0),
        )

    chosen = []
    seen = set()
    for r in sorted(results, key=rank):
        s = r.setting
        if s.get("surface", "sum") != "sum" or s.get("surrogate"):
            continue
        base = split_label(str(s.get("attack", "?")))[0]
        if (r.run, base) in seen:
            continue
        seen.add((r.run, base))
        chosen.append(r)
    chosen = chosen[:7]
    if not chosen:
        return Skip(key, title, "no adversarial examples on the summed logits")
    first = chosen[0].df
    ncol = min(8, len(first))
    shape = [int(v) for v in first["shape"].iloc[0]]
    plt = _plt()
    fig, axes = plt.subplots(
        len(chosen) + 1, ncol, figsize=(1.3 * ncol + 1.6, 1.45 * (len(chosen) + 1)), squeeze=False
    )

    def show(ax: Any, flat: Any) -> None:
        img = np.asarray(flat, dtype=float).reshape(shape)
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(np.clip(img.transpose(1, 2, 0), 0, 1))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)

    for j in range(ncol):
        show(axes[0, j], first["x"].iloc[j])
        axes[0, j].set_title(f"y={first['label'].iloc[j]}", fontsize=8)
    axes[0, 0].set_ylabel("original", fontsize=8)
    for i, r in enumerate(chosen, start=1):
        df = r.df
        s = r.setting
        cell = cells.get(r.path.name.replace("adv-examples", "attack"))
        eps = (s.get("params") or {}).get("eps")
        name = attack_title(str(s.get("attack", "?")), eps)
        for j in range(ncol):
            ax = axes[i, j]
            if j < len(df):
                show(ax, df["x_adv"].iloc[j])
                ok = int(df["adv_pred"].iloc[j]) == int(df["label"].iloc[j])
                ax.set_title(
                    f"pred {df['adv_pred'].iloc[j]}", fontsize=8, color="green" if ok else "red"
                )
            else:
                ax.axis("off")
        tag = f"\nrobust {cell.robust:.0f}%" if cell and cell.robust is not None else ""
        axes[i, 0].set_ylabel(f"{col.label(r.run)}\n{name}{tag}", fontsize=7)
    path = _save(fig, out / f"{dataset}-{key}.png")
    caption = (
        "First row: clean test images with labels; then adversarials per model and attack "
        "(crafted on the summed logits), titled with the vote's prediction (red = fooled)."
    )
    return Figure(key, title, caption, path)


#: Builders in report order (key, function, where the paper has it: T = table, F = figure).
FIGURES: list[tuple[str, Callable[[Collection, str, Path], Figure | Skip], str]] = [
    ("clever", clever_histograms, "F1, F7, F8"),
    ("surfaces", loss_surfaces, "F2, F17"),
    ("roc", roc_curves, "F3, F4, F6"),
    ("uncertainty", uncertainty_distributions, "F5"),
    ("gradients", gradient_cosines, "F9-F11"),
    ("training", training_curves, "F12, F13"),
    ("certify", certified_accuracy, "F14-F16"),
    ("distortion", distortion_accuracy, "F18"),
    ("examples", adversarial_grid, "F19-F21"),
    ("transfer", transfer_heatmap, "T4, T11; heat map"),
]
