"""MiniSamPredictor: batched boxes equal single boxes; the HF path with points, box, both and mask_input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_qlora_minisam import MiniSamPredictor
from napari_qlora_minisam.masks import dice, tight_box


@pytest.fixture(scope="module")
def heart_predictor(litemedsam, heart_slice):
    predictor = MiniSamPredictor(litemedsam)
    predictor.set_image(heart_slice[0])
    return predictor


def test_predict_batch_equals_predict_per_box(heart_predictor, heart_slice):
    image, label = heart_slice
    boxes = [tight_box(label == v) for v in (85, 170, 255)]
    boxes += [np.array([10, 20, 120, 140], np.float32), np.array([0, 0, image.shape[1] - 1, image.shape[0] - 1],
                                                                  np.float32)]
    masks, scores, logits = heart_predictor.predict_batch(boxes=np.stack(boxes), multimask=False)
    assert masks.shape == (5, 1, *image.shape) and scores.shape == (5, 1) and logits.shape == (5, 1, 256, 256)
    for i, box in enumerate(boxes):
        m, s, lo = heart_predictor.predict(box=box, multimask=False)
        np.testing.assert_allclose(lo, logits[i], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(s, scores[i], atol=1e-5)
        # Logits agree to 1e-4; a pixel whose logit is that close to 0 may flip, nothing more.
        assert (m != masks[i]).mean() < 1e-3
    # and the batch is the real thing: LV and RV boxes segment their structures
    assert dice(masks[0, 0], label == 85) > 0.9 and dice(masks[2, 0], label == 255) > 0.8


def test_mask_input_refines_with_litemedsam(heart_predictor, heart_slice):
    _, label = heart_slice
    box = tight_box(label == 85)
    m1, s1, lo1 = heart_predictor.predict(box=box, multimask=False)
    m2, s2, lo2 = heart_predictor.predict(box=box, mask_input=lo1, multimask=False)
    assert np.abs(lo2 - lo1).max() > 1e-3  # the previous mask is really fed back
    assert dice(m2[0], label == 85) > 0.85


@pytest.fixture(scope="module")
def tiny_predictor(tiny_hf):
    predictor = MiniSamPredictor(tiny_hf)
    image = np.random.default_rng(0).integers(0, 4000, (90, 120)).astype(np.uint16)
    predictor.set_image(image)
    return predictor


@pytest.mark.parametrize("multimask, m", [(True, 3), (False, 1)])
@pytest.mark.parametrize("prompt", ["points", "box", "both", "mask_only"])
def test_hf_tiny_prompts(tiny_predictor, prompt, multimask, m):
    kwargs = {}
    if prompt in ("points", "both"):
        kwargs.update(points=[[30, 40], [100, 80]], point_labels=[1, 0])
    if prompt in ("box", "both"):
        kwargs["box"] = [20, 10, 90, 70]
    if prompt == "mask_only":
        kwargs["mask_input"] = np.random.default_rng(1).normal(size=(1, 64, 64)).astype(np.float32)
    masks, scores, logits = tiny_predictor.predict(multimask=multimask, **kwargs)
    assert masks.shape == (m, 90, 120) and masks.dtype == bool
    assert scores.shape == (m,) and np.isfinite(scores).all()
    assert logits.shape == (m, 64, 64) and np.isfinite(logits).all()
    assert masks.any() or (logits < 0).all()  # masks are thresholded logits, not an empty placeholder


def test_hf_tiny_prompts_change_the_output(tiny_predictor):
    """Each prompt part reaches the decoder: adding a point, a box or a mask changes the logits."""
    pts = dict(points=[[30, 40]], point_labels=[1])
    base = tiny_predictor.predict(**pts, multimask=False)[2]
    with_box = tiny_predictor.predict(**pts, box=[20, 10, 90, 70], multimask=False)[2]
    with_neg = tiny_predictor.predict(points=[[30, 40], [60, 60]], point_labels=[1, 0], multimask=False)[2]
    with_mask = tiny_predictor.predict(**pts, mask_input=base, multimask=False)[2]
    for other in (with_box, with_neg, with_mask):
        assert np.abs(other - base).max() > 1e-4


def test_hf_tiny_batch_of_points_and_boxes(tiny_predictor):
    boxes = np.array([[20, 10, 90, 70], [0, 0, 50, 50], [60, 30, 119, 89]], np.float32)
    points = np.array([[[40, 30]], [[25, 25]], [[90, 60]]], np.float32)
    labels = np.ones((3, 1), np.int64)
    masks, scores, logits = tiny_predictor.predict_batch(boxes=boxes, points=points, point_labels=labels)
    assert masks.shape == (3, 1, 90, 120)
    for i in range(3):
        _, s, lo = tiny_predictor.predict(points=points[i], point_labels=labels[i], box=boxes[i], multimask=False)
        np.testing.assert_allclose(lo, logits[i], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(s, scores[i], atol=1e-5)
