"""Snapshots of what a training run changes: trainable parameters and floating-point buffers."""

from __future__ import annotations

import torch


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters that require grad, plus floating-point buffers (e.g. BatchNorm statistics).

    Buffers are included because a network trained in ``train()`` mode updates them even when its weights
    are frozen; without them a resumed run would not match an uninterrupted one.
    """
    out = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    for n, b in model.named_buffers():
        if b is not None and torch.is_floating_point(b):
            out[n] = b.detach().cpu().clone()
    return out


def load_trainable_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a :func:`trainable_state_dict` back in place; every trainable parameter must be present."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    unknown = [n for n in state if n not in params and n not in buffers]
    if missing or unknown:
        raise RuntimeError(
            f"Checkpoint does not match the model: {len(missing)} trainable tensors missing "
            f"(e.g. {missing[:3]}), {len(unknown)} unknown (e.g. {unknown[:3]}). Was it written by a run with "
            "another model or LoRA configuration? Delete the checkpoint folder or set train.resume=false."
        )
    with torch.no_grad():
        for n, t in state.items():
            target = params.get(n, buffers.get(n))
            target.copy_(t.to(target.device, target.dtype))
