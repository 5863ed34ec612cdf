"""The mask term's prompts of experiments/minisam_teacher_init.py: boxes round objects the teacher segments."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import minisam_teacher_init  # noqa: E402


class BlobTeacher:
    """Answers every box with the part of a fixed scene inside it."""

    def __init__(self, scene: np.ndarray):
        self.scene = scene

    def decode(self, embedding, boxes, multimask=False):
        out = torch.full((len(boxes), 1, 256, 256), -5.0)
        for i, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
            inside = np.zeros_like(self.scene)
            inside[y0:y1 + 1, x0:x1 + 1] = True
            out[i, 0][torch.from_numpy(self.scene & inside)] = 5.0
        return out, torch.ones(len(boxes), 1)


def test_objects_lie_on_what_the_teacher_segments_and_are_not_repeated():
    yy, xx = np.mgrid[:256, :256]
    disc = (yy - 60) ** 2 + (xx - 60) ** 2 < 20 ** 2  # 1,250 px, tight box (41, 41, 79, 79)
    teacher = BlobTeacher(disc)
    boxes = minisam_teacher_init.teacher_objects(teacher, None, (256, 256), 60, 5, seed=0)
    assert 1 <= len(boxes) <= 5
    # on the disc, nothing outside it; a seed box cutting the disc gives a crop the check cannot tell from an
    # object (the teacher returns the same crop for the crop's box), so not every box is the whole disc
    assert (boxes[:, :2] >= 40).all() and (boxes[:, 2:] <= 80).all()
    masks = teacher.decode(None, boxes)[0][:, 0] > 0
    for i in range(len(masks)):
        for j in range(i):
            assert (masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum() <= 0.7  # one box per object
    tiny = (yy < 5) & (xx < 5)  # 25 px, under 0.3 % of the image
    assert len(minisam_teacher_init.teacher_objects(BlobTeacher(tiny), None, (256, 256), 60, 5, seed=0)) == 0


def test_a_component_the_teacher_does_not_give_back_is_dropped():
    class Unstable(BlobTeacher):  # a tight box round what it found gives an empty mask
        def decode(self, embedding, boxes, multimask=False):
            masks, iou = super().decode(embedding, boxes)
            return (masks if len(boxes) > 1 else torch.full_like(masks, -5.0)), iou

    yy, xx = np.mgrid[:256, :256]
    disc = (yy - 60) ** 2 + (xx - 60) ** 2 < 20 ** 2
    assert len(minisam_teacher_init.teacher_objects(Unstable(disc), None, (256, 256), 60, 3, seed=0)) == 0
