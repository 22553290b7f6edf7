"""Randomized-smoothing throughput: ``dml certify``'s loop against the raw inference limit.

Both classify noisy copies of test images with the same K-member ensemble, the same decision
rule (majority ``vote`` by default) and the same batch size:

- ours: :func:`dmlcli.eval.certify.certify_samples` (CERTIFY with ``n0`` + ``n`` draws and
  PREDICT with ``predict_n`` draws per sample: noise generation, the ensemble, the decision
  rule, class counts, the Clopper-Pearson bound and the binomial test);
- raw limit: ``torch.no_grad`` forward of the ensemble plus the decision rule on one
  preallocated batch of the same size, repeated for the same number of draws (no noise, no
  counting): what the hardware gives for these forward passes alone.

Prints noisy forward passes per second of each and ours as a share of the limit (target: at
least 80%). Times on a shared machine are noisy: the two are measured in interleaved rounds
in one process and the median per pipeline is reported (``--rounds``).

    python benchmarks/certify_throughput.py [--samples 3] [--n 10000] [--batch-size 1000]
    python benchmarks/certify_throughput.py --checkpoint artifacts/models/fashion-mnist-dml

Without ``--checkpoint`` the ensemble is an untrained ``--dataset`` (default fashion-mnist,
LeNet-5 on 28x28) DML ensemble with K=5.
"""

from __future__ import annotations

import argparse
import time

import torch
from rounds import interleaved_medians

from dmlcli.data import eval_indices, load_dataset, to_float
from dmlcli.eval import certify as ce
from dmlcli.models.aggregate import create_decision
from dmlcli.models.config import resolve_config
from dmlcli.models.ensemble import Ensemble


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ours(ensemble, decision, x, y, idx, s: ce.CertifySettings, device: str) -> float:
    """Noisy forward passes per second of ``certify_samples`` (CERTIFY + PREDICT)."""
    sync(device)
    start = time.perf_counter()
    ce.certify_samples(ensemble, decision, x, y, idx, s, seed=0)
    sync(device)
    draws = len(x) * (s.n0 + s.n + s.predict_n)
    return draws / (time.perf_counter() - start)


@torch.no_grad()
def raw(ensemble, decision, x, s: ce.CertifySettings, device: str) -> float:
    """Images per second of forward + decision on one preallocated batch, same draw count."""
    rule = create_decision(decision, ensemble.trainable_sets)
    batch = x[:1].expand(s.batch_size, *x.shape[1:]).clone()
    batch.add_(torch.randn_like(batch), alpha=s.sigma)
    per_sample = [s.n0, s.n, s.predict_n]  # the same batches as ours, remainders included
    sizes = [
        min(s.batch_size, m - done) for m in per_sample for done in range(0, m, s.batch_size)
    ] * len(x)
    sync(device)
    start = time.perf_counter()
    for b in sizes:
        rule(ensemble(batch[:b]))
    sync(device)
    return sum(sizes) / (time.perf_counter() - start)


def main() -> None:
    from dmlcli import load_run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help=".safetensors file of a stored run (default: untrained)")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--decision", default="vote")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--predict-n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    if args.checkpoint:
        ensemble = load_run(args.checkpoint)
    else:
        ensemble = Ensemble(resolve_config(args.dataset, members=args.members, seed=0))
    ensemble = ensemble.eval().to(args.device)
    cfg = ensemble.config
    xs, ys = load_dataset(cfg.dataset, "test", args.data_dir, image_size=cfg.image_size)
    idx = eval_indices(len(xs), args.samples, 0)
    x, y = to_float(xs[idx]).to(args.device), ys[idx]
    s = ce.CertifySettings(
        sigma=args.sigma,
        n0=args.n0,
        n=args.n,
        predict_n=args.predict_n,
        batch_size=args.batch_size,
    ).validate()
    print(
        f"K={ensemble.num_members} {cfg.backbone} {cfg.head} ensemble "
        f"({'stored' if args.checkpoint else 'untrained'}), {cfg.dataset} "
        f"{cfg.image_size}x{cfg.image_size}, decision {args.decision}; {args.samples} "
        f"samples x (n0 {s.n0} + n {s.n} + predict_n {s.predict_n}) draws, sigma {s.sigma:g}, "
        f"batch {s.batch_size}; device {args.device}, {torch.get_num_threads()} threads"
    )
    pipelines = {
        "raw limit (no_grad forward + decision, preallocated batch)": lambda: raw(
            ensemble, args.decision, x, s, args.device
        ),
        "dml certify loop (certify_samples)": lambda: ours(
            ensemble, args.decision, x, y, idx, s, args.device
        ),
    }
    warm = ce.CertifySettings(sigma=s.sigma, n0=1, n=1, predict_n=1)  # imports scipy, etc.
    raw(ensemble, args.decision, x[:1], warm, args.device)
    ours(ensemble, args.decision, x[:1], y[:1], idx[:1], warm, args.device)
    rates = interleaved_medians(pipelines, args.rounds)
    limit = next(iter(rates.values()))
    print(f"median of {args.rounds} interleaved rounds")
    for name, rate in rates.items():
        print(f"{name:60s} {rate:10,.0f} draws/s   {rate / limit:6.1%} of the limit")


if __name__ == "__main__":
    main()
