"""The widget's compute as plain generators, run by ``workers.start`` off the Qt thread.

One lock serialises every use of the model: ``set_image`` + ``predict`` must happen as a pair, or a slice
being embedded in one worker could swap the image under a preview being decoded in another.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ..prompts import SlicePrompts
from ..volume import SliceSegmenter, StopRules, propagate

MODEL_LOCK = threading.RLock()


@dataclass(frozen=True)
class PreviewResult:
    request: int  # the preview request this answers; older ones are dropped by the widget
    z: int | None
    mask: np.ndarray
    score: float


def load_model_task(source: str, quantize: str | None, device: str):
    yield f"Loading {source}{' (4-bit NF4)' if quantize else ''}…"
    from ..loading import load_model

    return load_model(source, quantize=quantize, device=device)


def switch_adapter_task(backend, entry):
    """Activate adapter ``entry`` (an ``AdapterEntry``, or ``None`` for the bare base); base stays loaded."""
    from ..adapters import load_adapter, set_adapter

    yield "Switching adapter…"
    with MODEL_LOCK:
        if entry is None:
            set_adapter(backend, None)
            return None
        name = load_adapter(backend, entry.path, name=entry.name)
        set_adapter(backend, name)
    return name


def is_embedded(predictor, image: np.ndarray, intensity: str) -> bool:
    try:
        return predictor.embedding_key(image, intensity) in predictor.cache
    except Exception:  # noqa: BLE001 - a bad image is reported by set_image itself
        return False


def embed_task(predictor, image: np.ndarray, intensity: str, z: int | None):
    """Embed one slice into the predictor's cache (no-op when cached)."""
    if not is_embedded(predictor, image, intensity):
        yield ("embedding", z)
        with MODEL_LOCK:
            predictor.set_image(image, intensity)
    return z


def preview_task(predictor, image: np.ndarray, intensity: str, prompts: SlicePrompts, request: int,
                 z: int | None):
    """Decode the prompts of one slice (embedding it first if needed)."""
    if not is_embedded(predictor, image, intensity):
        yield ("embedding", z)
    # A lone click is ambiguous (part or whole?): ask for three masks and keep the best-scored one.
    multimask = prompts.box is None and len(prompts.points_xy) == 1
    with MODEL_LOCK:
        predictor.set_image(image, intensity)
        # box_window: a preview needs the mask around its box only (the decode is ~a quarter cheaper).
        masks, scores, _ = predictor.predict(**prompts.predict_kwargs(), multimask=multimask, box_window=True)
    best = int(np.argmax(scores))
    return PreviewResult(request, z, masks[best], float(scores[best]))


class _LockedSegmenter(SliceSegmenter):
    def __call__(self, z, box):
        with MODEL_LOCK:  # per slice, so previews can interleave with a long propagation
            return super().__call__(z, box)


def propagate_task(predictor, stack, intensity: str, start_z: int, start_mask: np.ndarray,
                   max_slices: int | None, margin: float = 0.1, rules: StopRules = StopRules()):
    segmenter = _LockedSegmenter(predictor, stack, intensity)
    result = yield from propagate(segmenter, start_z, start_mask, len(stack), margin=margin,
                                  rules=rules, max_slices=max_slices, stack=stack)
    return result


__all__ = ["MODEL_LOCK", "PreviewResult", "embed_task", "load_model_task", "preview_task",
           "propagate_task", "switch_adapter_task"]
