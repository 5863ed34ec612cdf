"""napari (row, col) <-> model (x, y): the one flip, checked on asymmetric coordinates."""

import numpy as np
import pytest

from napari_qlora_minisam.prompts import (
    NEGATIVE,
    POSITIVE,
    box_to_rectangle,
    on_slice,
    polarity_to_label,
    rc_to_xy,
    rectangle_to_box,
    slice_prompts,
    xy_to_rc,
)


def test_rc_xy_round_trip_flips_axes():
    rc = np.array([[10.0, 200.0], [30.0, 5.0]])  # rows 10/30, cols 200/5
    xy = rc_to_xy(rc)
    np.testing.assert_array_equal(xy, [[200, 10], [5, 30]])
    np.testing.assert_array_equal(xy_to_rc(xy), rc)
    np.testing.assert_array_equal(xy_to_rc(xy, z=4), [[4, 10, 200], [4, 30, 5]])


def test_rc_to_xy_drops_leading_slice_axis():
    np.testing.assert_array_equal(rc_to_xy([[7, 10, 200]]), [[200, 10]])


def test_box_rectangle_round_trip_and_backwards_drag():
    box = np.array([12, 40, 90, 61], np.float32)  # x0, y0, x1, y1
    rect = box_to_rectangle(box)
    assert rect.shape == (4, 2)
    assert rect[:, 0].min() == 40 and rect[:, 1].max() == 90  # rows are y, cols are x
    np.testing.assert_array_equal(rectangle_to_box(rect), box)
    np.testing.assert_array_equal(rectangle_to_box(rect[::-1]), box)  # drawn from the other corner
    np.testing.assert_array_equal(rectangle_to_box(box_to_rectangle(box, z=3)), box)


def test_slice_prompts_2d_points_and_last_rectangle():
    points = np.array([[10, 20], [30, 40]], float)
    rects = [box_to_rectangle([0, 0, 5, 5]), box_to_rectangle([1, 2, 50, 60])]
    p = slice_prompts(points, [POSITIVE, NEGATIVE], rects, ["rectangle", "rectangle"])
    np.testing.assert_array_equal(p.points_xy, [[20, 10], [40, 30]])
    np.testing.assert_array_equal(p.point_labels, [1, 0])
    np.testing.assert_array_equal(p.box, [1, 2, 50, 60])
    kwargs = p.predict_kwargs()
    assert set(kwargs) == {"box", "points", "point_labels"}


def test_slice_prompts_keeps_only_the_slice_in_view():
    points = np.array([[2, 10, 20], [3, 30, 40], [2.2, 5, 6]], float)
    rects = [box_to_rectangle([1, 2, 3, 4], z=3), box_to_rectangle([5, 6, 7, 8], z=2)]
    p = slice_prompts(points, [POSITIVE, POSITIVE, NEGATIVE], rects, ["rectangle", "rectangle"], z=2)
    np.testing.assert_array_equal(p.points_xy, [[20, 10], [6, 5]])
    np.testing.assert_array_equal(p.point_labels, [1, 0])
    np.testing.assert_array_equal(p.box, [5, 6, 7, 8])
    empty = slice_prompts(points, None, rects, ["rectangle", "rectangle"], z=9)
    assert empty.is_empty and empty.predict_kwargs() == {"box": None}


def test_non_rectangles_are_not_boxes():
    p = slice_prompts(None, None, [box_to_rectangle([1, 2, 3, 4])], ["ellipse"])
    assert p.box is None and p.is_empty


def test_on_slice_and_polarity():
    assert on_slice(np.zeros((3, 2)), z=5).all()  # 2D data: every point is in view
    np.testing.assert_array_equal(on_slice(np.array([[0.4, 1, 1], [1.6, 1, 1]]), 0), [True, False])
    assert [polarity_to_label(k) for k in (POSITIVE, NEGATIVE, True, False)] == [1, 0, 1, 0]


@pytest.mark.slow
def test_prompts_from_napari_coordinates_segment_the_right_place(litemedsam, heart_slice):
    """A box given as a napari rectangle (row, col) must land on the LV, not on its transpose."""
    from napari_qlora_minisam import MiniSamPredictor
    from tests.conftest import dice

    image, label = heart_slice
    lv = label == 85
    ys, xs = np.nonzero(lv)
    rect = np.array([[ys.min(), xs.min()], [ys.min(), xs.max()], [ys.max(), xs.max()], [ys.max(), xs.min()]])
    prompts = slice_prompts(None, None, [rect], ["rectangle"])
    predictor = MiniSamPredictor(litemedsam)
    predictor.set_image(image)
    masks, _, _ = predictor.predict(**prompts.predict_kwargs(), multimask=False)
    assert dice(masks[0], lv) >= 0.85
