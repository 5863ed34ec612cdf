"""The one owner of preprocessing and coordinate mapping.

Every backend resizes the longest image side to its input size, normalises, and pads bottom/right to a
square; prompts are mapped into that resized frame and masks are mapped back. Keeping all of it here means
the predictor, the napari widget and the training code cannot disagree about where a pixel is.
Coordinates are always (x, y) in pixels, as in segment-anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .intensity import normalize_intensity

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a backend wants its pixels.

    Attributes:
        image_size: side of the square network input (1024 for SAM ViT, 256 for LiteMedSAM).
        normalization: ``"imagenet"`` (SAM: 0-255 then mean/std) or ``"minmax"`` (LiteMedSAM: min-max to
            [0, 1] *after* the resize, as the original LiteMedSAM inference does).
    """

    image_size: int
    normalization: str = "imagenet"


def validate_image(image) -> np.ndarray:
    """Return ``image`` as an ndarray ``(H, W)`` or ``(H, W, 3)`` or raise :class:`InputError`."""
    if image is None:
        raise InputError("No image given; pass a 2D grey (H, W) or RGB (H, W, 3) array.")
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"Image dtype {arr.dtype} is not numeric; pass a numeric array.")
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]  # RGBA screenshots: alpha carries no anatomy
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise InputError(
            f"Image has shape {arr.shape}; expected a 2D grey (H, W) or RGB (H, W, 3) slice. "
            "For a 3D volume pass one slice at a time (the napari widget does this for you)."
        )
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise InputError(f"Image of shape {arr.shape} is too small to segment; it needs at least 2x2 pixels.")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError("Image contains NaN or infinite values; replace them (e.g. np.nan_to_num) first.")
    if arr.min() == arr.max():
        raise InputError("Image is constant (every pixel has the same value); there is nothing to segment.")
    return arr


def preprocess_shape(height: int, width: int, target: int) -> tuple[int, int]:
    """Size after resizing the longest side to ``target`` (rounded like segment-anything)."""
    scale = target / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def prepare_image(image, spec: PreprocessSpec, intensity: str = "minmax") -> tuple[torch.Tensor, tuple, tuple]:
    """Raw image -> network input ``(1, 3, S, S)`` float32.

    Returns:
        (pixels, original_hw, input_hw): ``input_hw`` is the unpadded size inside the S x S input.
    """
    arr = validate_image(image)
    unit = normalize_intensity(arr, intensity)
    if unit.ndim == 2:
        unit = np.repeat(unit[..., None], 3, axis=-1)
    h, w = unit.shape[:2]
    new_h, new_w = preprocess_shape(h, w, spec.image_size)
    x = torch.from_numpy(np.ascontiguousarray(unit.transpose(2, 0, 1)))[None]
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    if spec.normalization == "minmax":
        lo, hi = x.amin(), x.amax()
        x = (x - lo) / torch.clamp(hi - lo, min=1e-8)
    elif spec.normalization == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN_255).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD_255).view(1, 3, 1, 1)
        x = (x * 255.0 - mean) / std
    else:
        raise ValueError(f"unknown normalization {spec.normalization!r}")
    x = F.pad(x, (0, spec.image_size - new_w, 0, spec.image_size - new_h))
    return x.contiguous(), (h, w), (new_h, new_w)


def scale_coords(coords: np.ndarray, original_hw: tuple, target: int) -> np.ndarray:
    """Map (x, y) coordinates from the original image into the resized network frame."""
    h, w = original_hw
    new_h, new_w = preprocess_shape(h, w, target)
    out = np.asarray(coords, dtype=np.float32).copy()
    out[..., 0] *= new_w / w
    out[..., 1] *= new_h / h
    return out


def unscale_coords(coords: np.ndarray, original_hw: tuple, target: int) -> np.ndarray:
    """Inverse of :func:`scale_coords`: (x, y) in the network frame -> original pixels."""
    h, w = original_hw
    new_h, new_w = preprocess_shape(h, w, target)
    out = np.asarray(coords, dtype=np.float32).copy()
    out[..., 0] *= w / new_w
    out[..., 1] *= h / new_h
    return out


def scale_boxes(boxes: np.ndarray, original_hw: tuple, target: int) -> np.ndarray:
    """Map ``(..., 4)`` boxes (x0, y0, x1, y1) into the resized network frame."""
    b = np.asarray(boxes, dtype=np.float32)
    return scale_coords(b.reshape(-1, 2, 2), original_hw, target).reshape(b.shape)


def postprocess_logits(low_res: torch.Tensor, input_hw: tuple, original_hw: tuple, image_size: int) -> torch.Tensor:
    """Low-res mask logits ``(..., 256, 256)`` -> logits at the original resolution ``(..., H, W)``.

    Upsample to the network frame, crop the padding, resize to the original size (as segment-anything).
    """
    lead = low_res.shape[:-2]
    x = low_res.reshape(-1, 1, *low_res.shape[-2:]).float()
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., : input_hw[0], : input_hw[1]]
    x = F.interpolate(x, size=tuple(original_hw), mode="bilinear", align_corners=False)
    return x.reshape(*lead, *original_hw)


def mask_to_logits(mask: np.ndarray, image_size: int, low_hw: tuple, value: float = 8.0) -> np.ndarray:
    """A binary mask at the original resolution -> SAM ``mask_input`` logits ``(1, *low_hw)``.

    The inverse of :func:`postprocess_logits`: resize into the network frame (longest side ``image_size``),
    pad bottom/right, resize to the decoder's low-res grid; inside ``+value``, outside ``-value``.
    """
    m = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
    h, w = m.shape[-2:]
    new_h, new_w = preprocess_shape(h, w, image_size)
    m = F.interpolate(m, size=(new_h, new_w), mode="bilinear", align_corners=False)
    m = F.pad(m, (0, image_size - new_w, 0, image_size - new_h))
    m = F.interpolate(m, size=tuple(low_hw), mode="bilinear", align_corners=False)
    return ((m[0] > 0.5).float() * 2 - 1).mul(value).numpy()
