"""Few-shot training data for adapters: labelled slices as network-frame views.

A *view* is one (possibly augmented) slice after the backend's own preprocessing (``transforms.prepare_image``:
resize the longest side, normalise, pad), with its object masks mapped into the same frame. With a handful
of labelled slices, augmentation (small affine moves and intensity changes) is what keeps a LoRA adapter
from memorising them. Views are made once, before training, so that the frozen encoder's embeddings can
be cached when LoRA does not touch the encoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..transforms import prepare_image


@dataclass
class AnnotatedSlice:
    """One 2D slice and its objects, wherever it came from (a COSMOS PNG, a TIFF pair, a napari layer).

    Attributes:
        image: ``(H, W)`` or ``(H, W, 3)`` pixels, any numeric dtype.
        objects: object name (class name or label id) -> ``(H, W)`` bool mask, each non-empty.
        source: a readable name (``dataset/image``, ``scan.tif#z12``) for logs and metadata.
        neighbours: object name -> ``(H, W)`` bool masks of the same object on the adjacent slices of its
            volume (for neighbour prompts, ``PromptSamplingConfig.neighbour``); empty for a lone slice.
    """

    image: np.ndarray
    objects: dict
    source: str
    neighbours: dict = field(default_factory=dict)


@dataclass
class AdaptView:
    """One slice in the network frame.

    Attributes:
        pixels: ``(1, 3, S, S)`` network input.
        masks: ``(K, S, S)`` bool object masks in the network frame.
        valid: ``(S, S)`` bool, True inside the image (False on padding).
        names: the K object names.
        source: the slice's source (+ ``#augN`` for augmented copies).
        embedding: the frozen encoder's output, when cached.
        original: the untouched :class:`AnnotatedSlice` (validation scores masks at the original resolution).
        neighbours: object name -> adjacent-slice masks at the original resolution, moved with this view.
    """

    pixels: torch.Tensor
    masks: torch.Tensor
    valid: torch.Tensor
    names: list
    source: str
    original_hw: tuple
    input_hw: tuple
    embedding: torch.Tensor | None = None
    original: object = field(default=None, repr=False)
    neighbours: dict = field(default_factory=dict, repr=False)


@dataclass
class AugmentConfig:
    """Random affine + intensity augmentation (``data.augment.*`` in minisam-train)."""

    enabled: bool = True
    views_per_image: int = 4      # 1 original + (n - 1) augmented copies of every training slice
    rotate_deg: float = 10.0
    scale: float = 0.1            # zoom factor in [1 - scale, 1 + scale]
    translate: float = 0.05       # fraction of the image size
    gamma: float = 0.3            # intensity gamma in [1 - gamma, 1 + gamma]
    hflip: bool = False           # off by default: left/right carries anatomy (heart, liver sides)


def make_view(image: np.ndarray, objects: dict, spec, intensity: str, source: str, original=None,
              neighbours: dict | None = None) -> AdaptView | None:
    """Preprocess one slice and map its masks into the network frame (``None`` if no object survives)."""
    pixels, original_hw, input_hw = prepare_image(image, spec, intensity)
    size = spec.image_size
    names = list(objects)
    stack = torch.from_numpy(np.stack([objects[n] for n in names]).astype(np.float32))[:, None]
    resized = F.interpolate(stack, size=input_hw, mode="bilinear", align_corners=False)[:, 0] > 0.5
    masks = F.pad(resized, (0, size - input_hw[1], 0, size - input_hw[0]))
    keep = [i for i in range(len(names)) if masks[i].any()]
    if not keep:
        return None
    valid = torch.zeros(size, size, dtype=torch.bool)
    valid[: input_hw[0], : input_hw[1]] = True
    kept = [names[i] for i in keep]
    near = {n: list((neighbours or {})[n]) for n in kept if (neighbours or {}).get(n)}
    return AdaptView(pixels, masks[keep], valid, kept, source, tuple(original_hw),
                     tuple(input_hw), original=original, neighbours=near)


def augment(image: np.ndarray, objects: dict, rng: np.random.Generator, cfg: AugmentConfig,
            min_pixels: int, neighbours: dict | None = None):
    """A randomly moved and re-contrasted copy of a slice and its masks (same size).

    With ``neighbours`` (object name -> adjacent-slice masks) it returns ``(image, objects, neighbours)``,
    the neighbour masks moved the same way (a prompt from them must fit the moved slice).
    """
    img = torch.from_numpy(np.asarray(image, dtype=np.float32))
    grey = img.ndim == 2
    img = img[None, None] if grey else img.permute(2, 0, 1)[None]
    lo, hi = float(img.min()), float(img.max())
    h, w = img.shape[-2:]
    angle = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
    zoom = rng.uniform(1 - cfg.scale, 1 + cfg.scale)
    tx, ty = rng.uniform(-cfg.translate, cfg.translate, size=2) * 2  # affine_grid works in [-1, 1]
    flip = -1.0 if (cfg.hflip and rng.random() < 0.5) else 1.0
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    # Aspect-correct rotation in normalised coordinates: scale x/y by the image's sides.
    theta = torch.tensor([[flip * cos, -sin * h / w, tx], [sin * w / h * flip, cos, ty]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    moved = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    unit = ((moved - lo) / max(hi - lo, 1e-6)).clamp(0, 1)
    gamma = rng.uniform(1 - cfg.gamma, 1 + cfg.gamma)
    out = (unit ** gamma) * (hi - lo) + lo
    out = out[0, 0] if grey else out[0].permute(1, 2, 0)
    def move(mask):
        m = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
        return (F.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0] > 0.5).numpy()

    new_objects = {}
    for name, mask in objects.items():
        moved_m = move(mask)
        if int(moved_m.sum()) >= min_pixels:
            new_objects[name] = moved_m
    if neighbours is None:
        return out.numpy(), new_objects
    new_neighbours = {}
    for name, masks in neighbours.items():
        moved_n = [mv for mv in (move(m) for m in masks) if mv.any()]
        if name in new_objects and moved_n:
            new_neighbours[name] = moved_n
    return out.numpy(), new_objects, new_neighbours


def build_views(slices: list[AnnotatedSlice], spec, intensity: str, aug: AugmentConfig, rng: np.random.Generator,
                min_pixels: int, augmented: bool) -> list[AdaptView]:
    """Views of ``slices``: the original of each, plus augmented copies when ``augmented``."""
    views = []
    copies = max(1, int(aug.views_per_image)) if (augmented and aug.enabled) else 1
    for sl in slices:
        for k in range(copies):
            near = getattr(sl, "neighbours", None) or {}
            if k == 0:
                image, objects, name = sl.image, sl.objects, sl.source
            elif near:
                image, objects, near = augment(sl.image, sl.objects, rng, aug, min_pixels, near)
                name = f"{sl.source}#aug{k}"
            else:
                image, objects = augment(sl.image, sl.objects, rng, aug, min_pixels)
                name = f"{sl.source}#aug{k}"
            if not objects:
                continue
            view = make_view(image, objects, spec, intensity, name, original=sl if k == 0 else None,
                             neighbours=near)
            if view is not None:
                views.append(view)
    return views


@torch.no_grad()
def embed_views(model, views: list[AdaptView], show_progress: bool = False, should_stop=None) -> None:
    """Embed every view once with the frozen encoder (``view.embedding``); stop early when ``should_stop()``.

    A view left without an embedding is encoded when it is used, so stopping early costs nothing but time.
    """
    from tqdm.auto import tqdm

    model.eval()
    for v in tqdm(views, desc="embedding views (frozen encoder)", disable=not show_progress, dynamic_ncols=True):
        if should_stop is not None and should_stop():
            break
        v.embedding = model.encode(v.pixels).detach()
    model.train()
