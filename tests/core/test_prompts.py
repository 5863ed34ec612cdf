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
    slice_objects,
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


def test_each_rectangle_is_an_object_with_the_clicks_inside_it():
    points = np.array([[10, 20], [30, 40], [3, 3], [90, 90]], float)  # (row, col)
    rects = [box_to_rectangle([0, 0, 5, 5]), box_to_rectangle([1, 2, 50, 60])]  # (x0, y0, x1, y1)
    small, big = slice_objects(points, [POSITIVE, NEGATIVE, POSITIVE, NEGATIVE], rects, ["rectangle", "rectangle"])
    np.testing.assert_array_equal(small.box, [0, 0, 5, 5])
    np.testing.assert_array_equal(small.points_xy, [[3, 3]])  # inside both: the smaller box owns it
    np.testing.assert_array_equal(big.box, [1, 2, 50, 60])
    # (20, 10) and (40, 30) lie inside the big box; (90, 90) is outside both and goes to the nearest box
    np.testing.assert_array_equal(big.points_xy, [[20, 10], [40, 30], [90, 90]])
    np.testing.assert_array_equal(big.point_labels, [1, 0, 0])
    assert set(big.predict_kwargs()) == {"box", "points", "point_labels"}
    assert small.key != big.key and small.key == slice_objects([[3, 3]], None, rects[:1], ["rectangle"])[0].key


def test_clicks_without_boxes_are_one_object_and_other_slices_are_left_out():
    points = np.array([[2, 10, 20], [3, 30, 40], [2.2, 5, 6]], float)
    rects = [box_to_rectangle([1, 2, 3, 4], z=3), box_to_rectangle([5, 6, 7, 8], z=2)]
    [obj] = slice_objects(points, [POSITIVE, POSITIVE, NEGATIVE], rects, ["rectangle", "rectangle"], z=2)
    np.testing.assert_array_equal(obj.box, [5, 6, 7, 8])
    np.testing.assert_array_equal(obj.points_xy, [[20, 10], [6, 5]])
    np.testing.assert_array_equal(obj.point_labels, [1, 0])
    [clicks] = slice_objects(points, None, [], [], z=2)
    assert clicks.box is None and len(clicks.points_xy) == 2
    assert slice_objects(points, None, rects, ["rectangle", "rectangle"], z=9) == []


def test_non_rectangles_are_not_boxes():
    assert slice_objects(None, None, [box_to_rectangle([1, 2, 3, 4])], ["ellipse"]) == []


def test_on_slice_and_polarity():
    assert on_slice(np.zeros((3, 2)), z=5).all()  # 2D data: every point is in view
    np.testing.assert_array_equal(on_slice(np.array([[0.4, 1, 1], [1.6, 1, 1]]), 0), [True, False])
    assert [polarity_to_label(k) for k in (POSITIVE, NEGATIVE, True, False)] == [1, 0, 1, 0]


@pytest.mark.slow
def test_prompts_from_napari_coordinates_segment_the_right_place(litemedsam, heart_slice):
    """A box given as a napari rectangle (row, col) must land on the LV, not on its transpose."""
    from napari_qlora_minisam import MiniSamPredictor
    from napari_qlora_minisam.masks import dice

    image, label = heart_slice
    lv = label == 85
    ys, xs = np.nonzero(lv)
    rect = np.array([[ys.min(), xs.min()], [ys.min(), xs.max()], [ys.max(), xs.max()], [ys.max(), xs.min()]])
    [prompts] = slice_objects(None, None, [rect], ["rectangle"])
    predictor = MiniSamPredictor(litemedsam)
    predictor.set_image(image)
    masks, _, _ = predictor.predict(**prompts.predict_kwargs(), multimask=False)
    assert dice(masks[0], lv) >= 0.85
