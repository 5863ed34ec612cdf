"""Embedding LRU: keyed by image content, model, adapter and preprocessing; bounded in bytes."""

from __future__ import annotations

import numpy as np
import torch

from napari_qlora_minisam import MiniSamPredictor
from napari_qlora_minisam.embedding_cache import CachedEmbedding, EmbeddingCache, image_digest


def item(n_floats):
    return CachedEmbedding(torch.zeros(n_floats), (4, 4), (4, 4))


def test_lru_eviction_by_bytes():
    cache = EmbeddingCache(max_bytes=3 * 400)  # room for three 100-float embeddings
    for k in "abc":
        cache.put(k, item(100))
    assert len(cache) == 3 and cache.nbytes == 1200
    assert cache.get("a") is not None  # "a" is now the most recent, "b" the least
    cache.put("d", item(100))
    assert "b" not in cache and all(k in cache for k in "acd")
    cache.put("big", item(200))  # 800 bytes: pushes out the two least recently used ("c", then "a")
    assert [k for k in "acd" if k in cache] == ["d"] and "big" in cache
    assert cache.nbytes <= cache.max_bytes


def test_an_item_larger_than_the_cache_is_still_kept():
    """The current image must stay usable even if it alone exceeds the budget."""
    cache = EmbeddingCache(max_bytes=100)
    cache.put("x", item(1000))
    assert "x" in cache and len(cache) == 1
    cache.put("y", item(1000))
    assert "x" not in cache and "y" in cache


def test_hit_and_miss_counters():
    cache = EmbeddingCache()
    assert cache.get("k") is None
    cache.put("k", item(1))
    assert cache.get("k") is not None
    assert (cache.hits, cache.misses) == (1, 1)
    cache.clear()
    assert len(cache) == 0


def test_image_digest_covers_content_shape_and_dtype():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert image_digest(a) == image_digest(a.copy())
    assert image_digest(a) != image_digest(a.reshape(4, 3))
    assert image_digest(a) != image_digest(a.astype(np.uint16))
    b = a.copy()
    b[2, 3] += 1
    assert image_digest(a) != image_digest(b)
    assert image_digest(a[:, ::2]) == image_digest(np.ascontiguousarray(a[:, ::2]))  # views hash by content


def test_predictor_hits_on_same_image_and_misses_on_other_preprocessing(tiny_hf):
    rng = np.random.default_rng(0)
    image = (rng.random((40, 50)) * 1000).astype(np.int16)
    predictor = MiniSamPredictor(tiny_hf, cache=EmbeddingCache())
    first = predictor.set_image(image)
    again = predictor.set_image(image.copy())  # same content, another array
    assert again is first and predictor.cache.hits == 1
    windowed = predictor.set_image(image, intensity="ct_soft_tissue")
    assert windowed is not first and predictor.cache.misses == 2
    assert (windowed.embedding - first.embedding).abs().max() > 1e-3  # the policy really changed the input
    other = image.copy()
    other[0, 0] += 1
    predictor.set_image(other)
    assert predictor.cache.misses == 3 and len(predictor.cache) == 3


def test_cache_shared_by_two_models_keeps_them_apart(tiny_hf):
    from napari_qlora_minisam import load_model

    small = load_model("tiny_hf_sam_small", device="cpu")
    cache = EmbeddingCache()
    image = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    a = MiniSamPredictor(tiny_hf, cache=cache).set_image(image)
    b = MiniSamPredictor(small, cache=cache).set_image(image)
    assert a is not b and cache.misses == 2 and len(cache) == 2
    assert tiny_hf.cache_key != small.cache_key
