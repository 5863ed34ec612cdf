"""NF4 (bitsandbytes) on both backends: smaller footprint, correct per-layer block sizes, outputs close to fp32."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import bitsandbytes as bnb  # a hard dependency: a broken install fails here, it is not skipped

from napari_qlora_minisam import MiniSamPredictor, load_model
from napari_qlora_minisam.masks import dice, tight_box
from napari_qlora_minisam.quantization import blocksize_for, misaligned_linears, quantize_linear_layers


def test_blocksize_never_straddles_rows_on_cpu():
    assert blocksize_for(128) == 64 and blocksize_for(160) == 32 and blocksize_for(96) == 32
    assert blocksize_for(100) is None  # no correct block size: the layer stays fp32
    assert blocksize_for(160, "cuda") == 64  # the CUDA kernels index blocks over the flat tensor


@pytest.mark.slow
def test_misaligned_rows_stay_accurate_on_real_weights():
    """LiteMedSAM's 160-wide stage: rows of very different norms are where a straddling block shows."""
    from napari_qlora_minisam.models.litemedsam import build_litemedsam_net

    layer = build_litemedsam_net().image_encoder.layers[2].blocks[0].attn.qkv
    assert layer.in_features == 160
    x = torch.randn(64, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = layer(x)
        q = quantize_linear_layers(torch.nn.Sequential(copy.deepcopy(layer)))[0]
        assert isinstance(q, bnb.nn.Linear4bit) and q.weight.quant_state.blocksize == 32
        err = float((q(x) - ref).norm() / ref.norm())
    assert err < 0.12  # NF4's usual ~0.09; a block of 64 here gives ~0.35 on bitsandbytes 0.50's CPU kernel


def test_skip_patterns_keep_layers_fp32():
    net = torch.nn.Sequential()
    net.add_module("enc", torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)))
    net.add_module("dec", torch.nn.Linear(64, 64))
    quantize_linear_layers(net, skip=("enc.1", "nothing.*"))
    assert isinstance(net.enc[0], bnb.nn.Linear4bit) and isinstance(net.dec, bnb.nn.Linear4bit)
    assert type(net.enc[1]) is torch.nn.Linear
    quantize_linear_layers(net2 := copy.deepcopy(net), skip=("enc.*",))
    assert type(net2.enc[1]) is torch.nn.Linear


def test_tiny_hf_nf4_is_smaller_and_close(tiny_hf):
    q = load_model("tiny_hf_sam", quantize="nf4", device="cpu")
    assert q.quantization == "nf4" and q.identity == tiny_hf.identity
    assert q.memory_footprint() < 0.5 * tiny_hf.memory_footprint()
    assert q.num_parameters() == tiny_hf.num_parameters()
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in q.net.modules())
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    ref = MiniSamPredictor(tiny_hf).set_image(image).embedding
    got = MiniSamPredictor(q).set_image(image).embedding
    assert float((got - ref).norm() / ref.norm()) < 0.3


def test_hf_directory_nf4_through_bitsandbytes_config(tmp_path, tiny_hf):
    """A save_pretrained folder is quantized by transformers; layers whose width does not fit the single
    block size (the tiny encoder's 96) stay fp32 instead of being quantized wrongly."""
    tiny_hf.net.save_pretrained(tmp_path)
    q = load_model(str(tmp_path), quantize="nf4", device="cpu")
    skipped = misaligned_linears(tiny_hf.net)
    assert "vision_encoder.layers.0.attn.qkv" in skipped
    assert type(q.net.get_submodule("vision_encoder.layers.0.attn.qkv")) is torch.nn.Linear
    assert isinstance(q.net.get_submodule("mask_decoder.transformer.layers.0.self_attn.q_proj"), bnb.nn.Linear4bit)
    assert q.identity == tiny_hf.identity
    assert q.memory_footprint() < 0.6 * tiny_hf.memory_footprint()
    box = np.array([[10.0, 20.0, 200.0, 150.0]], np.float32)
    emb = torch.randn(1, 256, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref, _ = tiny_hf.decode(emb, boxes=torch.from_numpy(box))
        got, _ = q.decode(emb, boxes=torch.from_numpy(box))
    assert float((got - ref).norm() / ref.norm()) < 0.3


def test_litemedsam_nf4_footprint_and_dice(litemedsam, heart_slice):
    """The default NF4 LiteMedSAM: under half the fp32 footprint, and still segments the LV."""
    q = load_model("litemedsam", quantize="nf4", device="cpu")
    fp32 = litemedsam.memory_footprint()
    assert q.memory_footprint() < 0.5 * fp32
    assert q.num_parameters() == litemedsam.num_parameters()
    kept = [n for n, m in q.net.named_modules() if type(m) is torch.nn.Linear]
    assert kept and all(n.startswith("image_encoder.") and n.endswith("mlp.fc2") for n in kept)
    image, label = heart_slice
    predictor = MiniSamPredictor(q)
    predictor.set_image(image)
    masks, _, _ = predictor.predict(box=tight_box(label == 85), multimask=False)
    assert dice(masks[0], label == 85) > 0.85


def test_loading_or_saving_an_adapter_after_predicting_leaves_the_nf4_base_as_it_was(tmp_path):
    """bitsandbytes undoes its CPU repacking lossily whenever ``state_dict()`` runs, which peft does to load
    and save adapters; the base must still predict bit for bit as before (``quantization.unpack_cpu_4bit``)."""
    from napari_qlora_minisam.adapters import add_lora, load_adapter, save_adapter, set_adapter

    donor = load_model("tiny_hf_sam", device="cpu")
    add_lora(donor, "donor", parts=("decoder",))
    save_adapter(donor, tmp_path / "donor", "donor", {})
    model = load_model("tiny_hf_sam", quantize="nf4", device="cpu")
    image = np.random.default_rng(0).random((64, 80)).astype(np.float32)

    def logits():
        predictor = MiniSamPredictor(model)
        predictor.set_image(image)
        return predictor.predict(box=[5, 8, 50, 40], multimask=False)[2]

    before = logits()
    layers = [m for m in model.net.modules() if isinstance(m, bnb.nn.Linear4bit)]
    repacked = sum(bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False)) for m in layers)
    load_adapter(model, tmp_path / "donor")
    set_adapter(model, None)
    np.testing.assert_array_equal(logits(), before)
    save_adapter(model, tmp_path / "copy", "donor", {})
    np.testing.assert_array_equal(logits(), before)
    assert repacked == 0 or repacked == sum(bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False))
                                            for m in layers)           # and the fast kernel is back
