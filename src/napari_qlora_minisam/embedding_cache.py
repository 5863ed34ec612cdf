"""LRU cache of image embeddings, bounded in bytes.

The key covers everything that changes an embedding: the image content, the model (identity,
quantization, active adapter, device) and the preprocessing (intensity policy, input spec). Re-visiting a
slice or switching back to an adapter then costs nothing.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class CachedEmbedding:
    embedding: torch.Tensor
    original_hw: tuple
    input_hw: tuple

    @property
    def nbytes(self) -> int:
        return self.embedding.numel() * self.embedding.element_size()


def image_digest(image: np.ndarray) -> str:
    """Content hash of an image (shape and dtype included)."""
    arr = np.ascontiguousarray(image)
    h = hashlib.blake2b(digest_size=16)
    h.update(str((arr.shape, arr.dtype.str)).encode())
    h.update(arr.data)
    return h.hexdigest()


class EmbeddingCache:
    """Thread-safe LRU: the napari widget embeds in a worker thread while the Qt thread reads."""

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple, CachedEmbedding] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key) -> CachedEmbedding | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key, item: CachedEmbedding) -> None:
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > 1 and self.nbytes > self.max_bytes:
                self._items.popitem(last=False)

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self._items.values())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
