"""PGD-10 throughput: dmlcli's attack code vs torchattacks' PGD on the same K=5 ensemble.

Both attack the summed member logits with the same eps, step size, steps, random start and
seed; torchattacks sees the ensemble wrapped as one module ``x -> sum_k z_k``. Robust
accuracy is scored on the argmax of the summed logits (torchattacks' own criterion) and, for
ours, also on the vote. Ours drops a sample from the batch once it is fooled and keeps that
iterate, so its robust accuracy can only be equal or lower (stronger), never higher.

Each also prints the fraction of the compute floor it reaches: the floor is ``steps``
forward+backward passes (gradient w.r.t. the input of the summed-logit cross-entropy) of the
same ensemble per batch of the same size, nothing else; ``floor time / measured time``.
Ours drops fooled samples, so it can pass 100%; ``dmlcli PGD (keep=loss)`` runs every sample
through every step (no early exit), the fraction that measures its per-step overhead. All
are timed in interleaved rounds in one process (``benchmarks/rounds.py``); times are the
medians over rounds, fractions the medians of the per-round fractions.

    python benchmarks/attack_throughput.py                       # trained digits K=5 run
    python benchmarks/attack_throughput.py --checkpoint /tmp/fm/models/fashion-mnist-dml \\
        --data-dir /usr/share/datasets/fashion-mnist --eps 0.1

Without ``--checkpoint`` it trains a small digits DML ensemble first (about a minute).
Needs ``pip install torchattacks`` (a test-only dependency).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from rounds import floor_fraction, floor_line, interleaved_rounds, sync
from torch import nn


class SummedLogits(nn.Module):
    """The ensemble as one classifier: ``x -> sum_k z_k`` ``[B, C]``."""

    def __init__(self, ensemble: nn.Module) -> None:
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ensemble(x).sum(0)


def main() -> None:
    import torchattacks

    from dmlcli import load_dataset, load_run
    from dmlcli.attacks import Objective, create_attack
    from dmlcli.cli.app import main as dml
    from dmlcli.data import eval_indices, to_float
    from dmlcli.models.aggregate import vote

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="run folder or .safetensors of a K=5 ensemble")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    if args.checkpoint is None:
        root = tempfile.mkdtemp()
        try:
            dml(["train", "digits", "--members", "5", "--epochs", "6", "--artifacts", root])
        except SystemExit as exc:
            if exc.code:
                raise
        model = load_run("digits-dml", root, device=args.device)
    else:
        model = load_run(args.checkpoint, device=args.device)
    torch.set_grad_enabled(True)
    dataset = model.config.dataset
    x_all, y_all = load_dataset(dataset, "test", args.data_dir, image_size=model.config.image_size)
    idx = eval_indices(len(y_all), min(args.n, len(y_all)), 0)
    x, y = to_float(x_all[idx]).to(args.device), y_all[idx].to(args.device)
    alpha = 2.5 * args.eps / args.steps
    wrapped = SummedLogits(model).eval()
    objective = Objective(model, "sum", "sum")  # same success criterion as torchattacks

    starts = range(0, len(x), args.batch_size)

    def ours(keep: str = "adversarial") -> torch.Tensor:
        out = []
        for s in starts:
            attack = create_attack(
                "pgd", eps=args.eps, steps=args.steps, step_size=alpha, seed=s, keep=keep
            )
            out.append(attack(objective, x[s : s + args.batch_size], y[s : s + args.batch_size]))
        return torch.cat(out)

    def theirs() -> torch.Tensor:
        attack = torchattacks.PGD(wrapped, eps=args.eps, alpha=alpha, steps=args.steps)
        out = []
        for s in starts:
            torch.manual_seed(s)
            out.append(attack(x[s : s + args.batch_size], y[s : s + args.batch_size]))
        return torch.cat(out)

    def floor() -> None:
        """``steps`` forward+backward passes per batch (input gradient), nothing else."""
        for s in starts:
            xb, yb = x[s : s + args.batch_size], y[s : s + args.batch_size]
            for _ in range(args.steps):
                xg = xb.detach().requires_grad_(True)
                loss = F.cross_entropy(wrapped(xg), yb, reduction="sum")
                torch.autograd.grad(loss, xg)

    results: dict[str, torch.Tensor] = {}

    def timed(name: str, fn):
        def run() -> float:
            sync(args.device)
            began = time.perf_counter()
            results[name] = fn()
            sync(args.device)
            return time.perf_counter() - began

        run()  # warm-up
        return run

    pipelines = {
        "dmlcli PGD": timed("ours", ours),
        "dmlcli PGD (keep=loss)": timed("ours-loss", lambda: ours("loss")),
        "torchattacks PGD": timed("theirs", theirs),
        "floor": timed("floor", floor),
    }
    per_round = interleaved_rounds(pipelines, args.rounds)
    times = {name: statistics.median(v) for name, v in per_round.items()}
    t_ours, t_ref = times["dmlcli PGD"], times["torchattacks PGD"]
    adv_ours, adv_ref = results["ours"], results["theirs"]
    with torch.no_grad():
        clean = model(x)
        z_ours, z_ref = model(adv_ours), model(adv_ref)
    ok = clean.sum(0).argmax(-1) == y

    def acc(z: torch.Tensor) -> float:
        return 100.0 * ((z.sum(0).argmax(-1) == y) & ok).float().mean().item()

    print(
        f"{dataset} K={model.num_members} {model.config.head}, n={len(x)}, "
        f"PGD-{args.steps} eps {args.eps:g} step {alpha:g}, batch {args.batch_size}, "
        f"device {args.device}, {torch.get_num_threads()} threads, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(f"clean accuracy (sum)       {100.0 * ok.float().mean().item():6.2f}%")
    print(
        f"dmlcli PGD       {len(x) / t_ours:8.1f} img/s   robust (sum) {acc(z_ours):6.2f}%   "
        f"robust (vote) {100.0 * ((vote(z_ours) == y) & ok).float().mean().item():6.2f}%"
    )
    print(f"torchattacks PGD {len(x) / t_ref:8.1f} img/s   robust (sum) {acc(z_ref):6.2f}%")
    print(
        f"speed ratio (dmlcli / torchattacks): {t_ref / t_ours:.2f}x; "
        f"robust accuracy difference {acc(z_ours) - acc(z_ref):+.2f} points"
    )
    batches = len(starts)
    for name in ("dmlcli PGD", "dmlcli PGD (keep=loss)", "torchattacks PGD"):
        fraction = floor_fraction(per_round["floor"], per_round[name])
        line = floor_line(fraction, times["floor"] / batches, times[name] / batches)
        print(f"{name:24s} {line}")
    linf = max((adv_ours - x).abs().max().item(), (adv_ref - x).abs().max().item())
    print(f"max |delta|_inf over both: {linf:.6f} (eps {args.eps:g})")


if __name__ == "__main__":
    main()
