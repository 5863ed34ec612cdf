"""``MedSegLoss``: BCE + soft Dice on mask logits, plus an IoU-head regression term.

Dice fights the class imbalance of small medical objects (a lesion may cover 0.5 % of a slice, where BCE
alone is happy to predict background); BCE keeps gradients alive where Dice saturates. With several
candidate masks per prompt (SAM's multimask output for ambiguous point prompts) only the best candidate
is penalised, as in SAM's own training, and the IoU head learns to predict each candidate's real IoU so
that a deployed tool (which picks the mask by predicted IoU) chooses well.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LossTerms:
    """The total loss and its parts (parts detached, for logging)."""

    total: torch.Tensor
    bce: float
    dice: float
    iou: float


class MedSegLoss(nn.Module):
    """Weighted BCE + Dice (+ IoU-head MSE) for ``(P, M, H, W)`` logits against ``(P, H, W)`` targets.

    Args:
        bce_weight: weight of the pixel-wise binary cross-entropy.
        dice_weight: weight of the soft Dice loss (1 - Dice).
        iou_weight: weight of the MSE between predicted IoU and the IoU of each thresholded candidate;
            0 disables it.
        smooth: Dice smoothing, keeps empty targets finite.
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, iou_weight: float = 1.0,
                 smooth: float = 1.0):
        super().__init__()
        if min(bce_weight, dice_weight, iou_weight) < 0 or bce_weight + dice_weight <= 0:
            raise ValueError("MedSegLoss: weights must be >= 0 and bce_weight + dice_weight > 0.")
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        self.iou_weight = float(iou_weight)
        self.smooth = float(smooth)

    def per_mask(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """BCE and Dice loss per candidate: ``(P, M)`` each."""
        t = target[:, None].to(logits.dtype).expand_as(logits)
        bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none").mean(dim=(-2, -1))
        prob = torch.sigmoid(logits)
        inter = (prob * t).sum(dim=(-2, -1))
        dice = 1.0 - (2.0 * inter + self.smooth) / (prob.sum(dim=(-2, -1)) + t.sum(dim=(-2, -1)) + self.smooth)
        return bce, dice

    def forward(self, logits: torch.Tensor, target: torch.Tensor, iou_pred: torch.Tensor | None = None,
                weight: torch.Tensor | None = None) -> LossTerms:
        """Loss of the best candidate per prompt, averaged over prompts.

        Args:
            logits: ``(P, M, H, W)`` mask logits (M = 1 or 3 candidates).
            target: ``(P, H, W)`` binary masks (float or bool) in the same frame.
            iou_pred: ``(P, M)`` predicted IoU, or ``None``.
            weight: ``(P, H, W)`` pixel weights (1 inside the image, 0 on padding), or ``None``.
        """
        if logits.dim() != 4 or target.dim() != 3 or logits.shape[0] != target.shape[0]:
            raise ValueError(f"MedSegLoss: logits {tuple(logits.shape)} must be (P, M, H, W) and target "
                             f"{tuple(target.shape)} (P, H, W).")
        if weight is not None:
            # Padding outside the image is neither object nor background the model can see; ignore it.
            logits = logits.masked_fill(~weight.bool()[:, None], -30.0)
        bce, dice = self.per_mask(logits, target)
        combined = self.bce_weight * bce + self.dice_weight * dice
        best = combined.argmin(dim=1)  # best candidate per prompt (SAM: "min over masks")
        idx = torch.arange(combined.shape[0], device=combined.device)
        total = combined[idx, best].mean()
        iou_term = torch.zeros((), device=logits.device)
        if iou_pred is not None and self.iou_weight > 0:
            with torch.no_grad():
                pred = logits > 0
                t = target[:, None].bool()
                inter = (pred & t).sum(dim=(-2, -1)).float()
                union = (pred | t).sum(dim=(-2, -1)).float()
                real_iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
            iou_term = F.mse_loss(iou_pred.float(), real_iou)
            total = total + self.iou_weight * iou_term
        return LossTerms(total, float(bce[idx, best].mean().detach()), float(dice[idx, best].mean().detach()),
                         float(iou_term.detach()))
