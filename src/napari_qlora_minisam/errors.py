"""Exception types. Every error a user can trigger names what went wrong and how to fix it."""

from __future__ import annotations


class MiniSamError(Exception):
    """Base class for every error raised on purpose by napari-qlora-minisam."""


class ModelLoadError(MiniSamError):
    """A model source could not be loaded (unknown id, missing/corrupt file, wrong checkpoint kind)."""


class InputError(MiniSamError, ValueError):
    """An image or a prompt is not usable (shape, dtype, NaN, coordinates...)."""


class AdapterError(MiniSamError):
    """A LoRA adapter is missing, malformed, or was trained on a different base model."""
