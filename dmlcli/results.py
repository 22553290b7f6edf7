"""Result schemas: the columns of every stored result kind, and every quantity derived from them.

A result is a parquet file with one row per (sample, setting, scored model) and its setting
as JSON metadata (see :mod:`dmlcli.store`). This module is the only place that names a
result's columns and their dtypes (:data:`SCHEMAS`), stamps the ``schema_version`` into
every file, refuses files of another version with one line, and defines the quantities the
commands print and the report shows (robust accuracy, the per-sample worst case, certified
accuracy at radii, detection rates at a false-positive rate, CLEVER quantiles, transfer
matrices). Producers build their rows with :func:`frame`; readers check them with
:func:`check`.

Columns named ``member_{k}``, ``pred_member_{k}`` or ``flagged_nu_{k}`` stand for one column
per member k = 1..K (or per threshold nu = 1..K).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dmlcli.errors import DmlError

#: dtype names -> what a column is cast to (``list``: one Python list per cell).
DTYPES = {"int": "int64", "float": "float64", "bool": "bool", "str": "object", "list": "object"}
ABSTAIN = -1  # certify: the smoothed classifier abstained
REPORT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)  # certified accuracy columns (Fig. 14-16)
CLEVER_THRESHOLD = 0.2  # the paper counts CLEVER scores above 0.2 (Fig. 7, 8)


@dataclass(frozen=True)
class Column:
    """One column: ``name`` (``{k}`` marks one column per member/threshold), dtype, meaning."""

    name: str
    dtype: str
    doc: str = ""
    optional: bool = False

    @property
    def per_member(self) -> bool:
        return "{k}" in self.name

    def matches(self, column: str) -> bool:
        if not self.per_member:
            return column == self.name
        return re.fullmatch(re.escape(self.name).replace(r"\{k\}", r"\d+"), column) is not None


@dataclass(frozen=True)
class Schema:
    """The columns of one result kind, and its version (bumped when a column changes)."""

    kind: str
    version: int
    columns: tuple[Column, ...]
    doc: str = ""
    id_column: str = "sample"

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.matches(name)), None)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


def _c(spec: str) -> tuple[Column, ...]:
    """``"sample:int label:int ..."`` (``?`` after the dtype: optional) -> columns."""
    out = []
    for item in spec.split():
        name, dtype = item.split(":")
        optional = dtype.endswith("?")
        out.append(Column(name, dtype.rstrip("?"), optional=optional))
    return tuple(out)


_ATTACK_OUTCOME = (
    "target:int clean_pred:int adv_pred:int member_{k}:int clean_correct:bool adv_correct:bool "
    "robust:bool skipped_by:str score_draws:int clean_correct_rate:float adv_correct_rate:float "
    "target_hit:bool linf:float l2:float seconds:float"
)
_ATTACK_SETTING = (
    "run:str checkpoint:str dataset:str sample:int label:int attack:str suite:str norm:str "
    "eps:float? steps:int? step_size:float? restarts:int? targeted:bool loss:str? surface:str? "
    "decision:str eot:int? seed:int surrogate:str? cascade:bool"
)
SCHEMAS: dict[str, Schema] = {
    s.kind: s
    for s in [
        Schema(
            "attack",
            4,
            _c(_ATTACK_SETTING + " " + _ATTACK_OUTCOME),
            "White-box robustness: one row per evaluation sample and attack setting. A sample "
            "the decision gets wrong is not attacked and never robust (robust = clean_correct "
            "& adv_correct). Success of an attack, targeted or not, is decision != label. "
            "Ties: vote gives a tie between the most voted classes to the larger summed logit; "
            "vote-strict counts such a tie as no answer (-1, never correct). A randomized "
            "decision is correct only if the label strictly wins the majority over score_draws "
            "draws (a tie is wrong); *_correct_rate is the share of draws that are right. "
            "cascade: the attack ran only on the samples every earlier stored attack left "
            "robust; a sample it skipped has skipped_by = the attack that broke it and is not "
            "robust, so a cascaded result's accuracy is cumulative, never this attack's alone.",
        ),
        Schema(
            "worst-case",
            4,
            _c(
                "run:str checkpoint:str dataset:str sample:int label:int eps:float norm:str "
                "decision:str seed:int score_draws:int clean_correct:bool robust:bool "
                "broken_by:str broken_eps:float? attacks:int adv_pred:int member_{k}:int "
                "linf:float l2:float"
            ),
            "Per-sample worst case over every stored L-inf attack result of one checkpoint at "
            "any eps' <= eps (monotone in eps), one decision, sample set, seed and scoring "
            "draws: robust only if every attack left the sample robust; broken_by names the "
            "first attack (smallest eps, then suite order) that did not and broken_eps its eps. "
            "Ties: the vote gives a tie between the most voted classes to the larger summed "
            "logit, vote-strict counts it as no answer, and over draws the label must strictly "
            "win the majority.",
        ),
        Schema(
            "adv-examples",
            2,
            _c("sample:int label:int clean_pred:int adv_pred:int shape:list x:list x_adv:list"),
            "The first few adversarial images of an attack result (Fig. 19-21), flattened.",
        ),
        Schema(
            "transfer",
            2,
            _c(
                "run:str checkpoint:str dataset:str sample:int label:int source:str scored:str "
                "attack:str eps:float targeted:bool decision:str seed:int target:int "
                "clean_pred:int adv_pred:int clean_correct:bool adv_correct:bool target_hit:bool "
                "linf:float l2:float seconds:float"
            ),
            "Adversarials crafted on one source (member:k or the ensemble) scored on every "
            "member and on the ensemble decision (Tables 4, 11): one row per sample and scored "
            "model.",
        ),
        Schema(
            "cw-distortion",
            3,
            _c(
                "run:str checkpoint:str dataset:str sample:int label:int source:str scored:str "
                "attack:str kappa:float targeted:bool decision:str seed:int target:int "
                "clean_pred:int adv_pred:int vote:int member_{k}:int clean_correct:bool "
                "adv_correct:bool robust:bool fooled:bool linf:float l2:float seconds:float"
            ),
            "Adaptive CW-L2 on the ensemble or one member (Tables 5, 12): the distortion it "
            "needed per sample (0 where it failed); fooled only counts samples the attacked "
            "model classified correctly.",
        ),
        Schema(
            "clever",
            3,
            _c(
                "sample:int idx:int label:int pred:int correct:bool model:str score:float "
                "score_label:float argmin_class:int seconds:float margin:list location:list "
                "observed_max:list weibull_shape:list weibull_scale:list ks_pvalue:list "
                "fit_status:list"
            ),
            "CLEVER scores (Weng et al. 2018) per sample; score_label is 0 where the "
            "prediction is wrong (the paper's non-zero count is of score_label). fit_status "
            "per class: ok, boundary, capped (the Weibull location hit its upper bound: the "
            "score may be too high), ill-conditioned or degenerate. Version 3: multi-start fit.",
            id_column="idx",
        ),
        Schema(
            "certify",
            2,
            _c(
                "idx:int label:int predict:int radius:float correct:int seconds:float p_a:float "
                "smoothed:int smoothed_correct:int"
            ),
            "Randomized smoothing (Cohen et al. 2019): CERTIFY's prediction (-1 abstains) and "
            "radius, PREDICT's answer.",
            id_column="idx",
        ),
        Schema(
            "gradients",
            2,
            _c(
                "idx:int label:int member_a:int member_b:int cosine:float sign_cosine:float "
                "norm_a:float norm_b:float"
            ),
            "Cosine of two members' input gradients per sample (A.7, Fig. 9-11).",
            id_column="idx",
        ),
        Schema(
            "surface",
            2,
            _c("idx:int label:int model:str r:float theta:float loss:float"),
            "Loss of every member and of the sum on a grid around a sample (Fig. 2, 17).",
            id_column="idx",
        ),
        Schema(
            "detect",
            3,
            _c(
                "sample:int label:int kind:str attack:str eps:float method:str vote:int "
                "dissent:int uncertainty:float pred_member_{k}:int flagged_nu_{k}:bool "
                "linf:float half:str lr_score:float? flagged_lr:bool?"
            ),
            "Detection (A.4, A.5): one result per method and setting holding every evaluated "
            "attack: the benign and noisy rows of each correct sample once (attack empty), "
            "then one adversarial row per sample and attack, with the detector's inputs and "
            "flags. The uncertainty regression (lr_score) is one detector, fit once on the fit "
            "half (metadata fit_attacks, lr_fit_samples, detector) and frozen.",
        ),
        Schema(
            "detect-roc",
            3,
            _c("method:str attack:str eps:float fpr:float tpr:float threshold:float auc:float"),
            "ROC points of a detector, for every attack of its detect result (attack column).",
            id_column="",
        ),
        Schema(
            "check",
            1,
            _c(
                "run:str checkpoint:str dataset:str n:int seed:int eps:float large_eps:float "
                "decision:str baseline:str? surrogate:str? check:str status:str value:float? "
                "threshold:float detail:str"
            ),
            "Sanity checks for gradient masking and failed attacks (dml check): one row per "
            "check with its status (pass, warn, fail), measured value, the threshold above "
            "which it stops passing and one sentence of detail.",
            id_column="",
        ),
    ]
}


def schema(kind: str) -> Schema:
    """The schema of result ``kind``; a clear error naming the kinds otherwise."""
    if kind not in SCHEMAS:
        raise DmlError(f"unknown result kind {kind!r}; choose one of {', '.join(SCHEMAS)}")
    return SCHEMAS[kind]


def list_kinds() -> list[str]:
    """Every result kind this version of dml writes."""
    return list(SCHEMAS)


def frame(kind: str, data: pd.DataFrame | Mapping[str, Any]) -> pd.DataFrame:
    """Rows of result ``kind`` with the schema's columns in order and dtypes cast.

    Raises ``ValueError`` (a bug, not a user error) when a required column is missing or a
    column is not in the schema.
    """
    s = schema(kind)
    df = data.copy() if isinstance(data, pd.DataFrame) else pd.DataFrame(dict(data))
    unknown = [c for c in df.columns if s.column(c) is None]
    if unknown:
        raise ValueError(f"{kind} rows: columns {unknown} are not in the schema")
    order: list[str] = []
    for col in s.columns:
        present = [c for c in df.columns if col.matches(c)]
        if not present and not col.optional and not col.per_member:
            raise ValueError(f"{kind} rows: column {col.name!r} is missing")
        present.sort(key=lambda c: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", c)])
        for c in present:
            if col.dtype != "list":
                df[c] = _cast(df[c], col)
            order.append(c)
    return df[order].reset_index(drop=True)


def _cast(values: pd.Series, column: Column) -> pd.Series:
    """``values`` as the column's dtype; an optional column may hold missing values (None),
    which stay as they are."""
    if column.dtype == "str":
        return values.map(lambda v: None if v is None else str(v)).astype(object)
    if values.isna().any():
        if not column.optional:
            raise ValueError(f"column {values.name!r} holds missing values")
        return values
    return values.astype(DTYPES[column.dtype])


def check(kind: str, df: pd.DataFrame, meta: Mapping[str, Any], where: str) -> pd.DataFrame:
    """Validate stored rows of ``kind`` read from ``where``: the schema version their metadata
    names, and every required column. A :class:`DmlError` says what is wrong in one line."""
    s = schema(kind)
    version = meta.get("schema_version")
    if version != s.version:
        raise DmlError(
            f"{where}: result schema version {version} ({kind}); this dml reads version "
            f"{s.version}: recompute it (--force) or delete it"
        )
    missing = [
        c.name for c in s.columns if not c.optional and not c.per_member and c.name not in df
    ]
    if missing:
        raise DmlError(f"{where}: a {kind} result without column {missing[0]!r}")
    return df


def first(df: pd.DataFrame, column: str) -> Any:
    """The value of a constant setting column (e.g. ``eps``) of one result's rows."""
    if column not in df.columns or not len(df):
        return None
    value = df[column].iloc[0]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def member_columns(df: pd.DataFrame, prefix: str = "member_") -> list[str]:
    """The per-member columns ``member_1..member_K`` of ``df`` in member order."""
    cols = [c for c in df.columns if re.fullmatch(re.escape(prefix) + r"\d+", c)]
    return sorted(cols, key=lambda c: int(c[len(prefix) :]))


# -- robustness ---------------------------------------------------------------------------------
def robust_accuracy(df: pd.DataFrame) -> tuple[float, float]:
    """(clean accuracy %, robust accuracy %) of one attack setting's rows."""
    return 100.0 * float(df["clean_correct"].mean()), 100.0 * float(df["robust"].mean())


def sum_scored_robust(df: pd.DataFrame, counts: Mapping[str, int] | None) -> float:
    """AutoAttack's robust accuracy (%) as the paper scores it (on the sum, scored by the
    vote, before the decision-checked re-attack) from a re-checked result's rows and its
    ``counts``: the stored robust accuracy plus the samples the re-check broke."""
    broke = (counts or {}).get("recheck_broke", 0)
    return robust_accuracy(df)[1] + 100.0 * broke / max(len(df), 1)


SUITE_ORDER = ("paper", "custom", "autoattack", "adaptive")


def paper_protocol(df: pd.DataFrame) -> bool:
    """Whether one attack result follows the paper's protocol: crafted on the summed logits,
    untargeted, white-box, by the paper suite or attacks named one by one (``custom``)."""
    return (
        first(df, "surface") == "sum"
        and not first(df, "targeted")
        and not first(df, "surrogate")
        and first(df, "suite") in ("paper", "custom")
    )


def attack_name(df: pd.DataFrame) -> str:
    """How the worst case names the attack of one result: ``apgd-ce (members)``,
    ``transfer-apgd-ce from digits-baseline``."""
    label = str(first(df, "attack"))
    surrogate = first(df, "surrogate")
    return f"{label} from {surrogate}" if surrogate else f"{label} ({first(df, 'surface')})"


def worst_case(frames: Sequence[pd.DataFrame], eps: float | None = None) -> pd.DataFrame:
    """Per-sample worst case of attack results (schema ``worst-case``) at ``eps`` (default:
    the largest eps of ``frames``): a sample is robust only where every frame's row is
    robust, and counts as clean-correct only where every frame says so (a randomized
    decision's clean draws may differ between results).

    The frames must hold the same samples in the same order (the same seeded evaluation
    subset) at one decision, each at an eps no larger than ``eps``: an adversarial within a
    smaller ball is within the larger one, so the worst case is monotone in eps.
    ``broken_by`` (:func:`attack_name`, with ``at eps e`` when a smaller ball broke it),
    ``broken_eps``, the adversarial prediction, member predictions and distortion come from
    the first frame that broke the sample, in eps, then :data:`SUITE_ORDER`, then label order.
    """
    if not frames:
        raise DmlError("the worst case needs at least one attack result")
    eps_of = [float(first(f, "eps")) for f in frames]
    eps = max(eps_of) if eps is None else float(eps)
    if max(eps_of) > eps + 1e-12:
        raise DmlError(f"worst case at eps {eps:g}: an attack result at eps {max(eps_of):g}")
    order = sorted(
        frames,
        key=lambda f: (
            float(first(f, "eps")),
            SUITE_ORDER.index(first(f, "suite")) if first(f, "suite") in SUITE_ORDER else 9,
            attack_name(f),
        ),
    )
    base = order[0].reset_index(drop=True)
    for f in order[1:]:
        if list(f["sample"]) != list(base["sample"]):
            raise DmlError("worst case: the attack results do not cover the same samples")
    stack = [f.reset_index(drop=True) for f in order]
    clean = pd.concat([f["clean_correct"] for f in stack], axis=1).all(axis=1)
    # a cascade's skipped sample is no evidence (the attack that broke it is a frame too)
    held = [f["robust"].astype(bool) | (f["skipped_by"] != "") for f in stack]
    robust = pd.concat(held, axis=1).all(axis=1) & clean
    out = base[["run", "checkpoint", "dataset", "sample", "label", "norm", "decision",
                "seed", "score_draws"]].copy()  # fmt: skip
    out["eps"] = eps
    out["clean_correct"] = clean
    out["robust"] = robust
    out["broken_by"] = ""
    out["broken_eps"] = float("nan")
    out["attacks"] = len(stack)
    pick = [*member_columns(base), "adv_pred", "linf", "l2"]
    for c in pick:
        out[c] = base[c]
    for f, h in zip(reversed(stack), reversed(held), strict=True):  # the first breaker wins
        broken = ~h & clean
        at = float(first(f, "eps"))
        name = attack_name(f) + ("" if at >= eps - 1e-12 else f" at eps {at:g}")
        out.loc[broken, pick] = f.loc[broken, pick].to_numpy()
        out.loc[broken, "broken_by"] = name
        out.loc[broken, "broken_eps"] = at
    return frame("worst-case", out)


# -- seeds ------------------------------------------------------------------------------------
def seed_spread(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) of one number measured on several seeds; the
    deviation is NaN for one seed."""
    arr = np.asarray(list(values), dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")
    return float(arr.mean()), std


def format_spread(values: Sequence[float], digits: int = 2) -> str:
    """``"84.37 ± 0.35"`` (mean ± std over seeds); one value alone as it is."""
    mean, std = seed_spread(values)
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


# -- certify ------------------------------------------------------------------------------------
def certified_accuracy(rows: pd.DataFrame, radii: Sequence[float] = REPORT_RADII) -> pd.DataFrame:
    """Certified accuracy at each radius: the share of rows with ``correct`` and
    ``radius >= r`` (abstentions are wrong). Returns columns ``radius, accuracy`` (in [0, 1])."""
    correct = rows["correct"].to_numpy().astype(bool) & (rows["predict"].to_numpy() != ABSTAIN)
    radius = rows["radius"].to_numpy(dtype=np.float64)
    acc = [float((correct & (radius >= r)).mean()) if len(rows) else 0.0 for r in radii]
    return pd.DataFrame({"radius": [float(r) for r in radii], "accuracy": acc})


def fine_radii(rows: pd.DataFrame, step: float = 0.01) -> list[float]:
    """A grid from 0 to the largest certified radius (at least 1) in steps of ``step``."""
    top = float(rows["radius"].max()) if len(rows) else 0.0
    count = int(math.ceil(max(top, 1.0) / step)) + 1
    return [round(i * step, 10) for i in range(count)]


# -- CLEVER -------------------------------------------------------------------------------------
def score_quantiles(
    rows: pd.DataFrame, column: str = "score", qs: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
) -> dict[str, Any]:
    """Quantiles and mean of ``column`` (``score`` or ``score_label``) of CLEVER ``rows``, and
    the counts the paper reports, always of ``score_label`` whatever ``column`` is (``score``
    is never 0; ``score_label`` is 0 where the prediction is wrong):
    ``score_label>0`` (Fig. 1's non-zero scores) and ``score_label>0.2`` (Fig. 7, 8), with
    ``counted`` naming that column; ``capped``: samples with a Weibull fit whose location hit
    its cap (their score may be too high), ``capped_fits`` of ``fits`` fits; ``n`` samples."""
    scores = rows[column].to_numpy(dtype=np.float64)
    label = rows["score_label"].to_numpy(dtype=np.float64)
    out: dict[str, Any] = {"column": column, "n": len(scores)}
    out.update({f"q{int(round(100 * q))}": float(np.quantile(scores, q)) for q in qs})
    out["mean"] = float(scores.mean())
    out["counted"] = "score_label"
    out["score_label>0"] = int((label > 0).sum())
    out[f"score_label>{CLEVER_THRESHOLD:g}"] = int((label > CLEVER_THRESHOLD).sum())
    statuses = [list(s) for s in rows["fit_status"]] if "fit_status" in rows else []
    out["capped"] = sum("capped" in s for s in statuses)
    out["capped_fits"] = sum(s.count("capped") for s in statuses)
    out["fits"] = sum(sum(1 for v in s if v) for s in statuses)
    return out


# -- transfer -----------------------------------------------------------------------------------
def transfer_matrix(df: pd.DataFrame) -> pd.DataFrame:
    """Adversarial accuracy (%) per source (rows) and scored model (columns) of transfer rows."""
    table = df.pivot_table(index="source", columns="scored", values="adv_correct", aggfunc="mean")
    return 100.0 * table


def cw_summary(df: pd.DataFrame) -> tuple[float, float, float]:
    """(adversarial accuracy %, mean L2 over fooled samples, fooled %) of CW distortion rows."""
    fooled = df["fooled"].astype(bool)
    dist = float(df.loc[fooled, "l2"].mean()) if fooled.any() else float("nan")
    return 100.0 * float(df["adv_correct"].mean()), dist, 100.0 * float(fooled.mean())


# -- geometry -----------------------------------------------------------------------------------
def pair_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and median cosine and sign cosine per member pair of ``gradients`` rows."""
    return (
        df.groupby(["member_a", "member_b"])
        .agg(
            cosine_mean=("cosine", "mean"),
            cosine_median=("cosine", "median"),
            sign_cosine_mean=("sign_cosine", "mean"),
            samples=("cosine", "size"),
        )
        .reset_index()
    )


def surface_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per model: the loss at ``x`` (r = 0, the theta nearest 0) and its maximum on the grid,
    averaged over samples, of ``surface`` rows."""
    near = df[df.r == 0]
    near = near[near.theta.abs() == near.theta.abs().min()]  # theta = 0 (odd grids)
    at_x = near.groupby("model")["loss"].mean()
    peak = df.groupby(["model", "idx"])["loss"].max().groupby("model").mean()
    out = pd.DataFrame({"loss_at_x": at_x, "loss_max": peak}).reset_index()
    order = {m: i for i, m in enumerate(sorted(out.model, key=lambda m: (m == "sum", m)))}
    return out.sort_values("model", key=lambda c: c.map(order), ignore_index=True)


# -- detection ----------------------------------------------------------------------------------
DETECT_KINDS = ("benign", "noisy", "adversarial")


def check_fpr(fpr: float) -> float:
    """A false-positive rate strictly between 0 and 1 (one clear line otherwise)."""
    if not (math.isfinite(fpr) and 0 < fpr < 1):
        raise DmlError(f"--fpr must be in (0, 1); got {fpr}")
    return fpr


def _pct(mask: pd.Series) -> float:
    return 100.0 * float(mask.mean()) if len(mask) else float("nan")


def rates(df: pd.DataFrame, flag: str) -> dict[str, float]:
    """Rates (%) for the flag column ``flag`` of one attack's detection rows (its
    adversarials and the benign and noisy rows, e.g. :func:`attack_rows`).

    ``benign_acc``: benign answered and right; ``fpr`` / ``fpr_noisy``: benign / noisy
    flagged; ``detected``: adversarials flagged; ``undetected_wrong``: adversarials answered
    with a wrong label; ``adv_vote_acc``: adversarials the plain vote still gets right.
    """
    b, n, a = (df[df["kind"] == k] for k in DETECT_KINDS)
    return {
        "benign_acc": _pct(~b[flag] & (b["vote"] == b["label"])),
        "fpr": _pct(b[flag]),
        "fpr_noisy": _pct(n[flag]),
        "detected": _pct(a[flag]),
        "undetected_wrong": _pct(~a[flag] & (a["vote"] != a["label"])),
        "adv_vote_acc": _pct(a["vote"] == a["label"]),
    }


def detect_attacks(df: pd.DataFrame) -> list[str]:
    """The attacks of a ``detect`` result, in the order of its adversarial rows."""
    adv = df.loc[df["kind"] == "adversarial", "attack"]
    return [str(a) for a in dict.fromkeys(adv)]


def attack_rows(df: pd.DataFrame, attack: str) -> pd.DataFrame:
    """One attack's view of a ``detect`` result: every benign and noisy row (stored once, for
    all attacks) and the adversarial rows of ``attack``."""
    return df[(df["kind"] != "adversarial") | (df["attack"] == attack)]


def nu_table(df: pd.DataFrame) -> pd.DataFrame:
    """Rates (%) of the threshold-nu detector for every nu in 1..K (one attack's rows)."""
    nus = sorted(int(c.rsplit("_", 1)[1]) for c in df.columns if c.startswith("flagged_nu_"))
    return pd.DataFrame([{"nu": nu, **rates(df, f"flagged_nu_{nu}")} for nu in nus])


def lr_rates(df: pd.DataFrame) -> dict[str, float]:
    """Rates (%) of the logistic-regression detector (p >= 0.5) on the eval half only."""
    return rates(df[df["half"] == "eval"], "flagged_lr")


def fpr_threshold(df: pd.DataFrame, fpr: float) -> float:
    """The regression's score threshold that flags at most a share ``fpr`` of the *fit*
    half's benign rows (their ``1 - fpr`` quantile); ``inf`` without fit-half benign rows.
    The eval half never moves it."""
    check_fpr(fpr)
    fit = df[(df["half"] == "fit") & (df["kind"] == "benign")]["lr_score"].to_numpy()
    return float(np.quantile(fit, 1.0 - fpr, method="higher")) if len(fit) else math.inf


def flag_at_fpr(df: pd.DataFrame, fpr: float) -> pd.DataFrame:
    """The eval half of ``df`` with ``flagged_fpr``: the regression's score above the
    threshold of :func:`fpr_threshold` (set on the fit half's benign rows).

    p >= 0.5 (``flagged_lr``) is an arbitrary operating point of a class-balanced fit and
    can reject a third of the clean inputs; a detector is compared at a fixed false-positive
    rate (e.g. TPR at 5% FPR). The threshold never sees the eval half, and is the same for
    every attack of the result (one frozen detector, one operating point).
    """
    threshold = fpr_threshold(df, fpr)
    ev = df[df["half"] == "eval"].copy()
    ev["flagged_fpr"] = ev["lr_score"].to_numpy() > threshold
    return ev


def lr_rates_at_fpr(df: pd.DataFrame, fpr: float) -> dict[str, float]:
    """Rates (%) on the eval half at the threshold of :func:`flag_at_fpr` (one attack's
    rows; the fit half's benign rows set the threshold)."""
    return rates(flag_at_fpr(df, fpr), "flagged_fpr")


def worst_case_undetected_wrong(frames: Sequence[pd.DataFrame], flag: str) -> float:
    """% of samples for which at least one attack's adversarial is undetected and wrong.

    ``frames``: the rows of several attacks on the same samples (one frame per attack); only
    the rows each frame keeps are used (pass eval halves for the logistic regression). An
    attacker tries every attack and keeps whichever works, so this per-sample worst case,
    not the best single attack, is what the detector is worth.
    """
    hits: pd.Series | None = None
    for df in frames:
        a = df[df["kind"] == "adversarial"].set_index("sample")
        h = ~a[flag].astype(bool) & (a["vote"] != a["label"])
        hits = h if hits is None else hits.reindex(hits.index.union(h.index), fill_value=False)
        hits = hits | h.reindex(hits.index, fill_value=False)
    return _pct(hits) if hits is not None else float("nan")


def detect_worst_case(df: pd.DataFrame, flag: str) -> float:
    """:func:`worst_case_undetected_wrong` over every attack of one ``detect`` result (the
    rows ``df`` keeps: pass the eval half for the regression); every attack faced the same
    detector, so this is the worst case against one deployed detector."""
    return worst_case_undetected_wrong([attack_rows(df, a) for a in detect_attacks(df)], flag)


WORST_CASE = "worst case"  # the attack name of the per-sample worst-case rows


def detect_nu_table(df: pd.DataFrame) -> pd.DataFrame:
    """The threshold-nu detector of a ``detect`` result for every nu in 1..K: one row per
    (nu, attack) with :func:`rates` (every row of the result, both halves: the vote has
    nothing to fit) and, with several attacks, a ``worst case`` row per nu holding only
    ``undetected_wrong`` (per sample, any attack). Columns: ``nu, attack`` and the rates."""
    attacks = detect_attacks(df)
    tables = {a: nu_table(attack_rows(df, a)).set_index("nu") for a in attacks}
    nus = sorted(int(c.rsplit("_", 1)[1]) for c in df.columns if c.startswith("flagged_nu_"))
    out: list[dict[str, Any]] = []
    for nu in nus:
        for a in attacks:
            out.append({"nu": nu, "attack": a, **tables[a].loc[nu].to_dict()})
        if len(attacks) > 1:
            worst = detect_worst_case(df, f"flagged_nu_{nu}")
            out.append({"nu": nu, "attack": WORST_CASE, "undetected_wrong": worst})
    cols = ["nu", "attack", "benign_acc", "fpr", "fpr_noisy", "detected", "undetected_wrong"]
    return pd.DataFrame(out, columns=[*cols, "adv_vote_acc"])


def detector_table(
    df: pd.DataFrame, nu: int, fpr: float, aucs: Mapping[str, float] | None = None
) -> pd.DataFrame:
    """The detector of a ``detect`` result, one row per attack plus, with several attacks, a
    ``worst case`` row (per sample, any attack, against the same detector).

    ``vote``: ``auc``, and at threshold ``nu`` ``detected``, ``undetected_wrong`` and
    ``adv_vote_acc`` (every row). ``uncertainty`` (eval half only): ``auc``; the frozen
    regression at p >= 0.5 (``lr_fpr``, ``lr_detected``, ``lr_undetected_wrong``) and at the
    benign FPR ``fpr`` set on the fit half (``fpr_at``, ``detected_at``,
    ``undetected_wrong_at``). ``aucs``: the stored AUC per attack (NaN where missing).
    """
    aucs = aucs or {}
    attacks = detect_attacks(df)
    out: list[dict[str, Any]] = []
    if first(df, "method") == "uncertainty":
        ev, at = df[df["half"] == "eval"], flag_at_fpr(df, fpr)
        for a in attacks:
            lr = rates(attack_rows(ev, a), "flagged_lr")
            op = rates(attack_rows(at, a), "flagged_fpr")
            row: dict[str, Any] = {"attack": a, "auc": float(aucs.get(a, math.nan))}
            row.update(lr_fpr=lr["fpr"], lr_detected=lr["detected"])
            row.update(lr_undetected_wrong=lr["undetected_wrong"], fpr_at=op["fpr"])
            row.update(detected_at=op["detected"], undetected_wrong_at=op["undetected_wrong"])
            out.append(row)
        if len(attacks) > 1:
            worst: dict[str, Any] = {"attack": WORST_CASE}
            worst["lr_undetected_wrong"] = detect_worst_case(ev, "flagged_lr")
            worst["undetected_wrong_at"] = detect_worst_case(at, "flagged_fpr")
            out.append(worst)
        cols = ["attack", "auc", "lr_fpr", "lr_detected", "lr_undetected_wrong"]
        return pd.DataFrame(out, columns=[*cols, "fpr_at", "detected_at", "undetected_wrong_at"])
    flag = f"flagged_nu_{nu}"
    for a in attacks:
        r = rates(attack_rows(df, a), flag)
        row = {"attack": a, "auc": float(aucs.get(a, math.nan)), "detected": r["detected"]}
        row.update(undetected_wrong=r["undetected_wrong"], adv_vote_acc=r["adv_vote_acc"])
        out.append(row)
    if len(attacks) > 1:
        out.append({"attack": WORST_CASE, "undetected_wrong": detect_worst_case(df, flag)})
    cols = ["attack", "auc", "detected", "undetected_wrong", "adv_vote_acc"]
    return pd.DataFrame(out, columns=cols)


# -- what a finished result stores beside its rows ---------------------------------------------
def summary_meta(kind: str, df: pd.DataFrame, part_metas: Sequence[Mapping[str, Any]]) -> dict:
    """Metadata a finished result of ``kind`` stores with its rows, derived from them (and
    from the metadata of the parts it was assembled from)."""
    if kind == "attack":
        warnings: list[str] = []
        counts: dict[str, int] = {}
        for m in part_metas:
            warnings += [w for w in m.get("warnings", []) if w not in warnings]
            for key, value in (m.get("counts") or {}).items():
                counts[key] = counts.get(key, 0) + int(value)
        return {"warnings": warnings, **({"counts": counts} if counts else {})}
    if kind == "clever":
        return {"quantiles": score_quantiles(df)}
    if kind == "certify":
        curve = certified_accuracy(df, fine_radii(df))
        return {
            "curve": {"radius": curve["radius"].tolist(), "accuracy": curve["accuracy"].tolist()}
        }
    return {}
