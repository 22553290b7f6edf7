"""Training throughput of `dml train`'s loop against a conventional reference, in one run.

Both train K=5 LeNet-5 members on Fashion-MNIST with the same batch size, number of steps,
optimizer and loss (the baseline's summed cross-entropy, so only the pipeline differs):

- ours (loop / batched): the in-memory uint8 dataset and :class:`dmlcli.train.Trainer`, with
  members evaluated by a loop over stacked parameters or by ``torch.func.vmap``;
- reference: a torchvision-style ``Dataset`` that converts one PIL image at a time
  (``ToTensor`` + ``Normalize``), a ``DataLoader``, and a Python loop over five textbook
  LeNet-5 ``nn.Module``s (conv -> ReLU -> max-pool, default NCHW layout), the same shapes as
  ours. Ours pools before the ReLU (the same function) and runs channels-last on the CPU.

Prints images/s for each and the ratio to the reference. Times on a shared machine are noisy:
the pipelines are measured in interleaved rounds in one process and the median per pipeline
is reported (``--rounds``).

    python benchmarks/train_throughput.py [--steps 40] [--batch-size 128] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
from PIL import Image
from rounds import interleaved_medians
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dmlcli.data import load_dataset
from dmlcli.models.config import resolve_config
from dmlcli.models.ensemble import Ensemble
from dmlcli.train import Trainer, TrainSettings


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


def ours(x, y, steps: int, batch: int, device: str, mode: str) -> float:
    """Images/s of `dml train`'s Trainer (baseline head, same optimizer and loss)."""
    config = resolve_config("fashion-mnist", members=5, head="linear", seed=0)
    ens = Ensemble(config, mode=mode)
    settings = TrainSettings(epochs=1, batch_size=batch, optimizer="adam", lr=1e-3)
    trainer = Trainer(ens, (x, y), (x[:10], y[:10]), settings, device=device)
    for _ in range(3):
        trainer.train_step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


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
        "dml train (loop members)": lambda: ours(
            x, y, args.steps, args.batch_size, args.device, "loop"
        ),
        "dml train (batched members, vmap)": lambda: ours(
            x, y, args.steps, args.batch_size, args.device, "batched"
        ),
    }
    rates = interleaved_medians(pipelines, args.rounds)
    ref = next(iter(rates.values()))
    print(f"median of {args.rounds} interleaved rounds")
    for name, rate in rates.items():
        print(f"{name:52s} {rate:10,.0f} img/s   x{rate / ref:.2f}")


if __name__ == "__main__":
    main()
