"""Dice and NSD against cases computed by hand."""

import numpy as np
import pytest

from minisam_train.evaluation.metrics import dice_score, normalized_surface_dice, surface


def square(y0, x0, size, shape=(12, 12)):
    m = np.zeros(shape, bool)
    m[y0:y0 + size, x0:x0 + size] = True
    return m


def test_dice_of_identical_disjoint_and_half_overlapping_masks():
    a = square(2, 2, 4)
    assert dice_score(a, a) == 1.0
    assert dice_score(a, square(7, 7, 4)) == 0.0
    # 4x4 square shifted one column: 12 shared pixels of 16 + 16 -> 24/32.
    assert dice_score(a, square(2, 3, 4)) == pytest.approx(0.75)


def test_dice_and_nsd_of_an_empty_prediction_are_zero():
    gt = square(2, 2, 4)
    empty = np.zeros_like(gt)
    assert dice_score(empty, gt) == 0.0
    assert normalized_surface_dice(empty, gt, 2.0) == 0.0
    # Nothing to find and nothing found counts as perfect (never happens with the 50-pixel rule).
    assert dice_score(empty, empty) == 1.0
    assert normalized_surface_dice(empty, empty) == 1.0


def test_surface_of_a_square_is_its_ring_and_touches_the_image_border():
    assert surface(square(2, 2, 4)).sum() == 12  # 16 pixels minus the 2x2 interior
    full = np.ones((3, 3), bool)
    # The border counts as outside: all but the centre pixel are surface.
    assert surface(full).sum() == 8


def test_nsd_of_a_one_pixel_shift_depends_on_the_tolerance():
    a, b = square(2, 2, 4), square(2, 3, 4)
    # Rings of 12 pixels each; at tolerance 0 only the 3 shared pixels of the top and bottom rows of each
    # ring coincide: (6 + 6) / (12 + 12).
    assert normalized_surface_dice(a, b, tolerance=0) == pytest.approx(0.5)
    # Every ring pixel is within 1 pixel of the other ring.
    assert normalized_surface_dice(a, b, tolerance=1) == pytest.approx(1.0)
    assert normalized_surface_dice(a, a, tolerance=0) == 1.0


def test_nsd_with_a_far_prediction_and_with_spacing():
    a, far = square(0, 0, 3), square(8, 8, 3)
    assert normalized_surface_dice(a, far, tolerance=2) == 0.0
    # With 0.5 mm pixels, a one-pixel shift is 0.5 mm: within a 0.5 mm tolerance.
    assert normalized_surface_dice(square(2, 2, 4), square(2, 3, 4), tolerance=0.5, spacing=(0.5, 0.5)) == 1.0


def test_dice_of_a_non_convex_object_against_its_filled_hull():
    # A U shape: 3x3 block minus the centre column's top two pixels -> 7 pixels.
    u = np.zeros((5, 5), bool)
    u[1:4, 1:4] = True
    u[1:3, 2] = False
    filled = np.zeros((5, 5), bool)
    filled[1:4, 1:4] = True
    assert dice_score(filled, u) == pytest.approx(2 * 7 / (9 + 7))
    # Surfaces: the filled block's ring has 8 pixels, the U is all surface (7). At tolerance 0 every ring
    # pixel but the U's gap (x=2, y=1) lies on the U: (7 + 7) / (8 + 7). The gap is 1 px from the U.
    assert surface(u).sum() == 7 and surface(filled).sum() == 8
    assert normalized_surface_dice(filled, u, tolerance=0) == pytest.approx(14 / 15)
    assert normalized_surface_dice(filled, u, tolerance=1) == 1.0


def test_shapes_must_match():
    with pytest.raises(ValueError, match="shape"):
        dice_score(np.zeros((3, 3)), np.zeros((3, 4)))
