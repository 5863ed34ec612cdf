"""napari-qlora-minisam: 4-bit, LoRA-adapted Segment Anything for medical images.

The public API imports lazily so ``import napari_qlora_minisam`` (done by napari at start-up) stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_model", "train_adapter", "TrainProgress", "MiniSamPredictor", "MiniSamError", "ModelLoadError",
           "InputError", "AdapterError", "EmbeddingStore", "precompute"]

from .errors import AdapterError, InputError, MiniSamError, ModelLoadError


def __getattr__(name):
    if name == "load_model":
        from .loading import load_model

        return load_model
    if name in ("train_adapter", "TrainProgress"):
        from . import adapter_training

        return getattr(adapter_training, name)
    if name == "MiniSamPredictor":
        from .predictor import MiniSamPredictor

        return MiniSamPredictor
    if name in ("EmbeddingStore", "precompute"):
        from . import embedding_store

        return getattr(embedding_store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
