"""Distillation losses: ``alpha * feature MSE + (1 - alpha) * mask KL``.

Teacher and student may run at different input sizes (ViT-H 1024² vs a 256² student) and so produce
embeddings on different grids and mask logits at different resolutions. Both grids cover the same padded
square input (longest side resized, bottom/right padding), so resizing one onto the other aligns them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_like(x: torch.Tensor, size: tuple) -> torch.Tensor:
    """Resize ``(B, C, h, w)`` to ``size``: area averaging when shrinking (no aliasing), bilinear otherwise."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def feature_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between image embeddings, in units of the teacher embedding's RMS.

    The teacher is brought to the student's grid (the student cannot represent finer detail than its grid).
    Dividing by the teacher's RMS makes ``alpha`` mean the same thing for every teacher (SAM ViT-H and
    LiteMedSAM embeddings differ in scale), while keeping the student on the teacher's absolute scale,
    which the teacher's decoder, reused by the student, expects.
    """
    t = resize_like(teacher.float(), student.shape[-2:])
    scale = t.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-6)
    return ((student.float() - t) / scale).pow(2).mean()


def mask_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-pixel KL(teacher || student) of Bernoulli masks softened by ``temperature`` (x T², as Hinton et al.).

    Args:
        student_logits, teacher_logits: ``(P, H, W)`` low-res mask logits (sizes may differ; the student's
            are resized onto the teacher's).
    """
    s = student_logits.float()
    t = teacher_logits.float()
    if s.shape[-2:] != t.shape[-2:]:
        s = F.interpolate(s[:, None], size=t.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    T = float(temperature)
    p_t = torch.sigmoid(t / T)
    log_p_t, log_q_t = F.logsigmoid(t / T), F.logsigmoid(-t / T)
    log_p_s, log_q_s = F.logsigmoid(s / T), F.logsigmoid(-s / T)
    kl = p_t * (log_p_t - log_p_s) + (1 - p_t) * (log_q_t - log_q_s)
    return kl.mean() * T * T


def distillation_loss(student_emb, teacher_emb, student_logits: list, teacher_logits: list, alpha: float,
                      temperature: float) -> tuple[torch.Tensor, dict]:
    """The combined loss over a batch and its parts (floats, for logging)."""
    feat = feature_loss(student_emb, teacher_emb)
    if alpha < 1.0 and student_logits:
        kl = torch.stack([mask_kl(s[:, 0], t, temperature) for s, t in zip(student_logits, teacher_logits)]).mean()
    else:
        kl = feat.new_zeros(())
    total = alpha * feat + (1.0 - alpha) * kl
    return total, {"loss": float(total.detach()), "feature_mse": float(feat.detach()), "mask_kl": float(kl.detach())}
