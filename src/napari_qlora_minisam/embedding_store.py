"""Image embeddings on disk: computed once, found again when the same volume is reopened with the same model.

One ``.safetensors`` file per 2D slice, the embedding in float16 (half the bytes; masks from it match the
float32 ones, Dice >= 0.99 on real LiteMedSAM slices, ``tests/core/test_embedding_store.py``). The file name
is a hash of the key; the file's metadata holds the full key, so a file that does not belong to the key asked
for (a hash collision, a file copied or renamed by hand) is never used. The key covers everything that
changes an embedding: the slice's pixels, the model (weights identity, quantization, active adapter and its
weights, encoder precision), the intensity policy and the preprocessing spec. Not the device: CPU and GPU
embeddings differ by less than the float16 rounding.

Files are written atomically (temp file + ``os.replace``); a truncated or unreadable file is reported with a
warning, deleted and recomputed. The folder is bounded by ``max_bytes``: the least recently used files
(by modification time, refreshed on every hit) go first.

Location: ``EmbeddingStore(path)``, else ``$MINISAM_EMBEDDINGS_DIR``, else
``~/.cache/napari-qlora-minisam/embeddings``.

Example:
    >>> predictor = MiniSamPredictor(load_model("litemedsam"), store=EmbeddingStore())
    >>> for step in precompute(predictor, volume, start=volume.shape[0] // 2):
    ...     print(f"{step.done}/{step.total}")
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .cache_paths import user_cache_dir
from .embedding_cache import CachedEmbedding

STORE_ENV = "MINISAM_EMBEDDINGS_DIR"
DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB: ~1000 LiteMedSAM slices (2 MiB each in float16)
FORMAT = "minisam-embedding/1"  # bump when preprocessing or the file layout changes: old files then miss
SUFFIX = ".safetensors"
_STALE_TMP_S = 3600  # temp files older than this are leftovers of a killed writer


class EmbeddingStoreWarning(UserWarning):
    """A stored embedding was unreadable or belonged to another key; it is recomputed."""


def default_store_dir() -> Path:
    return user_cache_dir("embeddings", STORE_ENV)


def adapter_digest(backend) -> str | None:
    """Hash of the active adapter's LoRA weights (``None`` without one).

    The adapter's name alone is not enough on disk: an adapter retrained or reloaded under the same name
    gives other embeddings.
    """
    name = getattr(backend, "active_adapter", None)
    if name is None:
        return None
    h = hashlib.sha256(name.encode())
    for pname, p in backend.net.named_parameters():
        parts = pname.split(".")
        if name in parts and any(s.startswith("lora_") for s in parts):
            h.update(pname.encode())
            h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def model_key(backend) -> list:
    """What identifies a model's embeddings on disk: its in-memory cache key without the device, plus the
    adapter's weights."""
    device = str(backend.device)
    return [k for k in backend.cache_key if k != device] + [adapter_digest(backend)]


def store_key(digest: str, backend, policy: str) -> dict:
    """The full key of one slice's embedding (what a file's metadata must match to be used)."""
    return {"format": FORMAT, "image": digest, "model": model_key(backend), "intensity": policy,
            "spec": repr(backend.spec)}


class EmbeddingStore:
    """A folder of embeddings keyed by :func:`store_key`, bounded in bytes, least recently used evicted.

    Thread-safe: the napari widget precomputes in one worker while previews read in another.
    """

    def __init__(self, path: str | os.PathLike | None = None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.path = Path(path).expanduser() if path is not None else default_store_dir()
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.path)!r}, max_bytes={self.max_bytes})"

    @staticmethod
    def _encode(key: dict) -> str:
        return json.dumps(key, sort_keys=True, separators=(",", ":"))

    def file_for(self, key: dict) -> Path:
        return self.path / (hashlib.sha256(self._encode(key).encode()).hexdigest()[:40] + SUFFIX)

    def __contains__(self, key: dict) -> bool:
        """Whether a file exists for ``key`` (its content is checked by :meth:`get`)."""
        return self.file_for(key).is_file()

    def get(self, key: dict) -> CachedEmbedding | None:
        """The stored embedding (float32, on the CPU) or ``None``; an unusable file is warned about."""
        from safetensors import safe_open

        f = self.file_for(key)
        if not f.is_file():
            self.misses += 1
            return None
        try:
            with safe_open(str(f), framework="pt") as fh:
                meta = fh.metadata() or {}
                if meta.get("key") != self._encode(key):
                    warnings.warn(f"Stored embedding {f.name} belongs to another image or model; recomputing.",
                                  EmbeddingStoreWarning, stacklevel=2)
                    self.misses += 1
                    return None  # the file is replaced by the put() that follows the recompute
                emb = fh.get_tensor("embedding").float()
                item = CachedEmbedding(emb, tuple(json.loads(meta["original_hw"])), tuple(json.loads(meta["input_hw"])))
        except Exception as exc:  # noqa: BLE001 - truncated, garbled, not safetensors: all mean recompute
            warnings.warn(f"Stored embedding {f.name} is unreadable ({type(exc).__name__}: {exc}); deleting it "
                          "and recomputing.", EmbeddingStoreWarning, stacklevel=2)
            f.unlink(missing_ok=True)
            self.misses += 1
            return None
        try:
            os.utime(f)  # least recently *used*: a hit makes the file young again
        except OSError:
            pass
        self.hits += 1
        return item

    def put(self, key: dict, item: CachedEmbedding) -> Path:
        """Write ``item`` as float16 (atomically), then evict down to ``max_bytes``."""
        from safetensors.torch import save_file

        self.path.mkdir(parents=True, exist_ok=True)
        final = self.file_for(key)
        meta = {"key": self._encode(key), "original_hw": json.dumps(list(item.original_hw)),
                "input_hw": json.dumps(list(item.input_hw))}
        tensor = item.embedding.detach().to("cpu", torch.float16).contiguous()
        fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=".tmp", dir=self.path)
        os.close(fd)
        try:
            save_file({"embedding": tensor}, tmp, metadata=meta)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.evict(keep=final)
        return final

    def files(self) -> list[os.DirEntry]:
        try:
            return [e for e in os.scandir(self.path) if e.name.endswith(SUFFIX) and e.is_file()]
        except FileNotFoundError:
            return []

    @property
    def nbytes(self) -> int:
        return sum(e.stat().st_size for e in self.files())

    def evict(self, keep: Path | None = None) -> int:
        """Delete least recently used files until the folder fits ``max_bytes``; returns how many went."""
        with self._lock:
            entries = []
            for e in self.files():
                try:
                    st = e.stat()
                except FileNotFoundError:
                    continue
                entries.append((st.st_mtime, st.st_size, e.path))
            total = sum(size for _, size, _ in entries)
            removed = 0
            for _, size, p in sorted(entries):
                if total <= self.max_bytes:
                    break
                if keep is not None and Path(p) == keep:
                    continue
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
                total -= size
                removed += 1
            self._remove_stale_tmp()
            return removed

    def _remove_stale_tmp(self) -> None:
        now = time.time()
        try:
            for e in os.scandir(self.path):
                if e.name.endswith(".tmp") and now - e.stat().st_mtime > _STALE_TMP_S:
                    Path(e.path).unlink(missing_ok=True)
        except FileNotFoundError:
            pass

    def clear(self) -> None:
        for e in self.files():
            Path(e.path).unlink(missing_ok=True)


@dataclass(frozen=True)
class PrecomputeStep:
    """One slice handled by :func:`precompute`."""

    z: int
    computed: bool  # False: it was in the store already
    done: int
    total: int


def nearest_first(depth: int, start: int | None) -> list[int]:
    """Slice indices ordered by distance from ``start`` (the one in view), ties to the lower slice."""
    start = depth // 2 if start is None else int(np.clip(start, 0, depth - 1))
    return sorted(range(depth), key=lambda z: (abs(z - start), z))


def precompute(predictor, volume, start: int | None = None, intensity: str | None = None,
               cancel: Callable[[], bool] | None = None, lock=None) -> Iterator[PrecomputeStep]:
    """Embed every slice of ``volume`` (``(Z, H, W)``) into the predictor's store, nearest to ``start`` first.

    A generator: it yields a :class:`PrecomputeStep` after each slice (progress bars), skips slices the store
    has, and stops before the next slice once ``cancel()`` is true (or when the caller stops iterating).
    ``lock``: held around each slice's embedding (the widget's engine lock), so a preview never waits more
    than one slice.
    """
    if predictor.store is None:
        raise ValueError("precompute() needs a predictor made with store=EmbeddingStore(...).")
    order = nearest_first(len(volume), start)
    for done, z in enumerate(order, 1):
        if cancel is not None and cancel():
            return
        plane = np.asarray(volume[z])
        if lock is None:
            computed = predictor.store_embedding(plane, intensity)
        else:
            with lock:
                computed = predictor.store_embedding(plane, intensity)
        yield PrecomputeStep(z, computed, done, len(order))


_DEFAULT_STORES: dict = {}


def default_store() -> EmbeddingStore:
    """The store at the default location (read now, so ``$MINISAM_EMBEDDINGS_DIR`` set later is followed)."""
    path = default_store_dir()
    return _DEFAULT_STORES.setdefault(path, EmbeddingStore(path))
