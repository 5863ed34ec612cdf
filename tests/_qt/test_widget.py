"""The dock widget end to end, threaded, with the real LiteMedSAM on the shipped real samples."""

from __future__ import annotations

import numpy as np
import pytest

from napari_qlora_minisam._sample_data import heart_mri, lung_ct_volume
from napari_qlora_minisam.prompts import NEGATIVE, PROMPT_FEATURE, box_to_rectangle, xy_to_rc
from tests._qt.helpers import MODEL_TIMEOUT_MS, dice, press, release, wait_idle, wait_preview
from tests.conftest import tight_box

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def draw_box(qtbot, widget, box, z=None):
    before = widget.previews_painted
    widget.shapes_layer.add_rectangles(box_to_rectangle(box, z))
    wait_preview(qtbot, widget, before)


def test_box_preview_points_commit_undo_redo(open_widget, qtbot):
    viewer, widget, (image, reference) = open_widget(heart_mri)
    assert widget.model is not None and widget.model.source == "litemedsam", widget.message
    assert widget.image_layer is image and widget.depth == 0
    lv = reference.data == 1

    fd = widget.model.fast_decoder()
    grids = []
    upscale = fd._upscale_tokens
    fd._upscale_tokens = lambda keys, hyper, h, w: grids.append((h, w)) or upscale(keys, hyper, h, w)
    draw_box(qtbot, widget, tight_box(lv))
    del fd._upscale_tokens
    box_only = widget.preview.mask.copy()
    assert dice(box_only, lv) >= 0.85
    assert widget.preview_layer.data.sum() == box_only.sum()  # what the user sees is the preview
    assert grids and all(h * w < 64 * 64 for h, w in grids)  # the preview decoded around its box only

    # A drag starts with "changing" (data not changed yet): asking for a preview then would repaint the old
    # mask as if it answered the edit. Only the "changed" at the release asks for one.
    from napari.layers.base._base_constants import ActionType

    request = widget._request
    widget.shapes_layer.events.data(value=widget.shapes_layer.data, action=ActionType.CHANGING,
                                    data_indices=(0,), vertex_indices=((),))
    assert widget._request == request
    widget.shapes_layer.events.data(value=widget.shapes_layer.data, action=ActionType.CHANGED,
                                    data_indices=(0,), vertex_indices=((),))
    assert widget._request == request + 1
    wait_idle(qtbot, widget)

    # A negative click (N toggles the polarity of the next clicks) must change the preview. It is clicked
    # through napari's mouse bindings: decoded at the press, painted at the release.
    widget.toggle_negative()
    widget.activate_point_mode()
    ys, xs = np.nonzero(lv)
    inside = tuple(xy_to_rc(np.array([[xs.mean(), ys.mean()]]))[0])
    before = widget.previews_painted
    press(widget.points_layer, inside)
    wait_idle(qtbot, widget)
    release(widget.points_layer, inside)
    assert widget.points_layer.features[PROMPT_FEATURE].iloc[-1] == NEGATIVE
    wait_preview(qtbot, widget, before)
    assert widget.clicks_decoded_ahead == 1
    assert not np.array_equal(widget.preview.mask, box_only)
    clicked = widget.preview.mask.copy()
    widget._last_decoded = None  # the same prompts decoded anew give the mask the press made
    before = widget.previews_painted
    widget.schedule_preview()
    wait_preview(qtbot, widget, before)
    np.testing.assert_array_equal(widget.preview.mask, clicked)

    # Commit writes the preview as object 1 and clears the prompts; the next commit gets id 2.
    widget.commit()
    objects = widget.objects_layer.data
    assert set(np.unique(objects)) == {0, 1}
    assert len(widget.points_layer.data) == 0 and len(widget.shapes_layer.data) == 0
    assert not widget.preview_layer.data.any() and widget.is_idle  # cleared at once, no decode of a half-clear
    first = objects.copy()
    rv = reference.data == 3
    draw_box(qtbot, widget, tight_box(rv))
    widget.commit()
    assert set(np.unique(objects)) == {0, 1, 2}
    assert np.array_equal(objects == 1, first == 1)  # object 1 untouched
    assert dice(objects == 2, rv) > 0.7

    widget.undo()
    np.testing.assert_array_equal(objects, first)
    widget.redo()
    assert set(np.unique(objects)) == {0, 1, 2}
    assert "Redid" in widget.message


def make_adapter(tmp_path, source):
    from napari_qlora_minisam import load_model
    from napari_qlora_minisam.adapters import add_lora, save_adapter

    backend = load_model(source, device="cpu")
    add_lora(backend, "tiny", r=2, parts=("decoder",))
    return save_adapter(backend, tmp_path / f"{source}-tiny", "tiny", {"modality": "test"})


def test_model_and_adapter_switches_keep_committed_labels(open_widget, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("MINISAM_ADAPTERS_DIR", str(tmp_path))
    good = make_adapter(tmp_path, "litemedsam")
    make_adapter(tmp_path, "tiny_hf_sam")  # made for another base: must be refused
    viewer, widget, (image, reference) = open_widget(heart_mri)
    draw_box(qtbot, widget, tight_box(reference.data == 1))
    widget.commit()
    committed = widget.objects_layer.data.copy()
    base = widget.model

    widget.refresh_adapters()
    names = [widget.ui.adapter.itemText(i) for i in range(widget.ui.adapter.count())]
    assert names[0] == "none" and any(good.name in n for n in names)
    widget.ui.adapter.setCurrentIndex(next(i for i, n in enumerate(names) if n.startswith(good.name)))
    wait_idle(qtbot, widget)
    assert widget.model is base and widget.model.active_adapter == good.name  # base not reloaded
    assert "Adapter" in widget.message

    widget.ui.adapter.setCurrentIndex(next(i for i, n in enumerate(names) if n.startswith("tiny_hf_sam")))
    wait_idle(qtbot, widget)
    assert "trained on base" in widget.message
    assert widget.model.active_adapter == good.name
    assert widget.ui.adapter.currentText().startswith(good.name)  # the drop-down shows what is active

    widget.load_model("/nonexistent/model.pth")
    wait_idle(qtbot, widget)
    assert "does not exist" in widget.message and widget.model is base

    widget.load_model("tiny_hf_sam")
    wait_idle(qtbot, widget, MODEL_TIMEOUT_MS)
    assert widget.model is not base and widget.model.source == "tiny_hf_sam"
    np.testing.assert_array_equal(widget.objects_layer.data, committed)
    # the new model still previews (and its preview is not the old model's)
    draw_box(qtbot, widget, tight_box(reference.data == 3))
    assert widget.preview is not None
    np.testing.assert_array_equal(widget.objects_layer.data, committed)


def test_propagation_through_the_lung_volume(open_widget, qtbot):
    viewer, widget, (image, reference) = open_widget(lung_ct_volume)
    assert widget.depth == 1
    tumour = reference.data > 0
    zs = np.nonzero(tumour.any(axis=(1, 2)))[0]
    mid = int(zs[len(zs) // 2])
    viewer.dims.set_current_step(0, mid)
    assert widget.current_z() == mid
    wait_idle(qtbot, widget, MODEL_TIMEOUT_MS)
    draw_box(qtbot, widget, tight_box(tumour[mid]), z=mid)
    assert widget.preview.z == mid
    widget.commit()
    assert widget.objects_layer.data[mid].any() and not widget.objects_layer.data[mid - 1].any()

    widget.ui.max_slices.setValue(len(zs) // 2)
    widget.propagate()
    assert widget.ui.cancel.isEnabled()
    qtbot.waitUntil(lambda: not widget.is_propagating, timeout=MODEL_TIMEOUT_MS)
    objects = widget.objects_layer.data
    scores = [dice(objects[z] == 1, tumour[z]) for z in zs]
    assert np.mean(scores) >= 0.7, (scores, widget.message)
    assert "Propagated to" in widget.message
    widget.undo()  # one step removes the whole propagation, keeps the committed slice
    assert objects[mid].any() and not np.delete(objects, mid, axis=0).any()
