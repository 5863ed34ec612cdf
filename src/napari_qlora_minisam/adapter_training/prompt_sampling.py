"""Prompts for training: jittered boxes and positive / negative points, mixed.

LiteMedSAM was trained with boxes only, so its point prompts are useless out of the box. An adapter learns
the points layer only if it sees points during training; it keeps its box skill only if it keeps seeing
boxes. Each training view therefore draws one prompt *mode* for all its objects (so they share one decoder
call) from a configured mix. Boxes get their sides jittered, because users never draw tight boxes; points
start at the object's centroid some of the time (what the COSMOS protocol clicks) and at random interior
pixels otherwise (what users click); negative points come from the background around the object, as in
the protocol's 2x expanded box.

A view cut from a volume may also carry each object's masks on the adjacent slices; with
``neighbour > 0`` such a view is sometimes prompted the way 3D propagation prompts a slice (the box of the
neighbour's mask plus a margin, and per ``neighbour_prompt`` that mask as ``mask_input`` and a click at its
most interior pixel: ``volume.box_from_mask`` / ``volume.neighbour_prompt``) while the target stays this
slice's mask. An adapter trained on each slice's own prompts only never learns to correct a neighbour's.

All coordinates are (x, y) in the network's input frame; masks are ``(K, S, S)`` bool in that frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..masks import centroid, tight_box
from ..transforms import mask_to_logits, scale_boxes, scale_coords
from ..volume import check_neighbour_prompt, neighbour_box, neighbour_prompt

MODES = ("box", "points", "box_points")
NEIGHBOUR = "neighbour"  # the mode of prompts taken from an adjacent slice's mask


@dataclass
class PromptBatch:
    """Prompts for the ``P`` objects of one view, ready for ``SamBackend.decode``.

    ``points`` is ``(P, N, 2)`` with label ``-1`` padding where an object has fewer than ``N`` points.
    ``mask_prompts`` is ``(P, H, W)`` bool at the slice's original resolution (neighbour prompts with a
    mask); :meth:`mask_input` turns it into the decoder's low-res logits once the embedding's grid is known.
    """

    mode: str
    boxes: torch.Tensor | None = None
    points: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    point_multimask: bool = True
    mask_prompts: np.ndarray | None = None

    @property
    def multimask(self) -> bool:
        # A lone box is unambiguous (one mask, as LiteMedSAM was trained); points are ambiguous (3 masks)
        # unless the adapter is taught to answer them through the single-mask output (point_multimask=False).
        # Propagation decodes neighbour prompts through the single output, so training does too.
        return self.mode not in ("box", NEIGHBOUR) and self.point_multimask

    def mask_input(self, image_size: int, low_hw: tuple) -> torch.Tensor | None:
        """``(P, 1, *low_hw)`` ``mask_input`` logits of ``mask_prompts``, as ``MiniSamPredictor.mask_prompt``."""
        if self.mask_prompts is None:
            return None
        logits = [mask_to_logits(m, image_size, tuple(low_hw)) for m in self.mask_prompts]
        return torch.from_numpy(np.stack(logits))


@dataclass
class PromptSamplingConfig:
    """How training prompts are drawn (``train.prompts.*`` in the config).

    Attributes:
        mix: relative frequency of each mode: ``box``, ``points``, ``box_points`` (box + points).
        box_jitter: each box side moves by up to this fraction of the box's width/height (uniform).
        max_pos_points: 1..max positive points per object.
        max_neg_points: 0..max negative points per object (when negatives are drawn).
        neg_prob: chance that a point prompt also carries negative points.
        centroid_prob: chance that the first positive point is the centroid (if it lies inside).
        point_multimask: decode point prompts with SAM's 3 candidate masks (True) or with the single
            mask output that box prompts use (False). LiteMedSAM's candidate outputs never saw medical
            training; its single output did.
        neighbour: chance that a view whose objects all have a neighbour-slice mask is prompted from the
            neighbour (module docstring) instead of by ``mix``; 0 (the default) never does.
        neighbour_prompt: what the neighbour gives, one of ``volume.NEIGHBOUR_PROMPTS``.
        neighbour_margin: the neighbour box's margin (``volume.box_from_mask``), as propagation uses it.
    """

    mix: dict
    box_jitter: float = 0.1
    max_pos_points: int = 5
    max_neg_points: int = 5
    neg_prob: float = 0.5
    centroid_prob: float = 0.5
    point_multimask: bool = True
    neighbour: float = 0.0
    neighbour_prompt: str = "box+mask+point"
    neighbour_margin: float = 0.1

    def __post_init__(self):
        unknown = set(self.mix) - set(MODES)
        if unknown:
            raise ValueError(f"train.prompts.mix: unknown mode(s) {sorted(unknown)}; use {MODES}.")
        if sum(float(v) for v in self.mix.values()) <= 0:
            raise ValueError("train.prompts.mix: at least one mode needs a positive weight.")
        if self.max_pos_points < 1 or self.max_neg_points < 0:
            raise ValueError("train.prompts: max_pos_points >= 1 and max_neg_points >= 0 are required.")
        if not 0.0 <= float(self.neighbour) <= 1.0:
            raise ValueError(f"train.prompts.neighbour={self.neighbour}: a probability in [0, 1] is required.")
        try:
            check_neighbour_prompt(self.neighbour_prompt)
        except InputError as exc:
            raise ValueError(f"train.prompts.neighbour_prompt: {exc}") from None


def jitter_box(box: np.ndarray, frac: float, rng: np.random.Generator, limit: int) -> np.ndarray:
    """Move each side by up to ``frac`` of the box size; keep it inside ``[0, limit)`` and non-empty."""
    w, h = max(box[2] - box[0], 1.0), max(box[3] - box[1], 1.0)
    delta = rng.uniform(-frac, frac, size=4) * np.array([w, h, w, h])
    out = np.clip(box + delta, 0, limit - 1)
    out[2], out[3] = max(out[2], out[0] + 1), max(out[3], out[1] + 1)
    return out.astype(np.float32)


class PromptSampler:
    """Draw training prompts for the objects of one view; see the module docstring."""

    def __init__(self, config: PromptSamplingConfig):
        self.config = config
        names = [m for m in MODES if float(config.mix.get(m, 0)) > 0]
        weights = np.array([float(config.mix[m]) for m in names])
        self._modes, self._probs = names, weights / weights.sum()

    def sample_view(self, view, rng: np.random.Generator) -> PromptBatch:
        """Prompts for the objects of an ``AdaptView``: from a neighbour slice (sometimes, when it has one)
        or by :meth:`sample`. Views without neighbours draw nothing extra, so their prompts do not change."""
        neighbours = getattr(view, "neighbours", None) or {}
        if (self.config.neighbour > 0 and view.names and all(neighbours.get(n) for n in view.names)
                and rng.random() < self.config.neighbour):
            picks = [neighbours[n][int(rng.integers(len(neighbours[n])))] for n in view.names]
            return self.neighbour_batch(picks, view.original_hw, int(view.masks.shape[-1]))
        return self.sample(view.masks.numpy(), rng)

    def neighbour_batch(self, neighbour_masks, original_hw: tuple, size: int) -> PromptBatch:
        """Propagation's prompts from one ``(H, W)`` neighbour mask per object, in the network frame."""
        cfg = self.config
        kind = cfg.neighbour_prompt
        batch = PromptBatch(NEIGHBOUR, point_multimask=cfg.point_multimask)
        boxes = [neighbour_box(np.asarray(m, bool), kind, cfg.neighbour_margin) for m in neighbour_masks]
        if boxes[0] is not None:  # the click alone sends no box
            batch.boxes = torch.from_numpy(scale_boxes(np.stack(boxes), original_hw, size))
        extras = [neighbour_prompt(np.asarray(m, bool), kind) for m in neighbour_masks]
        if "point" in kind:
            pts = np.stack([e["points"] for e in extras])  # (P, 1, 2)
            batch.points = torch.from_numpy(scale_coords(pts, original_hw, size).astype(np.float32))
            batch.labels = torch.from_numpy(np.stack([e["point_labels"] for e in extras]))
        if "mask" in kind:
            batch.mask_prompts = np.stack([e["mask"] for e in extras])
        return batch

    def sample(self, masks: np.ndarray, rng: np.random.Generator) -> PromptBatch:
        """Prompts for ``masks`` ``(P, S, S)`` (each non-empty)."""
        mode = self._modes[int(rng.choice(len(self._modes), p=self._probs))]
        size = masks.shape[-1]
        batch = PromptBatch(mode, point_multimask=self.config.point_multimask)
        if mode in ("box", "box_points"):
            boxes = [jitter_box(tight_box(m), self.config.box_jitter, rng, size) for m in masks]
            batch.boxes = torch.from_numpy(np.stack(boxes))
        if mode in ("points", "box_points"):
            pts = [self._points(m, rng) for m in masks]
            n = max(len(p) for p, _ in pts)
            coords = np.zeros((len(pts), n, 2), np.float32)
            labels = np.full((len(pts), n), -1, np.int64)  # -1: "not a point" padding in SAM's encoder
            for i, (p, lab) in enumerate(pts):
                coords[i, : len(p)], labels[i, : len(p)] = p, lab
            batch.points, batch.labels = torch.from_numpy(coords), torch.from_numpy(labels)
        return batch

    def _points(self, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        ys, xs = np.nonzero(mask)
        n_pos = int(rng.integers(1, cfg.max_pos_points + 1))
        picks = rng.choice(len(xs), size=min(n_pos, len(xs)), replace=False)
        pos = np.stack([xs[picks], ys[picks]], axis=1).astype(np.float32)
        if rng.random() < cfg.centroid_prob:
            c = centroid(mask)
            if mask[int(c[1]), int(c[0])]:  # a ring's or a crescent's centroid is background: no label for it
                pos[0] = c
        neg = np.zeros((0, 2), np.float32)
        if cfg.max_neg_points > 0 and rng.random() < cfg.neg_prob:
            neg = self._negatives(mask, int(rng.integers(1, cfg.max_neg_points + 1)), rng)
        coords = np.concatenate([pos, neg])
        labels = np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)])
        return coords, labels

    @staticmethod
    def _negatives(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        # Background inside the tight box expanded 2x about its centre (the COSMOS negative region).
        x0, y0, x1, y1 = tight_box(mask)
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0 + 1, y1 - y0 + 1
        size = mask.shape[-1]
        xa, xb = int(max(cx - w, 0)), int(min(cx + w, size - 1))
        ya, yb = int(max(cy - h, 0)), int(min(cy + h, size - 1))
        region = ~mask[ya: yb + 1, xa: xb + 1]
        ys, xs = np.nonzero(region)
        if len(xs) == 0:
            return np.zeros((0, 2), np.float32)
        picks = rng.choice(len(xs), size=min(n, len(xs)), replace=False)
        return np.stack([xs[picks] + xa, ys[picks] + ya], axis=1).astype(np.float32)
