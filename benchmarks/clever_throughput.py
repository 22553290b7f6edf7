"""CLEVER throughput: dmlcli's ``clever_u`` (``dml clever``) vs ART's ``clever_u``, in one run.

Both score the same model (a K=5 ensemble's summed member logits, as ``dml clever`` does by
default) on the same test images with the same settings: untargeted CLEVER, ``L_2`` ball of
radius ``R``, ``nb_batches`` batch maxima of ``batch_size`` points drawn from a pool of
``pool_factor * batch_size`` gradient evaluations (ART's scheme), clipped to [0, 1]. ART sees
the model wrapped in ``art.estimators.classification.PyTorchClassifier``.

- ours: :func:`dmlcli.eval.clever.clever_u`: one gradient pool per sample serves all
  classes (one forward and ``C`` backward passes over large batches);
- ART: ``art.metrics.clever_u``: per wrong class, ``batch_size`` calls of
  ``class_gradient`` on ``pool_factor`` points, twice (predicted and target class).

Our Weibull fit runs from Weng et al.'s seven shape starts (the best KS p-value kept); ART's
``clever_u`` takes one start (its default, 1). Prints the seconds per sample of each, the
speed-up, the statuses of our fits (``capped``: the location hit its bound), and the score
agreement: per-sample scores, the median relative difference and the ratio of the medians
(the test suite asks the medians to agree within 10%, ``tests/test_clever.py``). The draws
differ (ART uses NumPy's global generator), so per-sample scores agree only up to Monte-Carlo
noise, and where ART's unconstrained scipy Weibull fit runs off to a huge location its score is ~0.
Times on a shared machine are noisy: the two are timed in interleaved rounds, each round
scoring every sample, and the median round is reported (``--rounds``); ART is slow, so
its rounds are few. Both run with ``--threads`` torch threads (default 0: torch's default,
every core of the machine, as a user would run them; ``--threads 1`` compares one core).

    python benchmarks/clever_throughput.py [--samples 6] [--nb-batches 50] [--batch-size 100]
    python benchmarks/clever_throughput.py --checkpoint artifacts/models/fashion-mnist-dml

Without ``--checkpoint`` the ensemble is an untrained ``--dataset`` (default fashion-mnist,
LeNet-5 on 28x28) DML ensemble with K=5. Needs ``pip install adversarial-robustness-toolbox``
(a test-only dependency).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import numpy as np
import torch
from torch import nn

from dmlcli.data import eval_indices, load_dataset, to_float
from dmlcli.eval import clever as cl
from dmlcli.models.config import resolve_config
from dmlcli.models.ensemble import Ensemble


def ours(
    model: nn.Module, x: torch.Tensor, s: cl.CleverSettings
) -> tuple[float, np.ndarray, Counter[str]]:
    """Seconds, scores and fit statuses of dmlcli's CLEVER over all samples."""
    start = time.perf_counter()
    res = cl.clever_u(model, x, s)
    seconds = time.perf_counter() - start
    statuses = Counter(f.status for r in res for f in r.fits if f is not None)
    return seconds, np.array([r.score for r in res]), statuses


def art(clf, x: torch.Tensor, s: cl.CleverSettings, seed: int) -> tuple[float, np.ndarray]:
    """Seconds and scores of ART's CLEVER over all samples (one ``clever_u`` per sample)."""
    from art.metrics import clever_u

    np.random.seed(seed)
    start = time.perf_counter()
    scores = [
        clever_u(
            clf,
            xi.numpy(),
            s.nb_batches,
            s.batch_size,
            s.radius,
            2,
            c_init=1.0,  # ART fits from one shape start (its default); ours from several
            pool_factor=s.pool_factor,
            verbose=False,
        )
        for xi in x
    ]
    return time.perf_counter() - start, np.array(scores, dtype=np.float64)


def main() -> None:
    from art.estimators.classification import PyTorchClassifier

    from dmlcli import load_run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help=".safetensors file of a stored run (default: untrained)")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--nb-batches", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--pool-factor", type=int, default=10)
    ap.add_argument("--radius", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of ours (ART: --art-rounds)")
    ap.add_argument("--art-rounds", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads for both (0: torch's default)"
    )
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    if args.checkpoint:
        ensemble = load_run(args.checkpoint).eval()
    else:
        cfg = resolve_config(args.dataset, members=args.members, seed=args.seed)
        ensemble = Ensemble(cfg).eval()
    for p in ensemble.parameters():
        p.requires_grad_(False)
    cfg = ensemble.config
    model = cl.ScoredModel(ensemble, "sum").eval()
    xs, _ = load_dataset(cfg.dataset, "test", args.data_dir, image_size=cfg.image_size)
    idx = eval_indices(len(xs), args.samples, args.seed)
    x = to_float(xs[idx])
    s = cl.CleverSettings(
        norm=2.0,
        radius=args.radius,
        nb_batches=args.nb_batches,
        batch_size=args.batch_size,
        pool_factor=args.pool_factor,
    ).validate()
    size = cfg.image_size
    clf = PyTorchClassifier(
        model,
        nn.CrossEntropyLoss(),
        (cfg.in_channels, size, size),
        nb_classes=cfg.num_classes,
        clip_values=(0.0, 1.0),
    )
    print(
        f"CLEVER-u of the summed logits of a K={ensemble.num_members} {cfg.backbone} "
        f"{cfg.head} ensemble ({'stored' if args.checkpoint else 'untrained'}), "
        f"{cfg.dataset} {size}x{size}, {args.samples} test samples; L2, R={args.radius:g}, "
        f"nb_batches {s.nb_batches}, batch_size {s.batch_size}, pool_factor {s.pool_factor} "
        f"({s.pool} gradients per sample); {torch.get_num_threads()} threads; our Weibull "
        f"fit from shape starts {' '.join(f'{c:g}' for c in s.c_init)}, ART's from 1"
    )
    times: dict[str, list[float]] = {"ours": [], "ART": []}
    scores: dict[str, np.ndarray] = {}
    statuses: Counter[str] = Counter()
    for r in range(max(args.rounds, args.art_rounds)):  # interleaved rounds
        if r < args.rounds:
            t, scores["ours"], statuses = ours(model, x, s)
            times["ours"].append(t)
        if r < args.art_rounds:
            t, scores["ART"] = art(clf, x, s, args.seed + r)
            times["ART"].append(t)
    t_ours, t_art = statistics.median(times["ours"]), statistics.median(times["ART"])
    n = args.samples
    print(f"median of {args.rounds} rounds (ours) / {args.art_rounds} (ART)")
    print(f"{'':28s} {'s/sample':>10s} {'samples/s':>10s} {'speed-up':>9s}")
    print(f"{'ART clever_u':28s} {t_art / n:10.3f} {n / t_art:10.2f} {'x1.00':>9s}")
    print(f"{'dmlcli clever_u':28s} {t_ours / n:10.3f} {n / t_ours:10.2f} x{t_art / t_ours:8.1f}")
    a, b = scores["ours"], scores["ART"]
    rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-12)
    # ART's unbounded scipy fit now and then puts the Weibull location at ~1e6 x the observed
    # maximum gradient norm: its score is then ~0 where ours is not. Counted, not hidden.
    ran_off = (b < 1e-3 * np.maximum(a, 1e-12)) & (a > 1e-6)
    print()
    print(f"{'sample':>6s} {'test idx':>8s} {'ours':>9s} {'ART':>9s} {'rel diff':>9s}")
    for i, (j, u, v, d, off) in enumerate(zip(idx.tolist(), a, b, rel, ran_off, strict=True)):
        note = "  ART's fit ran off (score ~0)" if off else ""
        print(f"{i:6d} {j:8d} {u:9.4f} {v:9.4f} {min(d, 9.999):9.1%}{note}")
    ok = ~ran_off
    if ok.any():
        print(
            f"median relative difference {np.median(rel[ok]):.1%} over the {int(ok.sum())} "
            f"samples where ART's fit stayed finite; {int(ran_off.sum())} where it ran off"
        )
    print(
        f"median score ours {np.median(a):.4f} vs ART {np.median(b):.4f} "
        f"(ratio {np.median(a) / max(np.median(b), 1e-12):.3f}, all samples)"
    )
    print("our fits: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))


if __name__ == "__main__":
    main()
