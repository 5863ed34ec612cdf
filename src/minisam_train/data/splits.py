"""``splits.json``: patient-level splits per dataset (``{dataset: {"root": ..., "adapt_train": [...], "test": [...]}}``)."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import DataError


def read_splits(path) -> dict:
    """The whole splits file as a dict, or a :class:`DataError` naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Split file {path} does not exist; pass data.split_file=PATH/splits.json or null.")
    try:
        splits = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"Split file {path} is not valid JSON ({exc}).") from exc
    if not isinstance(splits, dict):
        raise DataError(f"Split file {path} must map dataset names to {{split key: [image names]}}.")
    return splits


def split_images(path, key: str = "test") -> dict[str, set[str]]:
    """Dataset -> set of image file names listed under ``key`` (e.g. ``test`` or ``adapt_train``).

    Raises:
        DataError: the file is missing or malformed, or no dataset has the key.
    """
    splits = read_splits(path)
    keep = {ds: set(parts[key]) for ds, parts in splits.items() if isinstance(parts, dict) and key in parts}
    if not keep:
        keys = sorted({k for p in splits.values() if isinstance(p, dict) for k in p if k != "root"})
        raise DataError(f"No dataset in {path} has a split {key!r}; keys found: {keys}.")
    return keep
