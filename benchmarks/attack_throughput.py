"""PGD-10 throughput: dmlcli's attack code vs torchattacks' PGD on the same K=5 ensemble.

Both attack the summed member logits with the same eps, step size, steps, random start and
seed; torchattacks sees the ensemble wrapped as one module ``x -> sum_k z_k``. Robust
accuracy is scored on the argmax of the summed logits (torchattacks' own criterion) and, for
ours, also on the vote. Ours drops a sample from the batch once it is fooled and keeps that
iterate, so its robust accuracy can only be equal or lower (stronger), never higher.

    python benchmarks/attack_throughput.py                       # trained digits K=5 run
    python benchmarks/attack_throughput.py --checkpoint /tmp/fm/models/fashion-mnist-dml \\
        --data-dir /usr/share/datasets/fashion-mnist --eps 0.1

Without ``--checkpoint`` it trains a small digits DML ensemble first (about a minute).
Needs ``pip install torchattacks`` (a test-only dependency).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
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
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    if args.checkpoint is None:
        root = tempfile.mkdtemp()
        try:
            dml(["train", "digits", "--members", "5", "--epochs", "6", "--artifacts", root])
        except SystemExit as exc:
            if exc.code:
                raise
        model = load_run("digits-dml", root)
    else:
        model = load_run(args.checkpoint)
    torch.set_grad_enabled(True)
    dataset = model.config.dataset
    x_all, y_all = load_dataset(dataset, "test", args.data_dir, image_size=model.config.image_size)
    idx = eval_indices(len(y_all), min(args.n, len(y_all)), 0)
    x, y = to_float(x_all[idx]), y_all[idx]
    alpha = 2.5 * args.eps / args.steps
    wrapped = SummedLogits(model).eval()
    objective = Objective(model, "sum", "sum")  # same success criterion as torchattacks

    def ours() -> torch.Tensor:
        out = []
        for s in range(0, len(x), args.batch_size):
            attack = create_attack("pgd", eps=args.eps, steps=args.steps, step_size=alpha, seed=s)
            out.append(attack(objective, x[s : s + args.batch_size], y[s : s + args.batch_size]))
        return torch.cat(out)

    def theirs() -> torch.Tensor:
        attack = torchattacks.PGD(wrapped, eps=args.eps, alpha=alpha, steps=args.steps)
        out = []
        for s in range(0, len(x), args.batch_size):
            torch.manual_seed(s)
            out.append(attack(x[s : s + args.batch_size], y[s : s + args.batch_size]))
        return torch.cat(out)

    def timed(fn):
        fn()  # warm-up
        best, result = float("inf"), None
        for _ in range(args.repeats):
            began = time.perf_counter()
            result = fn()
            best = min(best, time.perf_counter() - began)
        return best, result

    t_ours, adv_ours = timed(ours)
    t_ref, adv_ref = timed(theirs)
    with torch.no_grad():
        clean = model(x)
        z_ours, z_ref = model(adv_ours), model(adv_ref)
    ok = clean.sum(0).argmax(-1) == y

    def acc(z: torch.Tensor) -> float:
        return 100.0 * ((z.sum(0).argmax(-1) == y) & ok).float().mean().item()

    print(
        f"{dataset} K={model.num_members} {model.config.head}, n={len(x)}, "
        f"PGD-{args.steps} eps {args.eps:g} step {alpha:g}, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads, best of {args.repeats}"
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
    linf = max((adv_ours - x).abs().max().item(), (adv_ref - x).abs().max().item())
    print(f"max |delta|_inf over both: {linf:.6f} (eps {args.eps:g})")


if __name__ == "__main__":
    main()
