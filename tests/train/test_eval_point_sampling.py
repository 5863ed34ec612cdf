"""Prompt sampling: the official COSMOS rule on masks small enough to check by hand."""

import numpy as np
import pytest

from minisam_train.evaluation.point_sampling import (
    doubled_box, make_prompt, negative_candidates, official_negative_points, official_positive_points, prompt_rng,
)
from napari_qlora_minisam.masks import centroid, tight_box


def u_shape():
    """A 'U' in a 10x10 image: columns 2 and 6 (rows 2..7) and the bottom row 7 (x 2..6).

    Pixels: 6 + 6 + 3 = 15. Mean x = (6*2 + 6*6 + (3+4+5)) / 15 = 60/15 = 4.0,
    mean y = (2*(2+3+4+5+6+7) + 3*7) / 15 = (54 + 21) / 15 = 5.0 -> centroid (4, 5), which is *outside*
    the U (row 5, column 4 is the hollow).
    """
    m = np.zeros((10, 10), bool)
    m[2:8, 2] = True
    m[2:8, 6] = True
    m[7, 2:7] = True
    return m


def test_centroid_is_rounded_down_and_may_fall_outside_a_non_convex_object():
    m = u_shape()
    assert m.sum() == 15
    assert centroid(m).tolist() == [4, 5]
    assert not m[5, 4]  # the official rule keeps it anyway
    # Rounded down: pixels x in {0, 1}, y = 0 -> mean (0.5, 0) -> (0, 0).
    two = np.zeros((3, 3), bool)
    two[0, :2] = True
    assert centroid(two).tolist() == [0, 0]


def test_five_positive_points_are_centroid_plus_row_major_stride():
    m = u_shape()
    # Row-major pixel list (x, y): (2,2),(6,2),(2,3),(6,3),(2,4),(6,4),(2,5),(6,5),(2,6),(6,6),
    # (2,7),(3,7),(4,7),(5,7),(6,7). Stride floor(15/5) = 3 -> indices 0,3,6,9,12 ->
    # (2,2),(6,3),(2,5),(6,6),(4,7); the centroid replaces the first.
    pts = official_positive_points(m, 5)
    assert pts.tolist() == [[4, 5], [6, 3], [2, 5], [6, 6], [4, 7]]


def test_negative_points_come_from_the_doubled_box_clipped_to_the_image():
    m = np.zeros((8, 8), bool)
    m[0:2, 0:2] = True  # a 2x2 object in the corner
    assert tight_box(m).tolist() == [0, 0, 1, 1]
    # Grown by floor(2/2) = 1 on each side -> (-1, -1, 2, 2), clipped -> (0, 0, 2, 2).
    assert doubled_box(m).tolist() == [0, 0, 2, 2]
    # Non-object pixels of that 3x3 region, row-major: (2,0),(2,1),(0,2),(1,2),(2,2): M = 5, stride 1.
    assert negative_candidates(m).tolist() == [[2, 0], [2, 1], [0, 2], [1, 2], [2, 2]]
    assert official_negative_points(m, 5).tolist() == [[2, 0], [2, 1], [0, 2], [1, 2], [2, 2]]


def test_negative_stride_on_a_larger_background():
    m = np.zeros((20, 20), bool)
    m[8:12, 8:12] = True  # 4x4 -> doubled box x, y in 6..13 (8x8 = 64 px), 48 of them background
    assert doubled_box(m).tolist() == [6, 6, 13, 13]
    cands = negative_candidates(m)
    assert len(cands) == 48
    neg = official_negative_points(m, 5)
    assert neg.tolist() == cands[::9][:5].tolist()  # floor(48 / 5) = 9
    assert not m[neg[:, 1], neg[:, 0]].any()


def test_prompt_modes_have_the_documented_shape():
    m = u_shape()
    p1 = make_prompt(m, "point1")
    assert p1.points.tolist() == [[4, 5]] and p1.labels.tolist() == [1] and p1.box is None
    p5n5 = make_prompt(m, "point5neg5")
    assert p5n5.labels.tolist() == [1] * 5 + [0] * 5
    box = make_prompt(m, "box")
    assert box.points is None and box.box.tolist() == [2, 2, 6, 7]
    bp = make_prompt(m, "box_point1")
    assert bp.box.tolist() == [2, 2, 6, 7] and bp.points.tolist() == [[4, 5]]
    with pytest.raises(ValueError, match="prompt mode"):
        make_prompt(m, "everything")


def test_random_sampling_is_seeded_inside_the_object_and_jitters_the_box():
    m = u_shape()
    a = make_prompt(m, "point5neg5", "random", prompt_rng(0, "ds", "img", "obj"), box_jitter=2)
    b = make_prompt(m, "point5neg5", "random", prompt_rng(0, "ds", "img", "obj"), box_jitter=2)
    assert np.array_equal(a.points, b.points)
    pos = a.points[a.labels == 1].astype(int)
    neg = a.points[a.labels == 0].astype(int)
    assert m[pos[:, 1], pos[:, 0]].all() and not m[neg[:, 1], neg[:, 0]].any()
    boxes = {tuple(make_prompt(m, "box", "random", prompt_rng(s, "x"), box_jitter=2).box) for s in range(20)}
    assert len(boxes) > 1
    for x0, y0, x1, y1 in boxes:
        assert abs(x0 - 2) <= 2 and abs(y1 - 7) <= 2 and 0 <= x0 <= x1 <= 9 and 0 <= y0 <= y1 <= 9
    with pytest.raises(ValueError, match="generator"):
        make_prompt(m, "box", "random")
