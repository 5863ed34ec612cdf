"""The project's per-user folders: one rule for the adapters, embeddings, exported graphs and training caches."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir(name: str, env: str) -> Path:
    """``$env`` if set (``~`` expanded), else ``~/.cache/napari-qlora-minisam/<name>`` (home read at call time)."""
    value = os.environ.get(env)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "napari-qlora-minisam" / name
