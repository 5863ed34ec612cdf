"""Neighbour prompts in adapter training: a slice prompted from its adjacent slice's mask, as propagation does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from minisam_train.data import DataError
from minisam_train.training.adapt_data import load_neighbour_volume_slices
from napari_qlora_minisam.adapter_training.prompt_sampling import PromptSampler, PromptSamplingConfig
from napari_qlora_minisam.adapter_training.views import AnnotatedSlice, AugmentConfig, build_views, make_view
from napari_qlora_minisam.transforms import PreprocessSpec, mask_to_logits, scale_boxes, scale_coords
from napari_qlora_minisam.volume import box_from_mask, interior_point

SPEC = PreprocessSpec(image_size=64, normalization="minmax")
MIX = {"box": 1.0, "points": 1.0}


def _disc(h, w, cx, cy, r):
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _slice(with_neighbour=True):
    # A non-square slice: the prompts must be scaled into the network frame like the predictor scales them.
    h, w = 80, 120
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (h, w)).astype(np.uint8)
    own = _disc(h, w, 60, 40, 12)
    neighbour = _disc(h, w, 70, 34, 8)  # smaller and shifted: its prompts differ from this slice's own
    near = {1: [neighbour]} if with_neighbour else {}
    return AnnotatedSlice(image, {1: own}, "vol#z5", near), own, neighbour


def test_neighbour_prompt_comes_from_the_neighbour_mask_in_the_network_frame():
    sl, own, neighbour = _slice()
    view = make_view(sl.image, sl.objects, SPEC, "minmax", sl.source, neighbours=sl.neighbours)
    sampler = PromptSampler(PromptSamplingConfig(mix=MIX, neighbour=1.0, neighbour_prompt="box+mask+point"))
    batch = sampler.sample_view(view, np.random.default_rng(0))
    assert batch.mode == "neighbour" and not batch.multimask
    hw = (80, 120)
    np.testing.assert_allclose(batch.boxes.numpy()[0], scale_boxes(box_from_mask(neighbour, 0.1), hw, 64))
    assert not np.allclose(batch.boxes.numpy()[0], scale_boxes(box_from_mask(own, 0.1), hw, 64))
    np.testing.assert_allclose(batch.points.numpy()[0], scale_coords(interior_point(neighbour)[None], hw, 64))
    assert batch.labels.tolist() == [[1]]
    low = (16, 16)
    got = batch.mask_input(64, low)
    assert got.shape == (1, 1, 16, 16)
    np.testing.assert_array_equal(got.numpy()[0], mask_to_logits(neighbour, 64, low))
    assert not np.array_equal(got.numpy()[0], mask_to_logits(own, 64, low))


def test_neighbour_prompt_kinds_and_fallback():
    sl, _, _ = _slice()
    view = make_view(sl.image, sl.objects, SPEC, "minmax", sl.source, neighbours=sl.neighbours)
    box_only = PromptSampler(PromptSamplingConfig(mix=MIX, neighbour=1.0, neighbour_prompt="box"))
    batch = box_only.sample_view(view, np.random.default_rng(0))
    assert batch.points is None and batch.mask_prompts is None and batch.mask_input(64, (16, 16)) is None
    click_only = PromptSampler(PromptSamplingConfig(mix=MIX, neighbour=1.0, neighbour_prompt="point"))
    batch = click_only.sample_view(view, np.random.default_rng(0))
    assert batch.boxes is None and batch.points is not None and batch.mask_prompts is None
    # Off by default, and a slice without neighbours draws exactly what sample() draws (same random stream).
    lone, _, _ = _slice(with_neighbour=False)
    lone_view = make_view(lone.image, lone.objects, SPEC, "minmax", lone.source)
    for cfg, v in ((PromptSamplingConfig(mix=MIX), view), (PromptSamplingConfig(mix=MIX, neighbour=1.0), lone_view)):
        a = PromptSampler(cfg).sample_view(v, np.random.default_rng(3))
        b = PromptSampler(cfg).sample(v.masks.numpy(), np.random.default_rng(3))
        assert a.mode == b.mode != "neighbour"
        for x, y in ((a.boxes, b.boxes), (a.points, b.points)):
            assert (x is None and y is None) or torch.equal(x, y)
    with pytest.raises(ValueError, match="neighbour_prompt"):
        PromptSamplingConfig(mix=MIX, neighbour_prompt="mask")
    with pytest.raises(ValueError, match="neighbour"):
        PromptSamplingConfig(mix=MIX, neighbour=1.5)


def test_augmented_views_move_the_neighbour_with_the_slice():
    sl, own, _ = _slice()
    sl.neighbours = {1: [own.copy()]}  # a neighbour equal to the object must stay equal to it after the move
    aug = AugmentConfig(views_per_image=3, rotate_deg=20, translate=0.1)
    views = build_views([sl], SPEC, "minmax", aug, np.random.default_rng(1), 20, True)
    assert len(views) == 3
    for v in views[1:]:
        moved = v.neighbours[1][0]
        assert moved.shape == own.shape and not np.array_equal(moved, own)
        small = torch.nn.functional.interpolate(torch.from_numpy(moved.astype(np.float32))[None, None],
                                                size=(43, 64), mode="bilinear", align_corners=False)[0, 0] > 0.5
        assert torch.equal(small, v.masks[0, :43, :64])


def test_neighbour_volumes_attach_adjacent_masks_and_refuse_the_test_split(tmp_path):
    labels = np.zeros((5, 40, 40), np.uint8)
    labels[1, 10:20, 10:20] = 1
    labels[2, 12:24, 12:24] = 1
    labels[3, 14:20, 14:20] = 1
    image = np.random.default_rng(0).integers(0, 1000, labels.shape).astype(np.int16)
    for name in ("train1", "test1"):
        tifffile.imwrite(tmp_path / f"{name}_image.tif", image)
        tifffile.imwrite(tmp_path / f"{name}_label.tif", labels)
    split = tmp_path / "splits.json"
    split.write_text(json.dumps({"9_Thing": {"adapt_train": ["9_Thing_train1_2.png"],
                                             "test": ["9_Thing_test1_2.png"]}}))
    pair = [str(tmp_path / "train1_image.tif"), str(tmp_path / "train1_label.tif")]
    slices, summary = load_neighbour_volume_slices([pair], 20, split)
    assert [s.source for s in slices] == ["train1#z1", "train1#z2", "train1#z3"]
    middle = slices[1]
    assert len(middle.neighbours[1]) == 2
    np.testing.assert_array_equal(middle.neighbours[1][0], labels[1] == 1)
    np.testing.assert_array_equal(middle.neighbours[1][1], labels[3] == 1)
    assert len(slices[0].neighbours[1]) == 1  # slice 0 holds no object: no neighbour from it
    assert summary["neighbour_volumes"][0]["slices"] == [1, 2, 3]
    with pytest.raises(DataError, match="test split"):
        load_neighbour_volume_slices([[str(tmp_path / "test1_image.tif"), str(tmp_path / "test1_label.tif")]],
                                     20, split)
