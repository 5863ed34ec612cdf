"""A LoRA adapter that changes what a model computes, for tests of the paths that must follow it."""

from __future__ import annotations

import torch


def add_probe_lora(model, name: str = "probe", r: int = 4, scale: float = 0.05, seed: int = 0) -> None:
    """``add_lora`` with random B matrices (a fresh LoRA is a no-op: B = 0), then eval mode."""
    from napari_qlora_minisam.adapters import add_lora

    add_lora(model, name, r=r)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for param_name, p in model.net.named_parameters():
            if "lora_B" in param_name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    model.net.eval()
