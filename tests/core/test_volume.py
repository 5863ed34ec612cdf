"""Slice-wise 3D: shapes the widget accepts, neighbour boxes, stop rules, and real propagation."""

import numpy as np
import pytest

from napari_qlora_minisam.errors import InputError
from napari_qlora_minisam.volume import (
    StopRules,
    box_from_mask,
    plane,
    propagate,
    run_propagation,
    stack_depth,
)


def test_stack_depth_accepts_2d_rgb2d_and_3d():
    assert stack_depth((64, 80)) == 0
    assert stack_depth((64, 80, 3), rgb=True) == 0
    assert stack_depth((5, 64, 80)) == 1


@pytest.mark.parametrize("shape, rgb, words", [
    ((4, 64, 80, 3), True, "RGB image stacks"),
    ((2, 4, 64, 80), False, "4 dimensions"),
    ((80,), False, "not an image"),
])
def test_stack_depth_refuses_with_a_message(shape, rgb, words):
    with pytest.raises(InputError, match=words):
        stack_depth(shape, rgb)


def test_box_from_mask_adds_margin_and_clips():
    m = np.zeros((50, 60), bool)
    m[10:20, 30:50] = True  # rows 10..19, cols 30..49
    np.testing.assert_allclose(box_from_mask(m, margin=0.1, min_margin=0), [28, 9, 51, 20])
    np.testing.assert_allclose(box_from_mask(m, margin=0.0, min_margin=3), [27, 7, 52, 22])
    edge = np.zeros((10, 10), bool)
    edge[0:3, 8:10] = True
    np.testing.assert_allclose(box_from_mask(edge, 0.0, 5), [3, 0, 9, 7])
    assert box_from_mask(np.zeros((4, 4), bool)) is None


def ball(depth=21, size=64, radius=8.0, center=10):
    """A sphere: slice z has a disc of radius sqrt(r^2 - (z - c)^2)."""
    z, y, x = np.ogrid[:depth, :size, :size]
    return (z - center) ** 2 * 1.0 + (y - 32) ** 2 + (x - 32) ** 2 <= radius ** 2


class BoxOracle:
    """Stands in for the model: returns the true object inside the box (records what it was asked)."""

    def __init__(self, volume):
        self.volume = volume
        self.calls = []

    def __call__(self, z, box):
        self.calls.append((z, box.copy()))
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        out = np.zeros_like(self.volume[z])
        out[y0:y1 + 1, x0:x1 + 1] = self.volume[z][y0:y1 + 1, x0:x1 + 1]
        return out, 0.9


def test_propagation_follows_the_object_and_stops_where_it_vanishes():
    vol = ball()
    oracle = BoxOracle(vol)
    steps, result = run_propagation(propagate(oracle, 10, vol[10], len(vol), rules=StopRules(min_area=5)))
    got = sorted(s.z for s in steps)
    expected = [z for z in range(len(vol)) if vol[z].sum() >= 5 and z != 10]
    assert got == expected
    assert all("vanished" in why for why in result.stopped.values())
    # Up first, then down; each box comes from the neighbour just segmented.
    assert [z for z, _ in oracle.calls][:2] == [11, 12]
    for step in steps:
        np.testing.assert_array_equal(step.mask, vol[step.z])
    assert steps[-1].done <= steps[-1].total


def test_propagation_stops_on_collapse_leak_and_max_slices():
    vol = np.zeros((7, 32, 32), bool)
    vol[:, 10:20, 10:20] = True
    vol[5, 10:12, 10:12] = True  # slice 5 keeps only a sliver (4 px << 100 px): collapse
    vol[5, 12:20, :] = False
    vol[1, :, :] = True  # slice 1 floods the box and beyond: leak
    oracle = BoxOracle(vol)
    rules = StopRules(min_area=1, collapse_ratio=0.25, max_growth=1.5)
    steps, result = run_propagation(propagate(oracle, 3, vol[3], len(vol), rules=rules, margin=0.5))
    assert sorted(s.z for s in steps) == [2, 4]
    assert "collapsed" in result.stopped[1] and "slice 5" in result.stopped[1]
    assert "leaked" in result.stopped[-1] and "slice 1" in result.stopped[-1]
    steps, result = run_propagation(propagate(BoxOracle(vol), 3, vol[3], len(vol), max_slices=1))
    assert sorted(s.z for s in steps) == [2, 4] and "1 slices done" in result.stopped[1]


def test_propagation_stops_where_the_mask_leaves_the_object_intensities():
    """Past the object the model still returns a blob (here: darker tissue); intensities tell."""
    vol = np.zeros((9, 32, 32), bool)
    vol[:, 8:24, 8:24] = True
    image = np.where(vol, 100.0, 0.0) + np.random.default_rng(0).normal(0, 1, vol.shape)
    image[6:, 8:24, 8:24] = -500.0  # slices 6..8: the "object" the oracle returns is air
    steps, result = run_propagation(propagate(BoxOracle(vol), 3, vol[3], len(vol), stack=image))
    assert sorted(s.z for s in steps) == [0, 1, 2, 4, 5]
    assert "intensities" in result.stopped[1] and "slice 6" in result.stopped[1]
    assert result.stopped[-1] == "edge of the stack"
    # Without the stack the intensity rule cannot apply: it runs to the edge.
    steps, _ = run_propagation(propagate(BoxOracle(vol), 3, vol[3], len(vol)))
    assert len(steps) == 8


def test_propagation_needs_an_object():
    with pytest.raises(InputError, match="no object on slice 2"):
        next(propagate(BoxOracle(ball()), 2, np.zeros((64, 64), bool), 21))


def test_plane_reads_one_slice():
    stack = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(plane(stack, 1), stack[1])
    assert plane(stack[0], None) is not None


@pytest.mark.slow
def test_real_propagation_on_shipped_lung_volume(litemedsam):
    """LiteMedSAM, slice by slice from the middle tumour slice of the shipped chest CT crop."""
    from napari_qlora_minisam import MiniSamPredictor
    from napari_qlora_minisam._sample_data import read_sample
    from napari_qlora_minisam.volume import SliceSegmenter
    from napari_qlora_minisam.masks import dice, tight_box

    image, label = read_sample("lung_ct")
    tumour = label > 0
    zs = np.nonzero(tumour.any(axis=(1, 2)))[0]
    mid = int(zs[len(zs) // 2])
    predictor = MiniSamPredictor(litemedsam)
    segmenter = SliceSegmenter(predictor, image)
    start, _ = segmenter(mid, tight_box(tumour[mid]))
    out = np.zeros_like(tumour)
    out[mid] = start
    steps, _ = run_propagation(propagate(segmenter, mid, start, len(image), max_slices=len(zs) // 2))
    for s in steps:
        out[s.z] = s.mask
    scores = [dice(out[z], tumour[z]) for z in zs]
    assert np.mean(scores) >= 0.7, scores
