"""Prompt-in-the-loop distillation (EdgeSAM): corrective clicks where the student's mask is wrong.

Box prompts alone teach the student what the teacher sees inside a box. After the first decode, each
prompt gets a click sampled from the pixels where student and teacher masks disagree (positive where
only the teacher's mask is on, negative where only the student's is); the teacher's decoder and the
student's both decode box + clicks, and the mask loss covers those masks too. Each round adds one click
to the prompts that still disagree. So the student learns how the teacher answers the prompts a user
would give to correct it, which is what an interactive tool needs.

The teacher's decoder runs on the cached teacher embedding, brought to the student's grid (exact when the
grids match, as for LiteMedSAM and its 64x64 students), and never learns.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .distill_losses import resize_like


def disagreement_clicks(student_logits: torch.Tensor, teacher_logits: torch.Tensor, generator: torch.Generator):
    """One click per mask where the two masks disagree.

    Args:
        student_logits: ``(P, h, w)``; resized onto the teacher's size if they differ.
        teacher_logits: ``(P, H, W)``.

    Returns:
        ``(rows, yx, labels)``: the indices of the masks that disagree anywhere, the ``(len(rows), 2)`` pixel
        (row, column) of each click on the teacher's grid, and the label (1: the teacher's mask is on there,
        0: off). Masks that agree everywhere get no click.
    """
    s = student_logits.detach().float()
    if s.shape[-2:] != teacher_logits.shape[-2:]:
        s = F.interpolate(s[:, None], size=teacher_logits.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    teacher_on = teacher_logits.detach().float() > 0
    wrong = (s > 0) != teacher_on
    rows, yx, labels = [], [], []
    for p in range(wrong.shape[0]):
        where = wrong[p].nonzero()
        if where.shape[0] == 0:
            continue
        pick = where[int(torch.randint(where.shape[0], (1,), generator=generator))]
        rows.append(p)
        yx.append(pick)
        labels.append(int(teacher_on[p, pick[0], pick[1]]))
    if not rows:
        return [], torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return rows, torch.stack(yx).cpu(), torch.tensor(labels)


@dataclass
class LoopInputs:
    """What one micro-batch's corrective prompts need besides the student's own outputs."""

    prompts: "PromptLoop"
    teacher_embedding: torch.Tensor
    teacher_logits: list
    generator: torch.Generator


@dataclass
class _Prompt:
    """The clicks one slice's prompts have gathered so far (input-frame x, y)."""

    rows: list
    points: torch.Tensor  # (len(rows), k, 2)
    labels: torch.Tensor  # (len(rows), k)


class PromptLoop:
    """Adds ``rounds`` corrective clicks per prompt; holds a frozen copy of the teacher's decoder.

    Args:
        student: the student ``SamModel``, used only as the shape of the teacher's decoder copy.
        teacher_decoder_state: the teacher's prompt encoder + mask decoder in HF layout
            (``student.teacher_decoder_state``).
        rounds: clicks added per prompt and step (0: off).
    """

    def __init__(self, student, teacher_decoder_state: dict, rounds: int = 1):
        from .student import load_decoder_state

        if rounds < 0:
            raise ValueError(f"train.loop_rounds must be >= 0, got {rounds}")
        self.rounds = int(rounds)
        self.teacher = copy.deepcopy(student).eval()
        load_decoder_state(self.teacher, teacher_decoder_state)
        self.teacher.vision_encoder = None  # only the decoder runs; the copy's encoder would be dead weight
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.image_size = int(student.config.vision_config.image_size)

    def to(self, device):
        self.teacher.to(device)
        return self

    def extra_masks(self, student, embeddings, boxes: list, student_logits: list, teacher_embeddings,
                    teacher_logits: list, generator: torch.Generator):
        """Decode box + corrective clicks with both decoders.

        Returns ``(student_extra, teacher_extra)``: per slice, the ``(Q, 1, h, w)`` student logits and the
        ``(Q, H, W)`` teacher logits of the refined prompts (``Q`` may be 0: nothing to correct).
        """
        s_extra, t_extra = [], []
        grid = embeddings.shape[-2:]
        for i, box in enumerate(boxes):
            t_emb = resize_like(teacher_embeddings[i: i + 1].float(), grid).to(embeddings.dtype)
            s_masks, t_masks = student_logits[i][:, 0], teacher_logits[i]
            size = t_masks.shape[-2:]
            prompt = None
            s_out, t_out = [], []
            for _ in range(self.rounds):
                prompt = self._add_click(prompt, s_masks, t_masks, generator, size)
                if prompt is None:
                    break
                kwargs = {"input_boxes": box[prompt.rows][None],
                          "input_points": prompt.points[None].to(box.device, box.dtype),
                          "input_labels": prompt.labels[None].to(box.device), "multimask_output": False}
                s_new = student(image_embeddings=embeddings[i: i + 1], **kwargs).pred_masks[0]
                with torch.no_grad():
                    t_new = self.teacher(image_embeddings=t_emb, **kwargs).pred_masks[0][:, 0].float()
                if t_new.shape[-2:] != size:
                    t_new = F.interpolate(t_new[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
                s_out.append(s_new)
                t_out.append(t_new)
                # the next round corrects these masks, for the prompts that still have clicks
                s_masks, t_masks = s_new[:, 0], t_new
            if s_out:
                s_extra.append(torch.cat(s_out))
                t_extra.append(torch.cat(t_out).to(teacher_logits[i].dtype))
            else:
                s_extra.append(student_logits[i][:0])
                t_extra.append(teacher_logits[i][:0])
        return s_extra, t_extra

    def _add_click(self, prompt, s_masks, t_masks, generator, size):
        rows, yx, labels = disagreement_clicks(s_masks, t_masks, generator)
        if not rows:
            return None
        # pixel centre on the mask grid -> input frame (both cover the same padded square)
        xy = (yx.flip(-1).float() + 0.5) * torch.tensor([self.image_size / size[1], self.image_size / size[0]])
        if prompt is None:
            return _Prompt(rows, xy[:, None], labels[:, None])
        # masks of this round are indexed 0..len(prompt.rows)-1: keep those that still disagree
        return _Prompt([prompt.rows[r] for r in rows], torch.cat([prompt.points[rows], xy[:, None]], dim=1),
                       torch.cat([prompt.labels[rows], labels[:, None]], dim=1))
