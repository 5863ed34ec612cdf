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


def normalize_intensity(image: np.ndarray, policy: str = "minmax", percentiles=(0.5, 99.5)) -> np.ndarray:
    """Map raw intensities to float32 [0, 1] according to ``policy``.

    Args:
        image: 2D grey ``(H, W)`` or RGB ``(H, W, 3)`` array of any numeric dtype.
        policy: ``minmax`` (default), ``percentile`` (clip at ``percentiles``), or a CT window name
            (``ct_soft_tissue`` W400/L40, ``ct_lung`` W1500/L-600, ``ct_bone`` W1800/L400).
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
        raise InputError(f"Unknown intensity policy {policy!r}; choose one of {', '.join(INTENSITY_POLICIES)}.")
    if hi <= lo:
        # A window that maps everything to one value would hand the model a blank image.
        raise InputError(
            f"Intensity policy {policy!r} maps the whole image to one value (range {lo:g}..{hi:g}); "
            "pick another policy or check the image."
        )
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)
