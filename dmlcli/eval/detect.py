"""Adversary detection with a DML ensemble (A.4, A.4.1, A.5, A.5.1; Fig. 3-6).

Two detectors, both scored with ROC/AUC (adversarial = positive; benign and Gaussian-noisy
versions of the same correctly classified test samples = negative):

* ``vote``: the threshold-nu rule of Eq. 8 answers only when at least nu members agree
  (nu = K: unanimity, A.4.1); the score is the number of dissenting members ``K - max votes``.
  With ``--centers 1d`` models this is the 1-D projection detector of A.5 (Fig. 4). It has
  nothing to fit.
* ``uncertainty``: the variance of the softmax outputs across members x R-DML draws, averaged
  over classes (A.5.1), fed (as its log) to a logistic regression. The regression is fit
  **once**, the way a defender deploys a detector: on the fit half of the samples (by sample
  id, :func:`split_halves`), benign + noisy inputs negative and the adversarials of the
  standard attacks (``fit_attacks``: FGSM and PGD by default, crafted even when not
  evaluated) positive. It is then frozen, and every evaluated attack -- the adaptive one
  included -- is scored against that same detector on the eval half only. The detector is
  never refit on an attack's own adversarials, so the per-sample worst case over attacks is
  the worst case against one deployed detector.

Every adversarial is crafted from a benign sample that the ensemble classifies correctly; the
standard attacks (FGSM, PGD) attack the summed logits as in the paper, the ``adaptive`` one
(:mod:`dmlcli.attacks.agreement`) attacks the detector itself. ``undetected-and-wrong`` is the
fraction of adversarials that the detector lets through and the vote misclassifies: the rate
that matters to a defender.

One ``detect`` result per (run, method, eps, settings) holds the rows of every evaluated
attack: the benign and noisy rows once (``attack`` empty), then one adversarial row per
sample and attack; its ``detect-roc`` result holds the ROC points of every attack.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from dmlcli import results
from dmlcli.attacks import Objective, create_attack
from dmlcli.attacks.agreement import AgreementPGD, member_draws, softmax_variance
from dmlcli.errors import DmlError
from dmlcli.eval.jobs import Job, Tick
from dmlcli.models.aggregate import REJECT, threshold_vote, vote, vote_counts
from dmlcli.models.io import Run
from dmlcli.runtime import mix_seed, seeded

METHODS = ("vote", "uncertainty")
ATTACKS = ("fgsm", "pgd", "adaptive")
#: The standard attacks the uncertainty detector may be fit on (never the adaptive one).
FIT_ATTACKS = ("fgsm", "pgd")
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
    """Deduplicated attack names, each one of :data:`ATTACKS`, in the order of :data:`ATTACKS`
    (the order given does not change the result)."""
    out = list(dict.fromkeys(names))
    for name in out:
        if name not in ATTACKS:
            raise DmlError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    if not out:
        raise DmlError(f"give at least one --attack ({', '.join(ATTACKS)})")
    return [a for a in ATTACKS if a in out]


def check_fit_attacks(names: Sequence[str]) -> list[str]:
    """Deduplicated ``--fit-attack`` names, each one of :data:`FIT_ATTACKS`, in that order."""
    out = list(dict.fromkeys(names))
    for name in out:
        if name not in FIT_ATTACKS:
            raise DmlError(
                f"unknown --fit-attack {name!r}; choose {' or '.join(FIT_ATTACKS)} (the "
                "standard attacks the uncertainty detector is fit on; the adaptive attack is "
                "only evaluated, never fit on)"
            )
    if not out:
        raise DmlError(f"give at least one --fit-attack ({', '.join(FIT_ATTACKS)})")
    return [a for a in FIT_ATTACKS if a in out]


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

    ``fit_rows`` records exactly which rows the regression saw (for audits and tests). Once
    fit it is frozen: :meth:`score` never refits.
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

    def params(self) -> dict[str, list[float]]:
        """The frozen detector as plain numbers: ``p = sigmoid(coef . (f - mean) / scale +
        intercept)`` with ``f = log(u + 1e-10)`` (stored with the result for audits)."""
        if self.model is None:
            raise RuntimeError("fit the detector first")
        scaler, lr = self.model[0], self.model[-1]
        return {
            "mean": [float(v) for v in scaler.mean_],
            "scale": [float(v) for v in scaler.scale_],
            "coef": [float(v) for v in lr.coef_.ravel()],
            "intercept": [float(v) for v in lr.intercept_.ravel()],
        }


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
    """Everything that defines one detection result besides the model and the samples.

    ``attacks``: the attacks evaluated; ``fit_attacks``: the standard attacks whose
    fit-half adversarials the uncertainty regression is fit on (ignored by ``vote``).
    """

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
    attacks: tuple[str, ...] = ATTACKS
    fit_attacks: tuple[str, ...] = FIT_ATTACKS

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
        self.attacks = tuple(check_attacks(self.attacks))
        self.fit_attacks = tuple(check_fit_attacks(self.fit_attacks))
        for name in ATTACKS:  # builds (and so validates) every attack's parameters
            make_attack(name, self)

    @property
    def crafted(self) -> list[str]:
        """Every attack whose adversarials are crafted: the evaluated ones and, for the
        uncertainty detector, its fit attacks (in the order of :data:`ATTACKS`)."""
        need = set(self.attacks)
        if self.method == "uncertainty":
            need |= set(self.fit_attacks)
        return [a for a in ATTACKS if a in need]

    def setting(self) -> dict[str, Any]:
        """The result setting: the attacks evaluated (and fit on) and only the parameters
        that the crafted attacks use."""
        crafted = self.crafted
        out: dict[str, Any] = {
            "method": self.method,
            "attacks": list(self.attacks),
            "eps": self.eps,
            "draws": self.draws,
            "noise_sigma": self.noise_sigma,
            "seed": self.seed,
            "eot": self.eot,
        }
        if self.method == "uncertainty":
            out["fit_attacks"] = list(self.fit_attacks)
        if any(a != "fgsm" for a in crafted):
            out.update(steps=self.steps, step_size=self.step_size)
        if "pgd" in crafted:
            out["keep"] = "loss"
        if "adaptive" in crafted:
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


@dataclass
class Detection:
    """What :func:`detection_rows` gives.

    ``rows``: the stored rows (benign and noisy once, then every evaluated attack's
    adversarials); ``rocs``: the ROC of the detector per evaluated attack; ``detector``: the
    frozen regression (None for ``vote``); ``fit``: ``sample``, ``kind``, ``attack`` and
    ``half`` of every row the regression was fit on, in the order it saw them (None for
    ``vote``). Fit rows of a fit attack that is not evaluated are not among ``rows``.
    """

    rows: pd.DataFrame
    rocs: dict[str, Roc]
    detector: UncertaintyDetector | None = None
    fit: pd.DataFrame | None = None


def detection_rows(
    method: str,
    eps: float,
    samples: np.ndarray,
    y: torch.Tensor,
    benign: Observation,
    noisy: Observation,
    adversarial: Mapping[str, Observation],
    linf: Mapping[str, torch.Tensor],
    attacks: Sequence[str] | None = None,
    fit_attacks: Sequence[str] = FIT_ATTACKS,
    seed: int = 0,
) -> Detection:
    """Rows (one per sample x kind x attack), the ROC per attack and the frozen regression.

    ``adversarial``: the observed adversarials of every crafted attack (the evaluated ones,
    ``attacks``, default all of them, and for ``uncertainty`` the ``fit_attacks``).
    ``linf``: L-inf distances to the clean samples ``[N]`` of ``'noisy'`` and of every attack.

    ``vote``: score = ``dissent``; the ROC of an attack uses every row of it (its
    adversarials against all benign and noisy rows). ``uncertainty``: rows get a ``half``
    (fit/eval, by sample); the regression is fit ONCE on the fit half's benign and noisy rows
    (negative) and the fit half's adversarials of ``fit_attacks`` (positive), then frozen;
    ``lr_score`` / ``flagged_lr`` (p >= 0.5) of every row come from that one detector and
    each attack's ROC uses the eval half only.
    """
    attacks = list(adversarial) if attacks is None else list(attacks)
    parts = [
        _rows("benign", "", samples, y, benign),
        _rows("noisy", "", samples, y, noisy),
        *[_rows("adversarial", a, samples, y, obs) for a, obs in adversarial.items()],
    ]
    parts[0]["linf"] = 0.0
    parts[1]["linf"] = linf["noisy"].numpy().astype(np.float64)
    for part, a in zip(parts[2:], adversarial, strict=True):
        part["linf"] = linf[a].numpy().astype(np.float64)
    pool = pd.concat(parts, ignore_index=True)
    pool.insert(4, "eps", float(eps))
    pool.insert(5, "method", method)
    adv = (pool["kind"] == "adversarial").to_numpy()
    keep = ~adv | pool["attack"].isin(attacks).to_numpy()
    if method == "vote":
        pool["half"] = "all"
        rows = pool[keep].reset_index(drop=True)
        rocs = {a: _attack_roc(rows, a, "dissent") for a in attacks}
        return Detection(rows, rocs)
    is_fit = split_halves(pool["sample"].to_numpy(), seed)
    pool["half"] = np.where(is_fit, "fit", "eval")
    fit_mask = is_fit & (~adv | pool["attack"].isin(list(fit_attacks)).to_numpy())
    features = uncertainty_features(pool["uncertainty"].to_numpy())
    detector = UncertaintyDetector(seed=seed)
    detector.fit(features, adv, np.flatnonzero(fit_mask))
    pool["lr_score"] = detector.score(features)  # the one frozen detector scores every row
    pool["flagged_lr"] = pool["lr_score"].to_numpy() >= 0.5
    fit = pool.loc[detector.fit_rows, ["sample", "kind", "attack", "half"]].reset_index(drop=True)
    rows = pool[keep].reset_index(drop=True)
    evals = rows[rows["half"] == "eval"]
    rocs = {a: _attack_roc(evals, a, "lr_score") for a in attacks}
    return Detection(rows, rocs, detector, fit)


def _attack_roc(rows: pd.DataFrame, attack: str, score: str) -> Roc:
    """The ROC of ``attack``'s adversarials against the benign and noisy rows of ``rows``."""
    part = results.attack_rows(rows, attack)
    return roc(part[score].to_numpy(), (part["kind"] == "adversarial").to_numpy())


def roc_frame(method: str, eps: float, curves: Mapping[str, Roc]) -> pd.DataFrame:
    """ROC points of every attack as rows (``detect-roc``): method, attack, eps, fpr, tpr,
    threshold, auc."""
    frames = []
    for attack, curve in curves.items():
        n = len(curve.fpr)
        frames.append(
            pd.DataFrame(
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
        )
    return pd.concat(frames, ignore_index=True)


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
    (resumed, or next to other attacks) equals the same batch of an uninterrupted run."""
    device = _device(model)
    with seeded(mix_seed(s.seed + 1 + ATTACKS.index(attack), start), device):
        return make_attack(attack, s)(model, x.to(device), y.to(device)).detach().cpu()


def detect_all(
    model: nn.Module,
    data: Benign,
    s: DetectSettings,
    adv: Mapping[str, torch.Tensor] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Detection:
    """Craft every attack of ``s.crafted`` on the correct samples, observe the adversarials
    and score the detector (:func:`detection_rows`).

    ``adv`` ``{attack: [N, C, H, W]}``: adversarials already crafted by :func:`craft_batch`
    (batches of ``s.batch_size``, e.g. read back from part files); crafted here when ``None``.
    """
    if adv is None:
        adv = {}
        for attack in s.crafted:
            batches = []
            for start in range(0, len(data.x), s.batch_size):
                stop = start + s.batch_size
                x, y = data.x[start:stop], data.y[start:stop]
                batches.append(craft_batch(model, attack, s, x, y, start))
                if on_batch is not None:
                    on_batch(len(batches[-1]))
            adv[attack] = torch.cat(batches)
    observed, linf = {}, {"noisy": data.noisy_linf}
    for attack in s.crafted:
        torch.manual_seed(s.seed + 1 + ATTACKS.index(attack))  # randomized heads in observe
        observed[attack] = observe(model, adv[attack], s.draws, s.batch_size)
        linf[attack] = _linf(adv[attack], data.x)
    return detection_rows(
        s.method, s.eps, data.samples, data.y, data.benign, data.noisy, observed, linf,
        s.attacks, s.fit_attacks, s.seed,
    )  # fmt: skip


def detect_setting(run: Run, s: DetectSettings, n: int) -> dict[str, Any]:
    """The identity of the detection result: settings (the attacks evaluated and fit on
    included), samples, checkpoint and the head that was evaluated (a swapped R-DML head is
    part of it)."""
    config = getattr(run.model, "config", None)
    return {
        **s.setting(),
        "n": n,
        "checkpoint": run.checkpoint,
        "head": config.head if config is not None else "custom",
        "head_sigma": config.head_sigma if run.randomized else None,
        "head_samples": config.head_samples if run.randomized else None,
    }


def _x_adv(attack: str) -> str:
    return f"x_adv_{attack}"


def detect_job(run: Run, data: Benign, s: DetectSettings, n: int) -> Job:
    """One job for the whole detection result. Each block of ``s.batch_size`` correctly
    classified samples crafts the adversarials of every attack of ``s.crafted`` (kept as a
    part, so an interrupted run resumes); ``finish`` fits the detector once and scores every
    attack against it: a ``detect`` result (one row per sample, kind and attack) and its
    ``detect-roc`` points (every attack's ROC)."""
    setting = detect_setting(run, s, n)
    model = run.model
    crafted = s.crafted

    def compute(start: int, stop: int, tick: Tick) -> tuple[dict, dict]:
        rows: dict[str, Any] = {"sample": data.samples[start:stop]}
        x, y = data.x[start:stop], data.y[start:stop]
        for i, attack in enumerate(crafted):
            tick(i / len(crafted), f"{attack} ({i + 1}/{len(crafted)})")
            adv = craft_batch(model, attack, s, x, y, start)
            rows[_x_adv(attack)] = list(adv.flatten(1).numpy())
        return {"rows": pd.DataFrame(rows)}, {}

    def finish(df: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, dict]]:
        shape = data.x.shape[1:]
        adv = {
            a: torch.from_numpy(np.stack(df[_x_adv(a)].to_numpy()).astype(np.float32)).view(
                -1, *shape
            )
            for a in crafted
        }
        got = detect_all(model, data, s, adv=adv)
        extra: dict[str, Any] = {
            "aucs": {a: c.auc for a, c in got.rocs.items()},
            "attacks": list(s.attacks),
            "members": run.num_members,
            "dataset": run.dataset,
            "n_correct": int(len(data.y)),
        }
        if got.detector is not None and got.fit is not None:
            fit = got.fit
            extra["fit_attacks"] = list(s.fit_attacks)
            extra["lr_fit_samples"] = sorted({int(v) for v in fit["sample"]})
            labels = fit["kind"] + fit["attack"].map(lambda a: f":{a}" if a else "")
            extra["lr_fit_rows"] = {str(k): int(v) for k, v in labels.value_counts().items()}
            extra["detector"] = got.detector.params()
        roc_rows = roc_frame(s.method, s.eps, got.rocs)
        return {"detect": (got.rows, extra), "detect-roc": (roc_rows, extra)}

    return Job(
        kind="detect",
        run=run.name,
        setting=setting,
        ids=[int(v) for v in data.samples],
        compute=compute,
        size=s.batch_size,
        label=f"detect {'+'.join(crafted)} adversarials",
        columns=[_x_adv(a) for a in crafted],
        finish=finish,
    )
