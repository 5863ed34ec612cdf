"""HF ``SamModel`` decoders (distilled students, hub SAMs, random specs) through ``fast_decoder.py`` via ``hf_sam_layout``.

The reference is HF's own modules, called with ``fast_paths=False`` (the backend's module path), so these
tests fail if the views compute something else than HF's prompt encoder and mask decoder, and also if the
backend stops using the fast path (``fast_decoder()`` must be bound).
"""

from __future__ import annotations

import pytest
import torch

ATOL = RTOL = 1e-4

BOXES = torch.tensor([[30.0, 40.0, 120.0, 150.0], [100.0, 90.0, 200.0, 230.0], [5.0, 5.0, 60.0, 40.0]])
POINTS = torch.tensor([[[60.0, 70.0], [90.0, 100.0]], [[150.0, 160.0], [10.0, 10.0]], [[20.0, 20.0], [40.0, 30.0]]])
LABELS = torch.tensor([[1, 0], [1, 1], [0, 1]])
CASES = {
    "one_box": dict(boxes=BOXES[:1]),
    "three_boxes": dict(boxes=BOXES),
    "points": dict(points=POINTS, labels=LABELS),
    "points_and_boxes": dict(points=POINTS, labels=LABELS, boxes=BOXES),
    "single_point": dict(points=POINTS[:1, :1], labels=LABELS[:1, :1]),
    "box_and_mask": dict(boxes=BOXES[:2], mask_input="random"),
}


def _scaled(prompts: dict, size: int, mask_side: int = 256) -> dict:
    """The prompts above are in a 256² frame, scaled to a model's ``size``; mask prompts of ``mask_side``²."""
    out = {}
    for k, v in prompts.items():
        if k in ("points", "boxes"):
            v = v * (size / 256)
        elif k == "mask_input":
            n = prompts["boxes"].shape[0]
            v = torch.randn(n, 1, mask_side, mask_side, generator=torch.Generator().manual_seed(1)) * 4
        out[k] = v
    return out


def _decode(backend, emb, fast: bool, **prompts):
    backend.fast_paths = fast
    try:
        if fast:
            assert backend.fast_decoder() is not None
        with torch.inference_mode():
            return backend.decode(emb, **prompts)
    finally:
        backend.fast_paths = True


def _same(got, ref, atol=ATOL, rtol=RTOL):
    """Equal within ``atol`` of the reference's peak: random decoders give logits of ~1e-2, not SAM's ~10."""
    scale = ref.abs().max().clamp_min(1e-6)
    torch.testing.assert_close(got / scale, ref / scale, atol=atol, rtol=rtol)


def _embedding(backend, image=None):
    """The embedding of a real slice (``image``) or of random pixels."""
    from napari_qlora_minisam.transforms import prepare_image

    size = backend.spec.image_size
    if image is None:
        pixels = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    else:
        pixels = prepare_image(image, backend.spec)[0]
    with torch.inference_mode():
        return backend.encode(pixels)


# The shape of `minisam-train distill`'s CPU student (256² input, 64×64 grid, one global block): the HF layout
# students are saved in. Random weights, so the warning is expected.
STUDENT_SHAPE = "random_student_256_g1"


def _student(quantize=None):
    from napari_qlora_minisam import load_model
    from napari_qlora_minisam.models.registry import RandomWeightsWarning

    with pytest.warns(RandomWeightsWarning):
        return load_model(STUDENT_SHAPE, quantize=quantize, device="cpu")


@pytest.fixture(scope="module")
def student():
    return _student()


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("case", list(CASES))
def test_student_fast_decoder_equals_hf_modules(student, heart_slice, case, multimask):
    emb = _embedding(student, heart_slice[0])
    prompts = _scaled(CASES[case], 256)
    ref_masks, ref_iou = _decode(student, emb, False, multimask=multimask, **prompts)
    masks, iou = _decode(student, emb, True, multimask=multimask, **prompts)
    assert masks.shape == ref_masks.shape and iou.shape == ref_iou.shape
    assert ref_masks.std() > 1e-2 * ref_masks.abs().max()  # logits that vary, so this is not of constants
    _same(masks, ref_masks)
    _same(iou, ref_iou)


def test_tiny_random_model_fast_decoder_equals_hf_modules(tiny_hf):
    """Another grid (16²) and other widths, random weights."""
    emb = _embedding(tiny_hf)
    for case in ("three_boxes", "points_and_boxes", "single_point", "box_and_mask"):
        prompts = _scaled(CASES[case], tiny_hf.spec.image_size, mask_side=4 * emb.shape[-1])
        ref = _decode(tiny_hf, emb, False, multimask=True, **prompts)
        got = _decode(tiny_hf, emb, True, multimask=True, **prompts)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def test_fast_decoder_follows_lora_adapters_and_weight_updates(heart_slice):
    from napari_qlora_minisam import load_model
    from napari_qlora_minisam.adapters import set_adapter

    from ._lora import add_probe_lora

    model = _student()
    emb = _embedding(model, heart_slice[0])
    prompts = _scaled(CASES["three_boxes"], 256)
    before, _ = _decode(model, emb, True, multimask=False, **prompts)
    peak = before.abs().max()
    add_probe_lora(model)
    emb = _embedding(model, heart_slice[0])  # the adapter may reach the encoder too
    with_adapter, _ = _decode(model, emb, True, multimask=False, **prompts)
    _same(with_adapter, _decode(model, emb, False, multimask=False, **prompts)[0])
    set_adapter(model, None)
    emb = _embedding(model, heart_slice[0])
    without, _ = _decode(model, emb, True, multimask=False, **prompts)
    assert (with_adapter - without).abs().max() > 1e-2 * peak  # the switch reached the fast path
    _same(without, before)
    proj = model.net.mask_decoder.transformer.layers[0].cross_attn_token_to_image.v_proj
    with torch.no_grad():
        getattr(proj, "base_layer", proj).weight.mul_(3.0)  # in place, as an optimizer step
    after, _ = _decode(model, emb, True, multimask=False, **prompts)
    assert (after - without).abs().max() > 1e-2 * peak
    _same(after, _decode(model, emb, False, multimask=False, **prompts)[0])


def test_nf4_student_fast_decoder_matches_its_modules(heart_slice):
    """4-bit layers are called as modules; bitsandbytes rounds activations, so compare within its resolution."""
    model = _student("nf4")
    emb = _embedding(model, heart_slice[0])
    prompts = _scaled(CASES["three_boxes"], 256)
    ref, _ = _decode(model, emb, False, multimask=False, **prompts)
    got, _ = _decode(model, emb, True, multimask=False, **prompts)
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-3)


def test_training_and_autograd_use_hf_modules(tiny_hf, monkeypatch):
    from napari_qlora_minisam.models import fast_decoder

    def boom(*args, **kwargs):
        raise AssertionError("fast path used where gradients are needed")

    monkeypatch.setattr(fast_decoder.FastSamDecoder, "__call__", boom)
    size = tiny_hf.spec.image_size
    emb = _embedding(tiny_hf).clone().requires_grad_(True)
    masks, _ = tiny_hf.decode(emb, boxes=torch.tensor([[10.0, 10.0, size / 2, size / 2]]))
    masks.mean().backward()
    assert emb.grad is not None
    tiny_hf.net.train()
    try:
        with torch.no_grad():
            tiny_hf.decode(emb.detach(), boxes=torch.tensor([[10.0, 10.0, size / 2, size / 2]]))
    finally:
        tiny_hf.net.eval()


def test_a_deep_copy_decodes_with_its_own_modules(tiny_hf):
    """The training panel trains a deep copy of the loaded backend: its fast decoder must copy along and
    read the copy's modules, never the original's."""
    import copy

    emb = _embedding(tiny_hf)
    prompts = _scaled(CASES["three_boxes"], tiny_hf.spec.image_size)
    before, _ = _decode(tiny_hf, emb, True, multimask=False, **prompts)
    twin = copy.deepcopy(tiny_hf)
    with torch.no_grad():
        twin.net.mask_decoder.iou_token.weight.add_(0.5)
    changed, _ = _decode(twin, emb, True, multimask=False, **prompts)
    torch.testing.assert_close(changed, _decode(twin, emb, False, multimask=False, **prompts)[0],
                               atol=ATOL, rtol=RTOL)
    assert (changed - before).abs().max() > 1e-3
    torch.testing.assert_close(_decode(tiny_hf, emb, True, multimask=False, **prompts)[0], before)
