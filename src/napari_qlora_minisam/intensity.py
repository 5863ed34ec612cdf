"""Intensity policies: raw pixel values (uint8, uint16, CT in HU, float) -> float32 in [0, 1].

Each backend applies its own normalisation afterwards (see ``transforms.py``); the policy only decides
which raw range is mapped to [0, 1], which is what a radiologist's window does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class Window:
    """A CT display window, in Hounsfield units."""

    width: float
    level: float

    @property
    def bounds(self) -> tuple[float, float]:
        return self.level - self.width / 2.0, self.level + self.width / 2.0


# Standard radiology presets.
CT_WINDOWS: dict[str, Window] = {
    "ct_soft_tissue": Window(400, 40),
    "ct_lung": Window(1500, -600),
    "ct_bone": Window(1800, 400),
}
INTENSITY_POLICIES = ("minmax", "percentile", *CT_WINDOWS)
RANGE_PREFIX = "range:"  # "range:LO:HI": the raw range LO..HI, e.g. a viewer's contrast limits


def display_range(low: float, high: float) -> str:
    """The policy that feeds the model what a viewer shows with contrast limits ``low``..``high``.

    A string, so it keys the embedding cache like the named policies do.
    """
    return f"{RANGE_PREFIX}{float(low):.6g}:{float(high):.6g}"


def _range_bounds(policy: str) -> tuple[float, float] | None:
    if not policy.startswith(RANGE_PREFIX):
        return None
    try:
        low, high = (float(v) for v in policy[len(RANGE_PREFIX):].split(":"))
    except ValueError:
        return None
    return low, high


def check_policy(policy) -> str:
    """``policy`` if it is a named policy or a :func:`display_range`, else an :class:`InputError`."""
    if isinstance(policy, str) and (policy in INTENSITY_POLICIES or _range_bounds(policy) is not None):
        return policy
    raise InputError(f"Unknown intensity policy {policy!r}; choose one of {', '.join(INTENSITY_POLICIES)} "
                     "or a display range made by intensity.display_range(low, high).")


def hounsfield_warning(image: np.ndarray, policy: str) -> str | None:
    """Why a CT window is wrong for ``image``, or ``None`` when the data can be Hounsfield units.

    A CT slice in HU holds air near -1000 and soft tissue near 0..100, so values below -500 are always
    present. Data without negative values (PNG/JPEG exports, 0..255 or 0..1 scaled) is not in HU: a HU
    window would map it to a nearly flat image.
    """
    if policy not in CT_WINDOWS:
        return None
    low = float(np.min(image))
    if low < -500:
        return None
    return (f"The {policy.replace('_', ' ')} window expects CT in Hounsfield units (air near -1000), but this image's "
            f"values start at {low:g}: it looks rescaled. Pick 'min–max' or 'as displayed' instead.")


def normalize_intensity(image: np.ndarray, policy: str = "minmax", percentiles=(0.5, 99.5)) -> np.ndarray:
    """Map raw intensities to float32 [0, 1] according to ``policy``.

    Args:
        image: 2D grey ``(H, W)`` or RGB ``(H, W, 3)`` array of any numeric dtype.
        policy: ``minmax`` (default), ``percentile`` (clip at ``percentiles``), a CT window name
            (``ct_soft_tissue`` W400/L40, ``ct_lung`` W1500/L-600, ``ct_bone`` W1800/L400), or a raw range
            made by :func:`display_range` (what a viewer shows).
        percentiles: lower/upper percentiles for ``percentile``.
    """
    img = np.asarray(image, dtype=np.float32)
    if policy == "minmax":
        lo, hi = float(img.min()), float(img.max())
    elif policy == "percentile":
        lo, hi = (float(v) for v in np.percentile(img, percentiles))
    elif policy in CT_WINDOWS:
        lo, hi = CT_WINDOWS[policy].bounds
    else:
        lo, hi = _range_bounds(check_policy(policy))
    if hi <= lo:
        # A window that maps everything to one value would hand the model a blank image.
        raise InputError(
            f"Intensity policy {policy!r} maps the whole image to one value (range {lo:g}..{hi:g}); "
            "pick another policy or check the image."
        )
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)
