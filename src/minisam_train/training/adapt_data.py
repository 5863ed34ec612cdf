"""Few-shot training data for adapters: the modality's ``adapt_train`` slices as network-frame views.

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

from napari_qlora_minisam.transforms import prepare_image

from ..data import CosmosDataset, DataError, read_modalities, split_images

# Modalities for which no labelled data exists here; asking for one gets a specific explanation.
NO_LABELLED_DATA = {"us": "ultrasound", "ultrasound": "ultrasound"}


@dataclass
class AdaptView:
    """One slice in the network frame.

    Attributes:
        pixels: ``(1, 3, S, S)`` network input.
        masks: ``(K, S, S)`` bool object masks in the network frame.
        valid: ``(S, S)`` bool, True inside the image (False on padding).
        names: the K object class names.
        source: ``dataset/image_name`` (+ ``#augN`` for augmented copies).
        embedding: the frozen encoder's output, when cached.
        original: the untouched record (validation scores masks at the original resolution).
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


@dataclass
class AugmentConfig:
    """Random affine + intensity augmentation (``data.augment.*``)."""

    enabled: bool = True
    views_per_image: int = 4      # 1 original + (n - 1) augmented copies of every training slice
    rotate_deg: float = 10.0
    scale: float = 0.1            # zoom factor in [1 - scale, 1 + scale]
    translate: float = 0.05       # fraction of the image size
    gamma: float = 0.3            # intensity gamma in [1 - gamma, 1 + gamma]
    hflip: bool = False           # off by default: left/right carries anatomy (heart, liver sides)


def datasets_for_modality(roots, modality: str, overrides: dict | None = None, datasets=None) -> list[str]:
    """Dataset names whose modality is ``modality`` under ``roots`` (``modalities.json`` + overrides)."""
    modality = str(modality).lower()
    known: dict[str, str] = {}
    for r in roots:
        known.update(read_modalities(r))
    known.update({k: str(v).lower() for k, v in (overrides or {}).items()})
    if datasets:
        missing = [d for d in datasets if d not in known]
        wrong = [d for d in datasets if d in known and known[d] != modality]
        if wrong:
            raise DataError(f"data.datasets {wrong} are not {modality!r} data "
                            f"(modalities: { {d: known[d] for d in wrong} }).")
        return [d for d in datasets if d not in missing] + missing
    picked = sorted(d for d, m in known.items() if m == modality)
    if not picked:
        by_mod: dict[str, list] = {}
        for d, m in sorted(known.items()):
            by_mod.setdefault(m, []).append(d)
        if modality in NO_LABELLED_DATA:
            raise DataError(
                f"No labelled {NO_LABELLED_DATA[modality]} data exists under {[str(r) for r in roots]}: "
                "an adapter needs images with masks (the ultrasound frames here are unlabelled). "
                f"Modalities with labelled data: {by_mod}."
            )
        raise DataError(
            f"Unknown modality {modality!r}: no dataset under {[str(r) for r in roots]} is mapped to it in "
            f"modalities.json. Known modalities and their datasets: {by_mod}. Use --modality with one of "
            f"{sorted(by_mod)}, or map datasets with data.modalities={{NAME: {modality}}}."
        )
    return picked


def load_adapt_records(cfg_data, modality: str, seed: int):
    """The modality's training slices, split into (train, val) records; plus a summary for metadata.

    Never reads the ``test`` split: training on it would make every score in docs/adapters.md meaningless.
    """
    if str(cfg_data.split_key) == "test":
        raise DataError("data.split_key=test: adapters must never be trained on the test split; "
                        "use data.split_key=adapt_train.")
    roots = [r for r in (cfg_data.roots or [])]
    if not roots:
        raise DataError("No data root given; set data.roots=[DIR, ...] (COSMOS layout folders).")
    names = datasets_for_modality(roots, modality, dict(cfg_data.modalities or {}), list(cfg_data.datasets or []))
    include = split_images(cfg_data.split_file, cfg_data.split_key) if cfg_data.split_file else None
    if include is not None:
        names = [d for d in names if d in include and include[d]]
        if not names:
            raise DataError(f"No {modality!r} dataset has images under {cfg_data.split_key!r} in "
                            f"{cfg_data.split_file}.")
    present = [r for r in roots if _has_any(r, cfg_data.split, names)]
    ds = CosmosDataset(present or roots, split=cfg_data.split, datasets=names,
                       modalities={n: modality for n in names}, include=include,
                       min_object_pixels=int(cfg_data.min_object_pixels))
    records = [r for r in ds if r.objects]
    if not records:
        raise DataError(f"The {modality!r} training slices ({names}) hold no object of at least "
                        f"{cfg_data.min_object_pixels} pixels.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(records))
    if cfg_data.max_samples:
        order = order[: int(cfg_data.max_samples)]
    records = [records[i] for i in order]
    n_val = int(math.floor(len(records) * float(cfg_data.val_fraction)))
    if float(cfg_data.val_fraction) > 0 and len(records) >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, len(records) - 1)
    val, train = records[:n_val], records[n_val:]
    summary = {
        "modality": modality,
        "datasets": names,
        "split_file": str(cfg_data.split_file) if cfg_data.split_file else None,
        "split_key": str(cfg_data.split_key),
        "train_slices": sorted(f"{r.dataset}/{r.image_name}" for r in train),
        "val_slices": sorted(f"{r.dataset}/{r.image_name}" for r in val),
        "train_objects": int(sum(len(r.objects) for r in train)),
        "val_objects": int(sum(len(r.objects) for r in val)),
        "classes": sorted({f"{r.dataset}/{c}" for r in train + val for c in r.objects}),
    }
    return train, val, summary


def _has_any(root, split, names) -> bool:
    from pathlib import Path

    return any((Path(root) / "data" / split / n).is_dir() for n in names)


def make_view(image: np.ndarray, objects: dict, spec, intensity: str, source: str, original=None) -> AdaptView | None:
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
    return AdaptView(pixels, masks[keep], valid, [names[i] for i in keep], source, tuple(original_hw),
                     tuple(input_hw), original=original)


def augment(image: np.ndarray, objects: dict, rng: np.random.Generator, cfg: AugmentConfig,
            min_pixels: int) -> tuple[np.ndarray, dict]:
    """A randomly moved and re-contrasted copy of a slice and its masks (same size)."""
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
    new_objects = {}
    for name, mask in objects.items():
        m = torch.from_numpy(mask.astype(np.float32))[None, None]
        moved_m = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0] > 0.5
        if int(moved_m.sum()) >= min_pixels:
            new_objects[name] = moved_m.numpy()
    return out.numpy(), new_objects


def build_views(records, spec, intensity: str, aug: AugmentConfig, rng: np.random.Generator,
                min_pixels: int, augmented: bool) -> list[AdaptView]:
    """Views of ``records``: the original of each, plus augmented copies when ``augmented``."""
    views = []
    copies = max(1, int(aug.views_per_image)) if (augmented and aug.enabled) else 1
    for rec in records:
        src = f"{rec.dataset}/{rec.image_name}"
        for k in range(copies):
            if k == 0:
                image, objects, name = rec.image, rec.objects, src
            else:
                image, objects = augment(rec.image, rec.objects, rng, aug, min_pixels)
                name = f"{src}#aug{k}"
                if not objects:
                    continue
            view = make_view(image, objects, spec, intensity, name, original=rec if k == 0 else None)
            if view is not None:
                views.append(view)
    return views
