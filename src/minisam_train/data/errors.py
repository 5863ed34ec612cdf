"""The one error type of the data readers."""

from __future__ import annotations

from napari_qlora_minisam.errors import MiniSamError


class DataError(MiniSamError, ValueError):
    """A data folder, JSON file, image or label cannot be used; the message names the file and the fix."""
