"""Training throughput of `dml train`'s loop against a conventional reference, in one run.

Both train K=5 LeNet-5 members on Fashion-MNIST with the same batch size, number of steps,
optimizer and loss (the baseline's summed cross-entropy, so only the pipeline differs):

- ours (loop / batched): the in-memory uint8 dataset and :class:`dmlcli.train.Trainer`, with
  members evaluated by a loop over stacked parameters or by ``torch.func.vmap``;
- reference: a torchvision-style ``Dataset`` that converts one PIL image at a time
  (``ToTensor`` + ``Normalize``), a ``DataLoader``, and a Python loop over five textbook
  LeNet-5 ``nn.Module``s (conv -> ReLU -> max-pool, default NCHW layout), the same shapes as
  ours. Ours pools before the ReLU (the same function) and runs channels-last on the CPU.

Prints images/s for each and the ratio to the reference, and for ours the fraction of the
compute floor it reaches: the floor is one forward+backward and Adam step of the same K=5
ensemble (same mode) on a random batch already on the device, the summed member
cross-entropy as loss, no data, no logging: ``floor time per batch / measured time per
batch``. Times on a shared machine are noisy: the pipelines and floors are measured in
interleaved rounds in one process; the median per pipeline is reported (``--rounds``), and
the floor fraction is the median of the per-round fractions.

    python benchmarks/train_throughput.py [--steps 40] [--batch-size 128] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from PIL import Image
from rounds import floor_fraction, floor_line, interleaved_rounds, seconds_per_call
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dmlcli.data import load_dataset
from dmlcli.models.config import resolve_config
from dmlcli.models.ensemble import Ensemble
from dmlcli.train import Trainer, TrainerSettings


class PilDataset(Dataset):
    """The usual way: one PIL image per ``__getitem__``, torchvision transforms."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        import torchvision.transforms as T

        self.images = [Image.fromarray(img[0].numpy(), mode="L") for img in x]
        self.labels = y.tolist()
        self.transform = T.Compose([T.ToTensor(), T.Normalize((0.2860,), (0.3530,))])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def textbook_lenet5() -> nn.Module:
    """LeNet-5 as usually written (conv -> ReLU -> pool), the shapes of ``lenet5``."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


def reference(x, y, steps: int, batch: int, device: str) -> float:
    """Images/s of the conventional pipeline (normalization in the transform)."""
    torch.manual_seed(0)
    members = [textbook_lenet5().to(device) for _ in range(5)]
    params = [p for m in members for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    loader = DataLoader(PilDataset(x, y), batch_size=batch, shuffle=True, num_workers=0)
    it = iter(loader)
    done, start = 0, None
    for step in range(steps + 3):
        if step == 3:  # warm-up steps are not timed
            start, done = time.perf_counter(), 0
        xb, yb = next(it)
        xb, yb = xb.to(device), yb.to(device)
        loss = sum(nn.functional.cross_entropy(m(xb), yb) for m in members)
        opt.zero_grad()
        loss.backward()
        opt.step()
        done += len(yb)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def _ensemble(mode: str) -> Ensemble:
    """The K=5 LeNet-5 baseline ensemble every pipeline of ours trains."""
    return Ensemble(resolve_config("fashion-mnist", members=5, head="linear", seed=0), mode=mode)


def ours(x, y, steps: int, batch: int, device: str, mode: str) -> float:
    """Images/s of `dml train`'s Trainer (baseline head, same optimizer and loss)."""
    settings = TrainerSettings(epochs=1, batch_size=batch, optimizer="adam", lr=1e-3)
    trainer = Trainer(_ensemble(mode), (x, y), (x[:10], y[:10]), settings, device=device)
    return batch / seconds_per_call(trainer.train_step, steps, device)


def floor(steps: int, batch: int, device: str, mode: str) -> float:
    """Images/s of the compute floor: forward, backward and Adam step of the same ensemble on
    a random batch already on the device (summed member cross-entropy), nothing else."""
    ens = _ensemble(mode).to(device).train()
    opt = torch.optim.Adam([p for p in ens.parameters() if p.requires_grad], lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    xb = torch.rand(batch, 1, 28, 28, generator=gen).to(device)
    yb = torch.randint(10, (batch,), generator=gen).to(device)

    def step() -> None:
        loss = sum(F.cross_entropy(z, yb) for z in ens(xb))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / seconds_per_call(step, steps, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    x, y = load_dataset("fashion-mnist", "train", args.data_dir)
    n = args.batch_size * (args.steps + 4)
    x, y = x[:n], y[:n]
    print(
        f"K=5 LeNet-5, Fashion-MNIST, batch {args.batch_size}, {args.steps} timed steps, "
        f"device {args.device}, {torch.get_num_threads()} threads"
    )
    pipelines = {
        "reference (PIL Dataset + DataLoader + member loop)": lambda: reference(
            x, y, args.steps, args.batch_size, args.device
        ),
    }
    names = {"loop": "dml train (loop members)", "batched": "dml train (batched members, vmap)"}
    for mode, name in names.items():
        pipelines[name] = lambda m=mode: ours(x, y, args.steps, args.batch_size, args.device, m)
        pipelines[f"floor ({mode})"] = lambda m=mode: floor(
            args.steps, args.batch_size, args.device, m
        )
    per_round = interleaved_rounds(pipelines, args.rounds)
    rates = {name: statistics.median(v) for name, v in per_round.items()}
    ref = next(iter(rates.values()))
    print(f"median of {args.rounds} interleaved rounds")
    for name, rate in rates.items():
        if not name.startswith("floor"):
            print(f"{name:52s} {rate:10,.0f} img/s   x{rate / ref:.2f}")
    for mode, name in names.items():
        fraction = floor_fraction(per_round[name], per_round[f"floor ({mode})"])
        floor_s = args.batch_size / rates[f"floor ({mode})"]
        measured_s = args.batch_size / rates[name]
        print(f"{name:52s} {floor_line(fraction, floor_s, measured_s)}")


if __name__ == "__main__":
    main()
