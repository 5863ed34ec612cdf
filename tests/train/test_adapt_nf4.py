"""The QLoRA path on the CPU: NF4 + double-quantized frozen base, only LoRA weights train."""

from __future__ import annotations

import json

import bitsandbytes as bnb  # a hard dependency: a broken install fails here, it is not skipped
import pytest
import torch

from minisam_train.tasks import adapt
from napari_qlora_minisam import load_model
from napari_qlora_minisam.adapter_training.prompt_sampling import PromptBatch
from napari_qlora_minisam.adapter_training.qlora import QLoRAMiniSAM


def _prompts():
    return PromptBatch("points", points=torch.tensor([[[90.0, 100.0], [20.0, 30.0]]]),
                       labels=torch.tensor([[1, 0]]))


def test_lora_gets_gradients_after_an_inference_pass():
    """bitsandbytes repacks 4-bit weights for a no-backward CPU kernel on the first eval call; training
    must undo that, or LoRA layers below a repacked layer would get no gradient."""
    backend = load_model("tiny_hf_sam", quantize="nf4", device="cpu")
    emb = torch.randn(1, 256, 16, 16)
    with torch.no_grad():
        before = backend.decode(emb, points=_prompts().points, labels=_prompts().labels)[0]
    model = QLoRAMiniSAM(backend, "ct", parts=("decoder",))
    with torch.no_grad():
        model.eval()
        # same function on the autograd-aware kernel (the repacked one computes in bf16: ~1e-4 apart)
        torch.testing.assert_close(model.decode(emb, _prompts())[0], before, rtol=0, atol=2e-3)
    model.train()
    low, _ = model.decode(emb, _prompts())
    low.square().mean().backward()
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b.values())
    frozen = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    assert frozen == []                                                   # only adapter weights train
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def test_qlora_run_on_cpu(tmp_path):
    from tests.train.test_adapt_run import tiny_cfg

    summary, model = adapt.train(tiny_cfg(tmp_path, "nf4", "quantize=nf4", "train.steps=1", "data.max_samples=1",
                                          "data.val_fraction=0", "data.augment.views_per_image=1"))
    assert summary["quantize"] == "nf4" and summary["steps_done"] == 1
    n4 = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert n4 and all(m.weight.quant_state.nested for m in n4)            # double quantization
    meta = json.loads((tmp_path / "nf4_adapter" / "minisam_adapter.json").read_text())
    assert meta["quantize"] == "nf4" and meta["training"]["trainable_share"] < 0.01
    model.eval()
    emb = torch.randn(1, 256, 16, 16)
    with torch.no_grad():
        expected = model.decode(emb, _prompts())[0]
        reloaded = load_model("tiny_hf_sam", quantize="nf4", adapters=tmp_path / "nf4_adapter", device="cpu")
        got = reloaded.decode(emb, points=_prompts().points, labels=_prompts().labels)[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-3)  # inference may use the repacked kernel
