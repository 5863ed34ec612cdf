"""Intensity policies (raw values -> [0, 1]) and coordinate mapping (original pixels <-> network frame)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_qlora_minisam import InputError
from napari_qlora_minisam.intensity import CT_WINDOWS, normalize_intensity
from napari_qlora_minisam.transforms import (
    PreprocessSpec,
    postprocess_logits,
    prepare_image,
    preprocess_shape,
    scale_boxes,
    scale_coords,
    unscale_coords,
)


# -- intensity --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, hi", [(np.uint8, 255), (np.uint16, 65535), (np.int16, 3000), (np.float32, 1e-3),
                                       (np.float64, 5e4)])
def test_minmax_spans_unit_range_for_any_dtype(dtype, hi):
    image = np.linspace(-hi if np.issubdtype(dtype, np.signedinteger) else 0, hi, 64).astype(dtype).reshape(8, 8)
    out = normalize_intensity(image, "minmax")
    assert out.dtype == np.float32 and out.shape == (8, 8)
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.all(np.diff(out.ravel()) >= 0)  # monotone: order of intensities kept


def test_ct_windows_on_hounsfield_units():
    hu = np.array([[-1000, -600, -160, 40], [240, 400, 1300, 3000]], dtype=np.int16)
    soft = normalize_intensity(hu, "ct_soft_tissue")  # W400 L40 -> [-160, 240]
    np.testing.assert_allclose(soft, [[0, 0, 0, 0.5], [1, 1, 1, 1]], atol=1e-6)
    lung = normalize_intensity(hu, "ct_lung")  # W1500 L-600 -> [-1350, 150]
    np.testing.assert_allclose(lung[0], [350 / 1500, 0.5, 1190 / 1500, 1390 / 1500], atol=1e-6)
    assert lung[1].min() == 1.0
    bone = normalize_intensity(hu, "ct_bone")  # W1800 L400 -> [-500, 1300]
    np.testing.assert_allclose(bone, [[0, 0, 340 / 1800, 540 / 1800], [740 / 1800, 0.5, 1, 1]], atol=1e-6)
    assert {k: w.bounds for k, w in CT_WINDOWS.items()} == {
        "ct_soft_tissue": (-160, 240), "ct_lung": (-1350, 150), "ct_bone": (-500, 1300)}


def test_percentile_clips_outliers():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (64, 64)).astype(np.float32)
    image[0, 0] = 1e6  # one hot pixel would squash min-max
    mm = normalize_intensity(image, "minmax")
    pc = normalize_intensity(image, "percentile")
    assert np.median(mm) < 1e-3
    assert 0.3 < np.median(pc) < 0.7 and pc[0, 0] == 1.0


def test_rgb_keeps_channels():
    rgb = np.stack([np.full((4, 5), v, np.uint8) for v in (10, 100, 200)], axis=-1)
    out = normalize_intensity(rgb, "minmax")
    assert out.shape == (4, 5, 3)
    np.testing.assert_allclose(out[0, 0], [0, 90 / 190, 1], atol=1e-6)


def test_degenerate_policy_is_refused():
    # Percentiles of a mostly constant image collapse to one value.
    image = np.zeros((100, 100), np.float32)
    image[0, 0] = 1.0
    with pytest.raises(InputError, match="maps the whole image to one value"):
        normalize_intensity(image, "percentile")


@pytest.mark.parametrize("policy", ["minmax", "ct_soft_tissue", "ct_lung", "ct_bone", "percentile"])
def test_prepare_image_hu_slice(policy):
    hu = np.random.default_rng(2).integers(-1024, 2000, (30, 50)).astype(np.int16)
    pixels, original_hw, input_hw = prepare_image(hu, PreprocessSpec(256, "minmax"), policy)
    assert pixels.shape == (1, 3, 256, 256) and original_hw == (30, 50) and input_hw == (154, 256)
    inside = pixels[..., :154, :256]
    assert inside.min() == 0.0 and inside.max() == pytest.approx(1.0)
    assert pixels[..., 154:, :].abs().max() == 0  # bottom padding


def test_prepare_image_imagenet_normalisation():
    image = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (32, 1))
    pixels, _, input_hw = prepare_image(image, PreprocessSpec(1024, "imagenet"))
    assert input_hw == (512, 1024)
    # white maps to (255 - mean) / std per channel, black to -mean / std.
    np.testing.assert_allclose(pixels[0, :, 0, 0].numpy(), [-2.1179, -2.0357, -1.8044], atol=2e-2)
    np.testing.assert_allclose(pixels[0, :, 0, -1].numpy(), [2.2489, 2.4286, 2.64], atol=2e-2)
    assert pixels[0, :, 600:, :].abs().max() == 0


# -- coordinates ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hw", [(512, 512), (300, 700), (701, 233), (17, 1000)])
@pytest.mark.parametrize("target", [256, 1024])
def test_coordinate_round_trip(hw, target):
    rng = np.random.default_rng(3)
    pts = rng.uniform(0, 1, (20, 2)) * [hw[1] - 1, hw[0] - 1]
    net = scale_coords(pts, hw, target)
    new_h, new_w = preprocess_shape(*hw, target)
    assert max(new_h, new_w) == target
    assert net[:, 0].max() <= new_w and net[:, 1].max() <= new_h
    np.testing.assert_allclose(unscale_coords(net, hw, target), pts, rtol=1e-5, atol=1e-3)
    boxes = np.concatenate([pts[:10], pts[10:]], axis=1)
    np.testing.assert_allclose(scale_boxes(boxes, hw, target).reshape(-1, 2),
                               scale_coords(boxes.reshape(-1, 2), hw, target))


def test_postprocess_puts_a_network_frame_square_back_where_the_box_was():
    hw, target = (300, 600), 256
    box = np.array([120, 60, 300, 210], np.float32)  # x0, y0, x1, y1 in original pixels
    x0, y0, x1, y1 = scale_boxes(box, hw, target)
    low = torch.full((1, 1, 256, 256), -10.0)
    low[..., int(round(y0)):int(round(y1)), int(round(x0)):int(round(x1))] = 10.0  # already at 256 = target
    _, _, input_hw = prepare_image(np.eye(300, 600), PreprocessSpec(target, "minmax"))
    full = postprocess_logits(low, input_hw, hw, target)
    assert full.shape == (1, 1, 300, 600)
    ys, xs = np.nonzero(full[0, 0].numpy() > 0)
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max(), ys.max()], box, atol=3)


def test_low_res_logits_are_upsampled_first():
    """64x64-grid models give 256x256 logits; the 4x-smaller grid of tiny models gives 64x64: both map back."""
    hw = (100, 80)
    for low_size, target in ((256, 256), (64, 256), (256, 1024)):
        _, _, input_hw = prepare_image(np.eye(*hw), PreprocessSpec(target, "minmax"))
        out = postprocess_logits(torch.ones(2, 3, low_size, low_size), input_hw, hw, target)
        assert out.shape == (2, 3, *hw)


def test_display_range_feeds_the_model_what_the_viewer_shows():
    from napari_qlora_minisam.intensity import check_policy, display_range

    hu = np.array([[-1350.0, -600.0, 150.0, 400.0]])
    policy = display_range(-1350, 150)  # a lung window set with napari's contrast limits
    assert check_policy(policy) == policy
    np.testing.assert_allclose(normalize_intensity(hu, policy), [[0.0, 0.5, 1.0, 1.0]])
    np.testing.assert_allclose(normalize_intensity(hu, policy), normalize_intensity(hu, "ct_lung"))
    with pytest.raises(InputError, match="one value"):
        normalize_intensity(hu, display_range(5, 5))
