"""The simulated user of benchmarks/propagation_corrections.py: correct the first bad slice, re-propagate beyond."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import propagation_corrections as pc  # noqa: E402


def _jumping_object():
    """Slices 2-8 hold a square that jumps sideways between slices 5 and 6 (past any neighbour box)."""
    gt = np.zeros((10, 32, 32), bool)
    gt[2:6, 8:16, 8:16] = True
    gt[6:9, 18:26, 18:26] = True
    return gt.astype(np.int16) * 100, gt


def _perfect_inside_the_box(gt):
    """A model that finds exactly the object's pixels inside the box it is given."""
    def segment(z, box, **_neighbour):
        x0, y0, x1, y1 = np.round(box).astype(int)
        mask = np.zeros(gt.shape[1:], bool)
        mask[y0:y1 + 1, x0:x1 + 1] = gt[z, y0:y1 + 1, x0:x1 + 1]
        return mask, 0.9
    return segment


def test_one_correction_past_the_jump_recovers_the_slices_beyond_it():
    image, gt = _jumping_object()
    corrected = []

    def correct(z):
        corrected.append(z)
        return gt[z].copy()

    history = pc.correct_and_repropagate(_perfect_inside_the_box(gt), image, gt, "box", correct, corrections=3)
    # propagation up from slice 5 loses the object at the jump: slices 6-8 empty, 4 of 7 slices right
    assert history[0]["lost"] == [6, 7, 8]
    assert abs(history[0]["dice_object"] - 4 / 7) < 1e-6
    # the first bad slice out from the committed one is corrected, re-propagation fills 7 and 8, and the run
    # stops there: every slice is at the target
    assert corrected == [6]
    assert len(history) == 2 and history[1]["corrected"] == [6]
    assert history[1]["dice_object"] == 1.0 and history[1]["leaks"] == []
    assert pc.needed(history) == "1"


def test_slice_to_correct_is_the_nearest_bad_one_never_twice():
    gt = np.zeros((9, 8, 8), bool)
    gt[1:8, 2:6, 2:6] = True
    pred = gt.copy()
    pred[2] = False  # 2 below the committed slice 4
    pred[7] = False  # 3 above it
    assert pc.slice_to_correct(pred, gt, 4, {4}, 0.8) == 2
    assert pc.slice_to_correct(pred, gt, 4, {4, 2}, 0.8) == 7
    assert pc.slice_to_correct(pred, gt, 4, {4, 2, 7}, 0.8) is None


def test_replace_beyond_writes_what_the_run_found_and_empties_the_rest():
    from napari_qlora_minisam.volume import PropagationStep

    pred = np.ones((6, 4, 4), bool)
    step = PropagationStep(z=1, mask=np.eye(4, dtype=bool), score=1.0, done=1, total=3)
    pred_down = pred.copy()
    pc.replace_beyond(pred_down, 3, -1, [step])
    assert np.array_equal(pred_down[1], np.eye(4, dtype=bool))
    assert not pred_down[0].any() and not pred_down[2].any() and pred_down[3:].all()
    pc.replace_beyond(pred, 3, 1, [])
    assert pred[:4].all() and not pred[4:].any()


def test_needed_says_when_the_target_was_not_reached():
    assert pc.needed([{"dice_object": 0.5}, {"dice_object": 0.7}]) == "> 1"
    assert pc.needed([{"dice_object": 0.85}]) == "0"
