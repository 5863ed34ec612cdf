"""``SegmentationEngine``: one loaded model, shared by every image being annotated.

Qt-free. Workers of the napari widget call it from their threads; its lock keeps each ``set_image`` and the
decode that follows together, so a slice embedded for one image never swaps under a decode for another.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

import numpy as np

from ..embedding_cache import EmbeddingCache
from ..prompts import SlicePrompts

_ENGINE_IDS = itertools.count(1)


@dataclass(frozen=True)
class Decoded:
    """One object's mask, decoded for its prompts on one slice."""

    mask: np.ndarray  # (H, W) bool
    score: float  # the model's predicted IoU


class SegmentationEngine:
    """A backend from :func:`load_model`, its :class:`MiniSamPredictor` and the lock around them.

    Args:
        backend: what :func:`napari_qlora_minisam.load_model` returned.
        cache: embedding cache shared with other engines (embeddings then survive a model reload when the
            new model is the same, e.g. after a failed load or a switch back).
    """

    def __init__(self, backend, cache: EmbeddingCache | None = None, store=None):
        from ..predictor import MiniSamPredictor

        self.backend = backend
        self.predictor = MiniSamPredictor(backend, cache=cache, store=store)  # store: embeddings on disk
        self.lock = threading.RLock()
        self._serial = next(_ENGINE_IDS)

    @property
    def identity(self) -> tuple:
        """Changes whenever the same prompts could decode to another mask: model, adapter, precision."""
        return (self._serial, self.backend.cache_key, getattr(self.backend, "decoder_precision", None))

    @property
    def name(self) -> str:
        return self.backend.name

    def is_embedded(self, plane: np.ndarray, intensity: str) -> bool:
        try:
            return self.predictor.embedding_key(plane, intensity) in self.predictor.cache
        except Exception:  # noqa: BLE001 - a bad image is reported by embed() itself
            return False

    def embed(self, plane: np.ndarray, intensity: str) -> None:
        """Embed one 2D plane into the cache (free when it is there already)."""
        with self.lock:
            self.predictor.set_image(plane, intensity)

    def decode(self, plane: np.ndarray, intensity: str, objects: list[SlicePrompts],
               window: bool = True) -> list[Decoded]:
        """Masks for several objects on one plane, embedded once.

        Each object is decoded on its own, around its box (or its clicks) when ``window``: on a CPU that is cheaper
        than one batched decoder call, whose full-grid upscaling and 4096-token updates are made once per prompt
        anyway (5 heart boxes: 47 ms in a loop against 102 ms batched, ``benchmarks/bench_widget.py``).
        A lone click is ambiguous (part or whole?): it asks for three masks and keeps the best scored.
        """
        out = []
        with self.lock:
            self.predictor.set_image(plane, intensity)
            for prompts in objects:
                multimask = prompts.box is None and len(prompts.points_xy) == 1
                masks, scores, _ = self.predictor.predict(**prompts.predict_kwargs(), multimask=multimask,
                                                          box_window=window)
                best = int(np.argmax(scores))
                out.append(Decoded(masks[best], float(scores[best])))
        return out

    def segment_box(self, plane: np.ndarray, intensity: str, box: np.ndarray, **neighbour) -> tuple[np.ndarray, float]:
        """``(mask, score)`` of a single box, the whole grid decoded (propagation's slice step).

        ``neighbour``: what the neighbour slice gives beyond its box (``volume.neighbour_prompt``): its
        ``mask`` (sent as ``mask_input``), ``points`` and ``point_labels``.
        """
        from ..volume import segment_with_neighbour

        with self.lock:
            self.predictor.set_image(plane, intensity)
            return segment_with_neighbour(self.predictor, box, **neighbour)
