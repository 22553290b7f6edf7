"""Eq. 3 loss, masked training, and exact resume after SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from dmlcli.defenses import dml_terms
from dmlcli.files import read_tensors
from dmlcli.train import Trainer, TrainerSettings, run_training
from tests.helpers import tiny_ensemble


def test_eq3_terms_match_a_hand_computation():
    ens = tiny_ensemble(members=2)
    logits = torch.randn(2, 4, 10)
    y = torch.tensor([0, 1, 2, 3])
    terms = dml_terms(logits, y, ens)
    m = ens.head.diag_m()  # [2, 10] diagonals
    ce = sum(torch.nn.functional.cross_entropy(logits[k], y) for k in range(2))
    ortho = 2 * torch.sqrt(((m[0] * m[1]) ** 2).sum())  # ||M_0 M_1|| + ||M_1 M_0||
    l1 = m[0, :5].abs().sum() + m[1, 5:].abs().sum()  # I_0 = 0..4, I_1 = 5..9
    assert torch.allclose(terms["ce"], ce, atol=1e-5)
    assert torch.allclose(terms["ortho"], ortho, atol=1e-5)
    assert torch.allclose(terms["l1"], l1, atol=1e-5)
    assert torch.allclose(terms["total"], ce + 0.01 * ortho + 0.01 * l1, atol=1e-5)


def _data(n: int, seed: int = 0):
    from dmlcli.data import load_dataset

    x, y = load_dataset("digits", "train")
    return x[:n], y[:n]


def test_masked_entries_stay_exactly_fixed_and_trainable_ones_move():
    ens = tiny_ensemble(members=5)
    before = ens.head.diag_m().detach().clone()
    trainer = Trainer(ens, _data(256), _data(64), TrainerSettings(epochs=1, batch_size=64, lr=0.05))
    run_training(trainer)
    after = ens.head.diag_m().detach()
    mask = ens.head.mask
    assert torch.all(after[~mask] == 0.1)  # exactly the fixed value
    assert not torch.allclose(after[mask], before[mask])


def test_baseline_has_only_cross_entropy():
    ens = tiny_ensemble(head="linear")
    terms = dml_terms(torch.randn(3, 2, 10), torch.tensor([1, 2]), ens)
    assert terms["ortho"] == 0 and terms["l1"] == 0 and terms["total"] == terms["ce"]


def _train_cmd(root, *extra):
    return [
        sys.executable,
        "-m",
        "dmlcli",
        "train",
        "digits",
        "--members",
        "3",
        "--epochs",
        "3",
        "--batch-size",
        "32",
        "--checkpoint-every",
        "5",
        "--artifacts",
        str(root),
        *extra,
    ]


@pytest.mark.slow
def test_resume_after_sigkill_gives_identical_weights(tmp_path):
    """SIGKILL ``dml train`` at 5 seeded points, each followed by ``--resume``: the final
    weights equal an uninterrupted run's bit for bit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(ref), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    run_dir = killed / "models" / "digits-dml"
    resume, final = run_dir / "resume.safetensors", run_dir / "model.safetensors"
    rng = random.Random(11)
    kills = 0
    for _ in range(5):
        before = resume.stat().st_mtime_ns if resume.exists() else None
        proc = subprocess.Popen(
            _train_cmd(killed, "--resume"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        # wait for this process's first checkpoint, then a seeded extra delay
        while time.time() < deadline and proc.poll() is None:
            if resume.exists() and resume.stat().st_mtime_ns != before:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if final.exists():  # finished before the kill: nothing left to interrupt
            break
        kills += 1
    assert kills == 5, f"only {kills} of 5 kills landed before training finished"
    subprocess.run(_train_cmd(killed, "--resume"), check=True, env=env, capture_output=True)
    a, _, _ = read_tensors(ref / "models" / "digits-dml" / "model.safetensors")
    b, _, _ = read_tensors(final)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
