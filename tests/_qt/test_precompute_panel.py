"""Precompute embeddings of a 3D image from the widget; a fresh predictor then finds every slice on disk."""

from __future__ import annotations

import numpy as np

from tests._qt.helpers import MODEL_TIMEOUT_MS, wait_idle

VOLUME = (np.random.default_rng(7).random((6, 48, 40)) * 255).astype(np.uint8)


def small_volume():
    return [(VOLUME, {"name": "vol"}, "image")]


def count_encodes(backend):
    calls = []
    real = backend.encode
    backend.encode = lambda pixels: (calls.append(1), real(pixels))[1]
    return calls


def test_precompute_then_every_slice_comes_from_the_store(open_widget, qtbot, monkeypatch, embeddings_dir):
    from napari_qlora_minisam import MiniSamPredictor, load_model
    from napari_qlora_minisam._qt.model_control import SHARED_CACHE
    from napari_qlora_minisam.embedding_store import EmbeddingStore

    monkeypatch.setenv("MINISAM_NAPARI_MODEL", "tiny_hf_sam")
    viewer, widget, _ = open_widget(small_volume)
    viewer.dims.set_current_step(0, 4)
    wait_idle(qtbot, widget, MODEL_TIMEOUT_MS)
    panel = widget.precompute
    assert widget.session.engine.predictor.store.path == embeddings_dir

    panel.start_button.click()
    assert panel.active and panel.cancel_button.isEnabled() and not panel.progress.isHidden()
    qtbot.waitUntil(lambda: not panel.active, timeout=MODEL_TIMEOUT_MS)
    assert "Precompute done for vol" in widget.message and panel.progress.isHidden()
    computed, stored = panel._counts
    assert computed + stored == len(VOLUME) and stored >= 1  # the slices the widget embedded on opening
    intensity = widget.session.intensity

    # Reopening: a new model and predictor on the same folder embed nothing.
    model = load_model("tiny_hf_sam", device="cpu")
    calls = count_encodes(model)
    fresh = MiniSamPredictor(model, store=EmbeddingStore(embeddings_dir))
    for plane in VOLUME:
        assert fresh.in_store(plane, intensity)
        fresh.set_image(plane, intensity)
    assert calls == []

    # The widget itself: with its memory cache emptied, visiting every slice reads the store.
    SHARED_CACHE.clear()
    calls = count_encodes(widget.model)
    for z in range(len(VOLUME)):
        viewer.dims.set_current_step(0, z)
        wait_idle(qtbot, widget)
        widget.session.embed(z)
    assert calls == [] and len(SHARED_CACHE) == len(VOLUME)


def test_precompute_cancel_keeps_what_is_stored(open_widget, qtbot, monkeypatch, embeddings_dir):
    monkeypatch.setenv("MINISAM_NAPARI_MODEL", "tiny_hf_sam")
    many = np.concatenate([VOLUME] * 8) + np.arange(48, dtype=np.uint8)[:, None, None]  # 48 distinct slices
    viewer, widget, _ = open_widget(lambda: [(many, {"name": "many"}, "image")])
    panel = widget.precompute
    panel.start_button.click()
    panel.cancel()
    qtbot.waitUntil(lambda: not panel.active, timeout=MODEL_TIMEOUT_MS)
    assert "Precompute cancelled" in widget.message
    assert len(list(embeddings_dir.glob("*.safetensors"))) < len(many)  # stopped before the end
    assert not list(embeddings_dir.glob("*.tmp"))


def test_precompute_asks_for_a_3d_image(tiny_widget):
    _, widget, _ = tiny_widget
    assert not widget.precompute.start_button.isEnabled()  # a 2D image: greyed out
    widget.precompute.start()
    assert not widget.precompute.active and "3D image" in widget.message
