"""Embeddings on disk: hit, miss, corrupt and mismatched files, model changes, eviction, atomic writes."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from napari_qlora_minisam import MiniSamPredictor, load_model
from napari_qlora_minisam.embedding_store import (
    STORE_ENV,
    EmbeddingStore,
    EmbeddingStoreWarning,
    default_store_dir,
    nearest_first,
    precompute,
    store_key,
)


def fresh_tiny():
    return load_model("tiny_hf_sam", device="cpu")


def count_encodes(backend):
    """Wrap ``backend.encode`` so the test can tell a computed embedding from a stored one."""
    calls = []
    real = backend.encode

    def encode(pixels):
        calls.append(pixels.shape)
        return real(pixels)

    backend.encode = encode
    return calls


@pytest.fixture
def image():
    return (np.random.default_rng(0).random((40, 50)) * 1000).astype(np.int16)


@pytest.fixture
def store(tmp_path):
    return EmbeddingStore(tmp_path / "emb")


def stored_files(store):
    return sorted(p.name for p in store.path.iterdir()) if store.path.exists() else []


def test_hit_on_a_second_predictor_needs_no_encoder(store, image):
    first = MiniSamPredictor(fresh_tiny(), store=store)
    made = first.set_image(image)
    assert len(stored_files(store)) == 1 and store.misses == 1

    model = fresh_tiny()  # another session: a new model object, an empty memory cache
    calls = count_encodes(model)
    second = MiniSamPredictor(model, store=EmbeddingStore(store.path))
    got = second.set_image(image.copy())
    assert calls == [] and second.store.hits == 1
    assert got.original_hw == made.original_hw and got.input_hw == made.input_hw
    assert got.embedding.dtype == torch.float32
    # float16 on disk: within fp16 rounding of the computed embedding
    torch.testing.assert_close(got.embedding, made.embedding, rtol=2e-3, atol=2e-3)
    m1, s1, _ = first.predict(box=[5, 5, 30, 25], multimask=False)
    m2, s2, _ = second.predict(box=[5, 5, 30, 25], multimask=False)
    assert (m1 == m2).mean() > 0.99 and abs(float(s1[0]) - float(s2[0])) < 1e-2


def test_miss_computes_and_writes(store, image):
    model = fresh_tiny()
    calls = count_encodes(model)
    predictor = MiniSamPredictor(model, store=store)
    assert not predictor.in_store(image)
    predictor.set_image(image)
    assert len(calls) == 1 and store.misses == 1 and predictor.in_store(image)
    other = image.copy()
    other[0, 0] += 1  # one pixel: another slice
    assert not predictor.in_store(other)
    predictor.set_image(other)
    assert len(calls) == 2 and len(stored_files(store)) == 2


def test_corrupt_file_is_warned_deleted_recomputed_and_replaced(store, image):
    MiniSamPredictor(fresh_tiny(), store=store).set_image(image)
    (name,) = stored_files(store)
    f = store.path / name
    good = f.read_bytes()
    f.write_bytes(good[: len(good) // 2])  # truncated, as by a full disk or a killed copy

    model = fresh_tiny()
    calls = count_encodes(model)
    with pytest.warns(EmbeddingStoreWarning, match="unreadable"):
        MiniSamPredictor(model, store=store).set_image(image)
    assert len(calls) == 1
    assert stored_files(store) == [name] and f.stat().st_size == len(good)  # replaced by a whole file
    calls.clear()
    MiniSamPredictor(model, store=store).set_image(image)  # and that one is read again
    assert calls == []


def test_garbage_file_is_not_loaded(store, image):
    MiniSamPredictor(fresh_tiny(), store=store).set_image(image)
    (name,) = stored_files(store)
    (store.path / name).write_bytes(b"\x00" * 64)
    with pytest.warns(EmbeddingStoreWarning):
        assert MiniSamPredictor(fresh_tiny(), store=store).set_image(image) is not None


def test_file_renamed_onto_another_key_is_never_loaded(store, image):
    """A file whose name says one key but whose header says another (hash collision, hand copy)."""
    other = np.flipud(image).copy()
    predictor = MiniSamPredictor(fresh_tiny(), store=store)
    predictor.set_image(image)
    (name_a,) = stored_files(store)
    right = predictor.set_image(other)  # computed for `other`
    name_b = next(n for n in stored_files(store) if n != name_a)
    os.replace(store.path / name_a, store.path / name_b)  # `image`'s embedding now sits at `other`'s name

    model = fresh_tiny()
    calls = count_encodes(model)
    fresh = MiniSamPredictor(model, store=store)
    with pytest.warns(EmbeddingStoreWarning, match="another image or model"):
        got = fresh.set_image(other)
    assert len(calls) == 1  # recomputed, not the wrong image's embedding
    torch.testing.assert_close(got.embedding, right.embedding)
    calls.clear()
    fresh2 = MiniSamPredictor(model, store=store)  # the recompute replaced the file with the right one
    torch.testing.assert_close(fresh2.set_image(other).embedding, right.embedding, rtol=2e-3, atol=2e-3)
    assert calls == []


def _miss_after(change, store, image):
    """Store ``image`` under a fresh model, apply ``change(model, predictor)``, return encoder calls after."""
    model = fresh_tiny()
    predictor = MiniSamPredictor(model, store=store)
    predictor.set_image(image)
    calls = count_encodes(model)
    policy = change(model) or "minmax"
    MiniSamPredictor(model, store=store).set_image(image, intensity=policy)
    return len(calls)


def test_same_model_hits(store, image):
    assert _miss_after(lambda m: None, store, image) == 0


def test_other_model_weights_miss(store, image):
    small = load_model("tiny_hf_sam_small", device="cpu")
    MiniSamPredictor(fresh_tiny(), store=store).set_image(image)
    calls = count_encodes(small)
    MiniSamPredictor(small, store=store).set_image(image)
    assert len(calls) == 1 and len(stored_files(store)) == 2


def test_quantization_change_misses(store, image):
    def quantize(m):
        m.quantization = "nf4"  # what load_model(..., quantize="nf4") records; the key must follow it

    assert _miss_after(quantize, store, image) == 1


def test_intensity_change_misses(store, image):
    assert _miss_after(lambda m: "ct_soft_tissue", store, image) == 1
    assert _miss_after(lambda m: "range:0:500", store, image) == 1
    assert _miss_after(lambda m: "range:0:500", store, image) == 0  # and that one is stored too


def test_adapter_change_misses_even_under_the_same_name(store, image):
    from napari_qlora_minisam.adapters import add_lora, set_adapter

    model = fresh_tiny()
    predictor = MiniSamPredictor(model, store=store)
    predictor.set_image(image)
    calls = count_encodes(model)
    add_lora(model, "ct", r=4, alpha=8)
    set_adapter(model, "ct")
    with torch.no_grad():  # a trained adapter: LoRA B is no longer zero
        for n, p in model.net.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    MiniSamPredictor(model, store=store).set_image(image)
    assert len(calls) == 1
    MiniSamPredictor(model, store=store).set_image(image)
    assert len(calls) == 1  # stored under the adapter
    with torch.no_grad():  # retrained, same name: other weights, other embeddings
        for n, p in model.net.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    MiniSamPredictor(model, store=store).set_image(image)
    assert len(calls) == 2
    set_adapter(model, None)
    MiniSamPredictor(model, store=store).set_image(image)
    assert len(calls) == 2  # back on the bare base: its file is still there


def test_key_holds_no_device_but_everything_else(image):
    model = fresh_tiny()
    key = store_key("d", model, "minmax")
    assert "cpu" not in repr(key) and model.identity in repr(key) and "minmax" in repr(key)


def test_lru_eviction_under_a_tiny_cap(tmp_path):
    model = fresh_tiny()
    one = MiniSamPredictor(model, store=EmbeddingStore(tmp_path / "probe"))
    rng = np.random.default_rng(3)
    images = [(rng.random((32, 32)) * 255).astype(np.uint8) for _ in range(4)]
    one.set_image(images[0])
    size = one.store.nbytes
    store = EmbeddingStore(tmp_path / "emb", max_bytes=int(2.5 * size))  # room for two files
    predictor = MiniSamPredictor(model, store=store)
    now = time.time()
    for i, img in enumerate(images[:2]):
        predictor.set_image(img)
        os.utime(store.file_for(store_key_of(predictor, img)), (now - 100 + i, now - 100 + i))  # 0 older than 1
    assert len(store.files()) == 2
    MiniSamPredictor(model, store=store).set_image(images[0])  # a hit makes images[0] the most recent
    assert store.hits == 1
    predictor.set_image(images[2])  # over the cap: the least recently used (images[1]) goes
    assert len(store.files()) == 2 and store.nbytes <= store.max_bytes
    assert predictor.in_store(images[0]) and predictor.in_store(images[2]) and not predictor.in_store(images[1])


def store_key_of(predictor, img):
    from napari_qlora_minisam.embedding_cache import image_digest

    return store_key(image_digest(img), predictor.model, predictor.intensity)


def test_a_file_larger_than_the_cap_is_kept(tmp_path, image):
    store = EmbeddingStore(tmp_path, max_bytes=10)
    MiniSamPredictor(fresh_tiny(), store=store).set_image(image)
    assert len(store.files()) == 1


def test_atomic_write_leaves_no_temp_files(store, image, monkeypatch):
    predictor = MiniSamPredictor(fresh_tiny(), store=store)
    predictor.set_image(image)
    assert all(n.endswith(".safetensors") for n in stored_files(store))

    import safetensors.torch

    def broken(tensors, path, metadata=None):  # a writer that dies half-way
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    before = stored_files(store)
    with pytest.raises(OSError, match="disk full"):
        predictor.set_image(np.flipud(image).copy())
    assert stored_files(store) == before  # neither a temp file nor a half-written embedding


def test_location_from_env_and_constructor(tmp_path, monkeypatch):
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "env"))
    assert default_store_dir() == tmp_path / "env" and EmbeddingStore().path == tmp_path / "env"
    assert EmbeddingStore(tmp_path / "x").path == tmp_path / "x"
    monkeypatch.delenv(STORE_ENV)
    assert default_store_dir().parts[-2:] == ("napari-qlora-minisam", "embeddings")


def test_precompute_nearest_first_skips_stored_and_cancels(store):
    rng = np.random.default_rng(4)
    volume = (rng.random((7, 32, 32)) * 255).astype(np.uint8)
    assert nearest_first(7, 4) == [4, 3, 5, 2, 6, 1, 0]
    model = fresh_tiny()
    calls = count_encodes(model)
    predictor = MiniSamPredictor(model, store=store)
    predictor.set_image(volume[4])  # the slice in view: in memory and on disk already
    calls.clear()
    stop_after = 3
    steps = list(precompute(predictor, volume, start=4, cancel=lambda: len(calls) >= stop_after))
    assert [s.z for s in steps] == [4, 3, 5, 2]
    assert [s.computed for s in steps] == [False, True, True, True] and steps[-1].total == 7
    steps = list(precompute(predictor, volume, start=4))
    assert [s.z for s in steps if s.computed] == [6, 1, 0] and steps[-1].done == 7
    assert all(predictor.in_store(p) for p in volume)

    other = fresh_tiny()  # reopening: every slice from disk
    calls = count_encodes(other)
    fresh = MiniSamPredictor(other, store=EmbeddingStore(store.path))
    for p in volume:
        fresh.set_image(p)
    assert calls == []


@pytest.mark.slow
def test_float16_storage_keeps_litemedsam_masks(litemedsam, shared_data, tmp_path):
    """Masks decoded from the stored (float16) embedding against the computed (float32) one, real slices."""
    import imageio.v3 as iio

    from napari_qlora_minisam.masks import tight_box

    d = shared_data / "cosmos_sample" / "data" / "test_data" / "22_Heart"
    names = sorted(p.name for p in (d / "images").glob("*.png"))[:4]
    store = EmbeddingStore(tmp_path)
    dices = []
    for name in names:
        img, lab = iio.imread(d / "images" / name), iio.imread(d / "labels" / name)
        computed = MiniSamPredictor(litemedsam, store=store)
        computed.set_image(img)
        stored = MiniSamPredictor(litemedsam, store=store)  # new memory cache: reads the file
        stored.set_image(img)
        assert stored.store.hits >= 1
        for value in [v for v in np.unique(lab) if v][:3]:
            box = np.array(tight_box(lab == value), np.float32)
            a = computed.predict(box=box, multimask=False)[0][0]
            b = stored.predict(box=box, multimask=False)[0][0]
            dices.append(2 * (a & b).sum() / max(1, a.sum() + b.sum()))
    assert len(dices) >= 6 and min(dices) >= 0.99, dices
