"""Exports: stored results in the formats other tools read.

- ``csv``: any result, one CSV row per parquet row (list columns as JSON);
- ``autoattack-log``: an AutoAttack result as AutoAttack's text log (what RobustBench
  submissions attach): the version and attacks, initial accuracy, the robust accuracy
  AutoAttack left (on the summed logits, scored by the decision), the robust accuracy after
  dml's decision-checked re-attack, the largest L-inf perturbation, the final robust accuracy;
- ``cohen-tsv``: a ``certify`` result as Cohen et al.'s ``certify.py`` output
  (``idx label predict radius correct time``, tab-separated);
- ``adversarials``: the adversarial images an attack stored (``adv-examples``: the first
  few samples of each result) as safetensors ``x_adv`` ``[N, C, H, W]`` float32 in [0, 1],
  ``x`` (clean), ``y``, ``sample`` and ``adv_pred``.

Each export is written atomically next to nothing else: ``<out>/<result file stem>.<ext>``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dmlcli.errors import DmlError
from dmlcli.files import atomic_write_bytes, save_tensors
from dmlcli.results import robust_accuracy, sum_scored_robust

FORMATS = ("csv", "autoattack-log", "cohen-tsv", "adversarials")
#: The result kinds each format reads (None: any kind).
KINDS: dict[str, tuple[str, ...] | None] = {
    "csv": None,
    "autoattack-log": ("attack",),
    "cohen-tsv": ("certify",),
    "adversarials": ("adv-examples",),
}
SUFFIX = {
    "csv": ".csv",
    "autoattack-log": ".log",
    "cohen-tsv": ".tsv",
    "adversarials": ".safetensors",
}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise DmlError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def to_csv(df: pd.DataFrame) -> bytes:
    """Every row and column; lists and dicts as JSON text, missing values empty."""
    out = df.copy()
    for c in out.columns:
        if (
            out[c].dtype == object
            and out[c].map(lambda v: isinstance(v, list | tuple | dict | np.ndarray)).any()
        ):
            out[c] = out[c].map(
                lambda v: json.dumps(v.tolist() if isinstance(v, np.ndarray) else v)
            )
    return out.to_csv(index=False).encode()


def to_autoattack_log(df: pd.DataFrame, meta: dict[str, Any]) -> bytes:
    """AutoAttack's log lines for an AutoAttack ``attack`` result (refused for others)."""
    setting = meta.get("setting") or {}
    params = setting.get("params") or {}
    if setting.get("attack_name") != "autoattack":
        raise DmlError(
            f"autoattack-log exports AutoAttack results; this one is {setting.get('attack')!r}"
        )
    clean, robust = robust_accuracy(df)
    counts = meta.get("counts") or {}
    attacks = params.get("attacks") or []
    version = params.get("version", "?")
    lines = [
        f"# dml {meta.get('versions', {}).get('dmlcli', '')} export of {setting.get('run')} "
        f"(checkpoint {str(setting.get('checkpoint', ''))[:12]}), {len(df)} samples, seed "
        f"{setting.get('seed')}, decision {setting.get('decision')}",
        f"using {version} version" + (f" including {', '.join(attacks)}." if attacks else "."),
        f"initial accuracy: {clean:.2f}%",
        f"robust accuracy after AutoAttack (on the summed logits, scored by the "
        f"{setting.get('decision')}): {sum_scored_robust(df, counts):.2f}%",
    ]
    if params.get("recheck"):
        lines.append(
            f"robust accuracy after decision-checked APGD-CE/APGD-T ({counts.get('rechecked', 0)} "
            f"re-attacked, {counts.get('recheck_broke', 0)} broken): {robust:.2f}%"
        )
    linf = float(df["linf"].max()) if len(df) else 0.0
    lines += [
        f"max Linf perturbation: {linf:.5f} (eps {params.get('eps')})",
        f"robust accuracy: {robust:.2f}%",
    ]
    return ("\n".join(lines) + "\n").encode()


def to_cohen_tsv(df: pd.DataFrame) -> bytes:
    """Cohen et al.'s ``certify.py`` columns: ``idx label predict radius correct time``."""
    out = pd.DataFrame(
        {
            "idx": df["idx"],
            "label": df["label"],
            "predict": df["predict"],
            "radius": df["radius"].map(lambda r: f"{r:.3}"),
            "correct": df["correct"].astype(int),
            "time": df["seconds"].map(lambda s: f"{s:.4f}"),
        }
    )
    return out.to_csv(sep="\t", index=False).encode()


def adversarial_tensors(df: pd.DataFrame) -> dict[str, torch.Tensor]:
    """The stored adversarial (and clean) images of an ``adv-examples`` result as tensors."""
    if not len(df):
        raise DmlError("this result holds no adversarial examples")
    shape = [len(df), *[int(s) for s in df["shape"].iloc[0]]]
    return {
        "x_adv": torch.tensor(np.stack(df["x_adv"].to_numpy()), dtype=torch.float32).reshape(shape),
        "x": torch.tensor(np.stack(df["x"].to_numpy()), dtype=torch.float32).reshape(shape),
        "y": torch.tensor(df["label"].to_numpy(), dtype=torch.int64),
        "sample": torch.tensor(df["sample"].to_numpy(), dtype=torch.int64),
        "adv_pred": torch.tensor(df["adv_pred"].to_numpy(), dtype=torch.int64),
    }


def export_result(df: pd.DataFrame, meta: dict[str, Any], fmt: str, path: Path) -> Path:
    """Write one result ``(df, meta)`` in ``fmt`` to ``path`` (atomically); returns it."""
    writers: dict[str, Callable[[], bytes]] = {
        "csv": lambda: to_csv(df),
        "autoattack-log": lambda: to_autoattack_log(df, meta),
        "cohen-tsv": lambda: to_cohen_tsv(df),
    }
    if fmt == "adversarials":
        setting = meta.get("setting") or {}
        meta_out = {"run": setting.get("run"), "attack": setting.get("attack"), "setting": setting}
        save_tensors(path, adversarial_tensors(df), meta_out)
        return path
    atomic_write_bytes(path, writers[fmt]())
    return path
