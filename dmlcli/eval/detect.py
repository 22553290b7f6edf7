"""Adversary detection with a DML ensemble (A.4, A.4.1, A.5, A.5.1; Fig. 3-6).

Two detectors, both scored with ROC/AUC (adversarial = positive; benign and Gaussian-noisy
versions of the same correctly classified test samples = negative):

* ``vote``: the threshold-nu rule of Eq. 8 answers only when at least nu members agree
  (nu = K: unanimity, A.4.1); the score is the number of dissenting members ``K - max votes``.
  With ``--centers 1d`` models this is the 1-D projection detector of A.5 (Fig. 4).
* ``uncertainty``: the variance of the softmax outputs across members x R-DML draws, averaged
  over classes (A.5.1), fed (as its log) to a logistic regression trained on half of the
  samples (benign + noisy negative, adversarial positive) and scored on the other half only.

Every adversarial is crafted from a benign sample that the ensemble classifies correctly; the
standard attacks (FGSM, PGD) attack the summed logits as in the paper, the ``adaptive`` one
(:mod:`dmlcli.attacks.agreement`) attacks the detector itself. ``undetected-and-wrong`` is the
fraction of adversarials that the detector lets through and the vote misclassifies: the rate
that matters to a defender.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from dmlcli.attacks import Objective, create_attack
from dmlcli.attacks.agreement import AgreementPGD, member_draws, softmax_variance
from dmlcli.errors import DmlError
from dmlcli.eval.jobs import Job, Tick
from dmlcli.models.aggregate import REJECT, threshold_vote, vote, vote_counts
from dmlcli.models.io import Run
from dmlcli.runtime import mix_seed, seeded

METHODS = ("vote", "uncertainty")
ATTACKS = ("fgsm", "pgd", "adaptive")
_LOG_FLOOR = 1e-10
Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


# -- checks -----------------------------------------------------------------------------------
def default_nu(members: int) -> int:
    """The paper's practical threshold ``floor(K / 2) + 1`` (A.4)."""
    return members // 2 + 1


def check_nu(nu: int, members: int) -> int:
    """``nu`` if it lies in 1..K, else a :class:`DmlError`."""
    if not 1 <= nu <= members:
        raise DmlError(f"--nu must be between 1 and the number of members ({members}); got {nu}")
    return nu


def check_method(method: str, members: int, randomized: bool) -> str:
    """Validate ``method``; uncertainty needs members (K >= 2) or a randomized head."""
    if method not in METHODS:
        raise DmlError(f"unknown detection method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "uncertainty" and members < 2 and not randomized:
        raise DmlError(
            "--method uncertainty needs a randomized head or at least 2 members: this model has "
            "1 member and a deterministic head (use --head rdml --head-sigma S)"
        )
    return method


def check_attacks(names: Sequence[str]) -> list[str]:
    """Deduplicated attack names, each one of :data:`ATTACKS`."""
    out = list(dict.fromkeys(names))
    for name in out:
        if name not in ATTACKS:
            raise DmlError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    if not out:
        raise DmlError(f"give at least one --attack ({', '.join(ATTACKS)})")
    return out


# -- scores -----------------------------------------------------------------------------------
def dissent(logits: torch.Tensor) -> torch.Tensor:
    """Members that disagree with the majority: ``[K, B, C]`` -> ``[B]`` ints in 0..K-1."""
    return (logits.shape[0] - vote_counts(logits).max(-1).values).long()


def flags_per_nu(logits: torch.Tensor) -> torch.Tensor:
    """Eq. 8 for every threshold: ``[K, B, C]`` -> ``[K, B]`` bool, row ``nu-1`` = flagged."""
    k = logits.shape[0]
    return torch.stack([threshold_vote(logits, nu) == REJECT for nu in range(1, k + 1)])


@dataclass
class Roc:
    """An ROC curve (``roc_curve`` of scikit-learn) and its AUC."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float


def roc(scores: np.ndarray, positive: np.ndarray) -> Roc:
    """ROC/AUC of ``scores`` (higher = more adversarial) against bool ``positive`` labels."""
    from sklearn.metrics import roc_auc_score, roc_curve

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        raise DmlError("ROC needs both adversarial and non-adversarial inputs")
    scores = np.asarray(scores, dtype=np.float64)
    fpr, tpr, thr = roc_curve(positive, scores)
    return Roc(fpr, tpr, thr, float(roc_auc_score(positive, scores)))


def split_halves(samples: np.ndarray, seed: int) -> np.ndarray:
    """Bool ``is_fit`` per row: a seeded half of the distinct sample ids (``n // 2`` of them).

    Rows sharing a sample id (a benign input, its noisy version, its adversarials) always
    land in the same half.
    """
    ids = np.unique(samples)
    if len(ids) < 2:
        raise DmlError(
            "the uncertainty detector needs at least 2 correctly classified samples "
            "(one half to fit, one to evaluate); raise --n"
        )
    perm = np.random.default_rng(seed).permutation(len(ids))
    fit_ids = ids[perm[: len(ids) // 2]]
    return np.isin(samples, fit_ids)


def uncertainty_features(u: np.ndarray) -> np.ndarray:
    """The logistic regression's input: ``log(u + 1e-10)`` as a ``[N, 1]`` column."""
    return np.log(np.asarray(u, dtype=np.float64) + _LOG_FLOOR)[:, None]


@dataclass
class UncertaintyDetector:
    """Logistic regression on the log-uncertainty (A.5.1), fit on a chosen set of rows only.

    ``fit_rows`` records exactly which rows the regression saw (for audits and tests).
    """

    seed: int = 0
    fit_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    model: Any = None

    def fit(self, features: np.ndarray, positive: np.ndarray, rows: np.ndarray) -> None:
        """Fit on ``features[rows]`` (``[N, F]``) with labels ``positive[rows]``."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        rows = np.asarray(rows, dtype=np.int64)
        labels = np.asarray(positive, dtype=bool)[rows]
        if labels.all() or not labels.any():
            raise DmlError("the detector's fit half needs both adversarial and clean inputs")
        self.model = make_pipeline(
            StandardScaler(),
            LogisticRegression(class_weight="balanced", random_state=self.seed),
        )
        self.model.fit(features[rows], labels)
        self.fit_rows = rows

    def score(self, features: np.ndarray) -> np.ndarray:
        """Probability of being adversarial for every row ``[N]``."""
        if self.model is None:
            raise RuntimeError("fit the detector first")
        return self.model.predict_proba(features)[:, 1]


# -- observing the ensemble ---------------------------------------------------------------------
@dataclass
class Observation:
    """What the detectors see of a set of inputs.

    ``logits``: member logits averaged over the draws ``[K, N, C]``; ``uncertainty``: the
    softmax variance across members x draws ``[N]`` (A.5.1).
    """

    logits: torch.Tensor
    uncertainty: torch.Tensor


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def observe(
    model: nn.Module, x: torch.Tensor, draws: int = 1, batch_size: int = 500
) -> Observation:
    """Run ``draws`` forward passes over float pixels ``x`` ``[N, C, H, W]`` in batches."""
    device = _device(model)
    logits, unc = [], []
    for start in range(0, len(x), batch_size):
        d = member_draws(model, x[start : start + batch_size].to(device), draws)
        logits.append(d.mean(0).cpu())
        unc.append(softmax_variance(d).cpu())
    return Observation(torch.cat(logits, 1), torch.cat(unc))


def gaussian_noise(x: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """``clip(x + N(0, sigma^2), 0, 1)`` with a seeded generator: the noisy negatives."""
    gen = torch.Generator().manual_seed(seed + 31337)
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0.0, 1.0)


# -- settings and attacks -----------------------------------------------------------------------
@dataclass
class DetectSettings:
    """Everything that defines one detection result besides the model and the attack."""

    method: str = "vote"
    eps: float = 0.3
    draws: int = 1
    noise_sigma: float = 0.1
    seed: int = 0
    steps: int = 40
    step_size: float | None = None
    adaptive_loss: str = "ce"
    var_weight: float = 1.0
    adaptive_targets: int = 3
    eot: int = 1
    batch_size: int = 500

    def validate(self) -> None:
        if self.method not in METHODS:
            raise DmlError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not (math.isfinite(self.eps) and 0 <= self.eps <= 1):
            raise DmlError(f"eps {self.eps} is outside [0, 1] (eps is in pixel units)")
        if self.draws < 1:
            raise DmlError(f"--draws must be at least 1; got {self.draws}")
        if not (math.isfinite(self.noise_sigma) and self.noise_sigma >= 0):
            raise DmlError(f"--noise-sigma must be >= 0; got {self.noise_sigma}")
        if self.batch_size < 1:
            raise DmlError(f"--batch-size must be at least 1; got {self.batch_size}")
        for name in ATTACKS:  # builds (and so validates) every attack's parameters
            make_attack(name, self)

    def setting(self, attack: str) -> dict[str, Any]:
        """The result setting of ``attack`` (only the parameters it uses)."""
        out: dict[str, Any] = {
            "method": self.method,
            "attack": attack,
            "eps": self.eps,
            "draws": self.draws,
            "noise_sigma": self.noise_sigma,
            "seed": self.seed,
            "eot": self.eot,
        }
        if attack != "fgsm":
            out.update(steps=self.steps, step_size=self.step_size)
        if attack == "pgd":
            out["keep"] = "loss"
        if attack == "adaptive":
            out["adaptive_loss"] = self.adaptive_loss
            out["adaptive_targets"] = self.adaptive_targets
            if self.method == "uncertainty":
                out["var_weight"] = self.var_weight
        return out


def make_attack(name: str, s: DetectSettings) -> Attack:
    """The attack ``name`` for these settings: ``(model, x, y) -> x_adv``.

    ``fgsm``/``pgd`` (:func:`dmlcli.attacks.create_attack`) ascend the CE of the summed
    logits (untargeted, the paper's threat model, A.3) with ``eot`` head draws per step; PGD
    keeps its highest-loss iterate (``keep='loss'``: it does not stop at the first iterate
    that fools the vote, which would leave barely-crossed, easily flagged adversarials);
    ``adaptive`` is :class:`~dmlcli.attacks.agreement.AgreementPGD` toward the runner-up,
    with the variance-matching term only against the uncertainty detector.
    """
    if name in ("fgsm", "pgd"):
        params: dict[str, Any] = {"eps": s.eps, "seed": s.seed}
        if name == "pgd":
            params.update(steps=s.steps, step_size=s.step_size, keep="loss")
        standard = create_attack(name, **params)

        def on_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return standard(Objective(model, "sum", "vote", eot=s.eot), x, y)

        return on_sum
    if name == "adaptive":
        return AgreementPGD(
            eps=s.eps,
            steps=s.steps,
            step_size=s.step_size,
            loss=s.adaptive_loss,
            var_weight=s.var_weight if s.method == "uncertainty" else 0.0,
            targets=s.adaptive_targets,
            eot=s.eot,
            seed=s.seed,
        )
    raise DmlError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")


# -- rows -------------------------------------------------------------------------------------
def _rows(
    kind: str, attack: str, samples: np.ndarray, y: torch.Tensor, obs: Observation
) -> pd.DataFrame:
    k = obs.logits.shape[0]
    preds = obs.logits.argmax(-1).numpy()  # [K, N]
    flags = flags_per_nu(obs.logits).numpy()  # [K, N]
    df = pd.DataFrame(
        {
            "sample": samples.astype(np.int64),
            "label": y.numpy().astype(np.int64),
            "kind": kind,
            "attack": attack,
            "vote": vote(obs.logits).numpy().astype(np.int64),
            "dissent": dissent(obs.logits).numpy().astype(np.int64),
            "uncertainty": obs.uncertainty.numpy().astype(np.float64),
        }
    )
    for m in range(k):
        df[f"pred_member_{m + 1}"] = preds[m].astype(np.int64)
    for nu in range(1, k + 1):
        df[f"flagged_nu_{nu}"] = flags[nu - 1]
    return df


def detection_rows(
    method: str,
    attack: str,
    eps: float,
    samples: np.ndarray,
    y: torch.Tensor,
    benign: Observation,
    noisy: Observation,
    adversarial: Observation,
    linf: tuple[torch.Tensor, torch.Tensor],
    seed: int = 0,
) -> tuple[pd.DataFrame, Roc, UncertaintyDetector | None]:
    """Rows (one per sample x kind), the ROC of the detector, and the fitted regression.

    ``linf``: L-inf distances to the clean sample of the noisy and adversarial inputs ``[N]``.
    ``vote``: score = ``dissent``, ROC over every row. ``uncertainty``: rows get a ``half``
    (fit/eval, by sample), the regression is fit on the fit half and ``lr_score`` /
    ``flagged_lr`` (probability >= 0.5) come from it; the ROC uses the eval half only.
    """
    parts = [
        _rows("benign", attack, samples, y, benign),
        _rows("noisy", attack, samples, y, noisy),
        _rows("adversarial", attack, samples, y, adversarial),
    ]
    parts[0]["linf"] = 0.0
    for part, dist in zip(parts[1:], linf, strict=True):
        part["linf"] = dist.numpy().astype(np.float64)
    df = pd.concat(parts, ignore_index=True)
    df.insert(4, "eps", float(eps))
    df.insert(5, "method", method)
    positive = (df["kind"] == "adversarial").to_numpy()
    if method == "vote":
        df["half"] = "all"
        return df, roc(df["dissent"].to_numpy(), positive), None
    is_fit = split_halves(df["sample"].to_numpy(), seed)
    df["half"] = np.where(is_fit, "fit", "eval")
    features = uncertainty_features(df["uncertainty"].to_numpy())
    detector = UncertaintyDetector(seed=seed)
    detector.fit(features, positive, np.flatnonzero(is_fit))
    df["lr_score"] = detector.score(features)
    df["flagged_lr"] = df["lr_score"].to_numpy() >= 0.5
    ev = ~is_fit
    return df, roc(df["lr_score"].to_numpy()[ev], positive[ev]), detector


def roc_frame(method: str, attack: str, eps: float, curve: Roc) -> pd.DataFrame:
    """ROC points as rows (``detect-roc``): method, attack, eps, fpr, tpr, threshold, auc."""
    n = len(curve.fpr)
    return pd.DataFrame(
        {
            "method": [method] * n,
            "attack": [attack] * n,
            "eps": [float(eps)] * n,
            "fpr": curve.fpr.astype(np.float64),
            "tpr": curve.tpr.astype(np.float64),
            "threshold": curve.thresholds.astype(np.float64),
            "auc": [curve.auc] * n,
        }
    )


# -- the whole evaluation -------------------------------------------------------------------------
@dataclass
class Benign:
    """The correctly classified benign samples and their noisy versions, observed."""

    samples: np.ndarray  # test indices [N]
    x: torch.Tensor  # float pixels [N, C, H, W]
    y: torch.Tensor  # [N]
    benign: Observation
    noisy: Observation
    noisy_linf: torch.Tensor  # [N]

    @classmethod
    def empty(cls) -> Benign:
        """No samples: what a job needs to name a result that is already stored."""
        none = Observation(torch.empty(0, 0, 0), torch.empty(0))
        return cls(np.empty(0, dtype=np.int64), torch.empty(0), torch.empty(0), none, none,
                   torch.empty(0))  # fmt: skip


def prepare(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    samples: np.ndarray,
    s: DetectSettings,
) -> Benign:
    """Keep the samples the vote classifies correctly; observe them and their noisy versions.

    ``x``: float pixels ``[n, C, H, W]`` of the evaluation subset ``samples`` (test indices).
    Raises :class:`DmlError` when no sample is classified correctly.
    """
    torch.manual_seed(s.seed)
    obs = observe(model, x, s.draws, s.batch_size)
    correct = (vote(obs.logits) == y).numpy()
    if not correct.any():
        raise DmlError(
            f"none of the {len(y)} evaluation samples is classified correctly by the vote; "
            "nothing to detect (check the model, or raise --n)"
        )
    keep = torch.from_numpy(correct)
    xs, ys = x[keep], y[keep]
    benign = Observation(obs.logits[:, keep], obs.uncertainty[keep])
    xn = gaussian_noise(xs, s.noise_sigma, s.seed)
    noisy = observe(model, xn, s.draws, s.batch_size)
    return Benign(np.asarray(samples)[correct], xs, ys, benign, noisy, _linf(xn, xs))


def _linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).abs().max(1).values


def craft_batch(
    model: nn.Module, attack: str, s: DetectSettings, x: torch.Tensor, y: torch.Tensor, start: int
) -> torch.Tensor:
    """Adversarials ``[B, C, H, W]`` (CPU) of one batch: float pixels ``x``, labels ``y``
    ``[B]``, at position ``start`` of the correct samples. Its randomness (randomized heads,
    random starts) derives from ``(seed, attack, start)`` only, so a batch crafted alone
    (resumed) equals the same batch of an uninterrupted run."""
    device = _device(model)
    with seeded(mix_seed(s.seed + 1 + ATTACKS.index(attack), start), device):
        return make_attack(attack, s)(model, x.to(device), y.to(device)).detach().cpu()


def detect_attack(
    model: nn.Module,
    data: Benign,
    attack: str,
    s: DetectSettings,
    on_batch: Callable[[int], None] | None = None,
    adv: torch.Tensor | None = None,
) -> tuple[pd.DataFrame, Roc, UncertaintyDetector | None]:
    """Craft ``attack`` on the correct samples and score the detector (:func:`detection_rows`).

    ``adv`` ``[N, C, H, W]``: adversarials already crafted by :func:`craft_batch` (batches
    of ``s.batch_size``, e.g. read back from part files); crafted here when ``None``.
    """
    if adv is None:
        batches = []
        for start in range(0, len(data.x), s.batch_size):
            stop = start + s.batch_size
            batches.append(
                craft_batch(model, attack, s, data.x[start:stop], data.y[start:stop], start)
            )
            if on_batch is not None:
                on_batch(len(batches[-1]))
        adv = torch.cat(batches)
    torch.manual_seed(s.seed + 1 + ATTACKS.index(attack))  # randomized heads in observe
    obs = observe(model, adv, s.draws, s.batch_size)
    linf = (data.noisy_linf, _linf(adv, data.x))
    return detection_rows(
        s.method, attack, s.eps, data.samples, data.y, data.benign, data.noisy, obs, linf, s.seed
    )


def detect_setting(run: Run, s: DetectSettings, attack: str, n: int) -> dict[str, Any]:
    """The identity of the detection result of ``attack``: settings, samples, checkpoint and
    the head that was evaluated (a swapped R-DML head is part of it)."""
    config = getattr(run.model, "config", None)
    return {
        **s.setting(attack),
        "n": n,
        "checkpoint": run.checkpoint,
        "head": config.head if config is not None else "custom",
        "head_sigma": config.head_sigma if run.randomized else None,
        "head_samples": config.head_samples if run.randomized else None,
    }


def detect_job(run: Run, data: Benign, attack: str, s: DetectSettings, n: int) -> Job:
    """Craft ``attack`` on the correctly classified samples of ``data`` (blocks of
    ``s.batch_size``, kept as parts), then fit and score the detector on all of them: a
    ``detect`` result (one row per sample and kind) and its ``detect-roc`` points."""
    setting = detect_setting(run, s, attack, n)
    model = run.model

    def compute(start: int, stop: int, tick: Tick) -> tuple[dict, dict]:
        adv = craft_batch(model, attack, s, data.x[start:stop], data.y[start:stop], start)
        rows = {"sample": data.samples[start:stop], "x_adv": list(adv.flatten(1).numpy())}
        return {"rows": pd.DataFrame(rows)}, {}

    def finish(df: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, dict]]:
        flat = np.stack(df["x_adv"].to_numpy()).astype(np.float32)
        adv = torch.from_numpy(flat).view(-1, *data.x.shape[1:])
        rows, curve, detector = detect_attack(model, data, attack, s, adv=adv)
        extra: dict[str, Any] = {
            "auc": curve.auc,
            "members": run.num_members,
            "dataset": run.dataset,
            "n_correct": int(len(data.y)),
        }
        if detector is not None:
            fit = rows["sample"].to_numpy()[detector.fit_rows]
            extra["lr_fit_samples"] = sorted({int(v) for v in fit})
        roc_rows = roc_frame(s.method, attack, s.eps, curve)
        return {"detect": (rows, extra), "detect-roc": (roc_rows, extra)}

    return Job(
        kind="detect",
        run=run.name,
        setting=setting,
        ids=[int(v) for v in data.samples],
        compute=compute,
        size=s.batch_size,
        label=f"detect {attack} adversarials",
        columns=["x_adv"],
        finish=finish,
    )
