"""training/checkpointing.py: atomic save, keep-last-good, exact resume (weights, optimizer, scheduler, RNG)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from minisam_train.training.checkpointing import LATEST_FILE, CheckpointManager


def _setup(seed=0):
    from accelerate import Accelerator

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    net[0].weight.requires_grad_(False)  # a frozen part, like a QLoRA base
    acc = Accelerator(cpu=True)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    net, opt, sched = acc.prepare(net, opt, sched)
    return acc, net, opt, sched


def _step(net, opt, sched):
    # Consumes python, numpy and torch RNG, so a resume that forgot one of them would diverge.
    x = torch.randn(8, 4) + float(np.random.rand()) + random.random()
    loss = net(x).pow(2).mean()
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    return float(loss.detach())


def _seed(s):
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def test_resume_equals_uninterrupted_run(tmp_path):
    acc, net, opt, sched = _setup()
    _seed(1)
    full = [_step(net, opt, sched) for _ in range(6)]

    acc, net, opt, sched = _setup()
    ckpt = CheckpointManager(tmp_path / "ck", acc, net)
    _seed(1)
    first = [_step(net, opt, sched) for _ in range(3)]
    ckpt.save(3, {"note": "x"})
    _step(net, opt, sched)  # work after the checkpoint is lost in the "crash"

    acc, net2, opt2, sched2 = _setup()  # same frozen base (it is never checkpointed) ...
    with torch.no_grad():  # ... but trainable weights and RNG must come from the checkpoint
        net2[2].weight.add_(1.0)
    _seed(123)
    state = CheckpointManager(tmp_path / "ck", acc, net2).load()
    assert state["step"] == 3 and state["note"] == "x"
    rest = [_step(net2, opt2, sched2) for _ in range(3)]
    assert first + rest == pytest.approx(full, abs=0, rel=0)  # bit-identical
    assert not (tmp_path / "ck" / "step-00000003" / "model.bin").exists()  # model saved by us, not twice


def test_keeps_last_good_and_ignores_half_written(tmp_path):
    acc, net, opt, sched = _setup()
    ckpt = CheckpointManager(tmp_path, acc, net, keep=2)
    for s in (1, 2, 3):
        _step(net, opt, sched)
        ckpt.save(s)
    assert [p.name for p in ckpt.complete_checkpoints()] == ["step-00000002", "step-00000003"]
    # a crash mid-write leaves a temp dir and an incomplete step dir: neither is ever loaded
    (tmp_path / ".tmp-step-00000004-99999").mkdir()
    (tmp_path / "step-00000009").mkdir()
    (tmp_path / LATEST_FILE).write_text("step-00000009\n")
    assert ckpt.latest().name == "step-00000003"
    assert ckpt.load()["step"] == 3


def test_no_checkpoint_returns_none(tmp_path):
    acc, net, _, _ = _setup()
    assert CheckpointManager(tmp_path / "none", acc, net).load() is None
