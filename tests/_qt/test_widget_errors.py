"""Bad input, refusals and cancellation: a message in the widget, never a traceback; errors go away once fixed;
closing mid-work stops everything and loses no label (tiny random SAM, threaded)."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QThreadPool

from napari_qlora_minisam.prompts import box_to_rectangle
from tests._qt.helpers import MODEL_TIMEOUT_MS, draw_boxes, wait_idle

pytestmark = [pytest.mark.gui]


def red(widget) -> bool:
    return "ff6b6b" in widget.ui.message.styleSheet()


def test_rgb_stack_and_4d_images_give_messages(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    viewer.add_image(np.random.randint(0, 255, (3, 32, 32, 3), np.uint8), rgb=True, name="rgb stack")
    widget.set_image_layer(viewer.layers["rgb stack"])
    assert "RGB image stacks" in widget.message and red(widget)
    viewer.add_image(np.random.rand(2, 3, 32, 32), name="4d")
    widget.set_image_layer(viewer.layers["4d"])
    assert "4 dimensions" in widget.message
    ok = viewer.add_image(np.random.rand(32, 32), name="ok")
    widget.set_image_layer(ok)
    assert not red(widget) and "Segmenting 'ok'" in widget.message  # fixed: the error is gone
    wait_idle(qtbot, widget)


def test_nan_image_gives_message_and_keeps_labels(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    good = viewer.add_image(np.random.rand(40, 50).astype(np.float32), name="good")
    widget.set_image_layer(good)
    wait_idle(qtbot, widget)
    draw_boxes(qtbot, widget, [5, 5, 30, 30])
    widget.commit()
    committed = widget.layers["objects"].data.copy()
    assert committed.any()
    bad = np.random.rand(40, 50).astype(np.float32)
    bad[3, 4] = np.nan
    widget.set_image_layer(viewer.add_image(bad, name="bad"))
    qtbot.waitUntil(lambda: "NaN" in widget.message, timeout=MODEL_TIMEOUT_MS)
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(viewer.layers["good · objects"].data, committed)


def test_an_error_goes_away_once_fixed(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    widget.set_image_layer(viewer.add_image(np.random.rand(40, 50), name="img"))
    wait_idle(qtbot, widget)
    widget.commit()
    assert "Nothing to commit" in widget.message and red(widget)
    draw_boxes(qtbot, widget, [5, 5, 30, 30])
    assert not red(widget) and "Nothing to commit" not in widget.message  # the valid preview cleared it
    widget.layers["box"].add_rectangles(box_to_rectangle([5000, 5000, 5100, 5100]))  # outside the image
    qtbot.waitUntil(lambda: "outside" in widget.message, timeout=MODEL_TIMEOUT_MS)
    assert red(widget)
    widget.layers["box"].data = widget.layers["box"].data[:1]
    qtbot.waitUntil(lambda: not red(widget), timeout=MODEL_TIMEOUT_MS)
    wait_idle(qtbot, widget)


def test_zero_pixel_commit_is_refused(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    widget.set_image_layer(viewer.add_image(np.random.rand(40, 50), name="img"))
    wait_idle(qtbot, widget)
    draw_boxes(qtbot, widget, [0, 0, 49, 39])
    labels = widget.images.make_now(widget.binding, "objects")
    labels.data[:] = 9  # every pixel belongs to an object the user painted
    labels.refresh()
    widget.commit()
    assert "Nothing committed" in widget.message and red(widget)
    assert set(np.unique(labels.data)) == {9}
    labels.undo()
    assert set(np.unique(labels.data)) == {9}  # the refusal left no step behind to undo


def test_commit_without_prompt_and_propagate_on_2d_give_messages(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    widget.set_image_layer(viewer.add_image(np.random.rand(40, 50), name="img"))
    wait_idle(qtbot, widget)
    assert not widget.ui.propagate.isEnabled()
    widget.propagate()
    assert "3D" in widget.message


def test_propagation_cancelled_says_so_and_keeps_labels(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    vol = np.random.rand(12, 40, 40).astype(np.float32)
    widget.set_image_layer(viewer.add_image(vol, name="vol"))
    viewer.dims.set_current_step(0, 6)
    wait_idle(qtbot, widget)
    labels = widget.images.make_now(widget.binding, "objects")
    labels.data[6, 10:30, 10:30] = 5  # an object the user painted by hand
    labels.selected_label = 5
    widget.propagate()
    assert widget.propagation.active
    widget.cancel_propagation()
    qtbot.waitUntil(lambda: not widget.propagation.active, timeout=MODEL_TIMEOUT_MS)
    assert "cancelled" in widget.message and widget.ui.propagate_progress.isHidden()
    assert labels.data[6, 15, 15] == 5
    wait_idle(qtbot, widget)


def test_synchronous_switch_runs_inline(tiny_widget, qtbot, monkeypatch):
    viewer, widget, _ = tiny_widget
    monkeypatch.setenv("MINISAM_NAPARI_SYNC", "1")
    widget.set_image_layer(viewer.add_image(np.random.rand(40, 50), name="img"))
    qtbot.waitUntil(lambda: widget.layers["box"] is not None, timeout=5000)  # layers still come in their turns
    before = widget.previews_painted
    widget.layers["box"].add_rectangles(box_to_rectangle([5, 5, 30, 30]))
    assert widget.previews_painted > before and widget.preview is not None  # no waiting needed
    widget.commit()
    assert widget.layers["objects"].data.any()


def test_polarity_toggle_affects_next_clicks_and_flip_selected(tiny_widget, qtbot):
    from napari_qlora_minisam.prompts import NEGATIVE, POSITIVE, PROMPT_FEATURE

    viewer, widget, _ = tiny_widget
    widget.set_image_layer(viewer.add_image(np.random.rand(40, 50), name="img"))
    wait_idle(qtbot, widget)
    points = widget.layers["points"]
    points.add([[10, 10]])
    widget.tools.toggle_negative()  # the click just made stays positive
    points.add([[20, 20]])
    assert points.features[PROMPT_FEATURE].tolist() == [POSITIVE, NEGATIVE]
    assert widget.session.prompts[0].point_labels.tolist() == [1, 0]
    points.selected_data = {0}
    widget.tools.flip_selected_points()
    assert points.features[PROMPT_FEATURE].tolist() == [NEGATIVE, NEGATIVE]
    wait_idle(qtbot, widget)
    assert widget.session.prompts[0].point_labels.tolist() == [0, 0]  # the preview follows the flip


def test_quantize_toggle_reloads_in_nf4_and_keeps_labels(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    widget.set_image_layer(viewer.add_image(np.random.rand(40, 50), name="img"))
    wait_idle(qtbot, widget)
    draw_boxes(qtbot, widget, [5, 5, 30, 30])
    widget.commit()
    committed = widget.layers["objects"].data.copy()
    widget.ui.quantize.setChecked(True)
    wait_idle(qtbot, widget, MODEL_TIMEOUT_MS)
    assert widget.model.quantization == "nf4", widget.message
    np.testing.assert_array_equal(widget.layers["objects"].data, committed)
    draw_boxes(qtbot, widget, [5, 5, 30, 30])
    assert widget.preview is not None


def test_hounsfield_window_on_png_data_warns(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    widget.set_image_layer(viewer.add_image(np.random.randint(0, 255, (40, 50)).astype(np.uint8), name="png"))
    wait_idle(qtbot, widget)
    widget.ui.intensity.setCurrentText("CT lung (W1500 L−600)")
    assert "Hounsfield" in widget.message
    widget.ui.intensity.setCurrentText("as displayed")
    wait_idle(qtbot, widget)
    image = widget.binding.image
    assert widget.session.intensity == f"range:{image.contrast_limits[0]:.6g}:{image.contrast_limits[1]:.6g}"
    image.contrast_limits = (10, 100)
    qtbot.waitUntil(lambda: widget.session.intensity == "range:10:100", timeout=5000)  # follows the display
    wait_idle(qtbot, widget)


def test_closing_the_dock_mid_preview_stops_everything(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    widget.set_image_layer(viewer.add_image(np.random.rand(40, 50), name="img"))
    wait_idle(qtbot, widget)
    box = widget.layers["box"]
    box.add_rectangles(box_to_rectangle([5, 5, 30, 30]))  # a decode starts in a worker
    assert not widget.is_idle
    viewer.window.remove_dock_widget(widget)
    assert widget.running == set()  # the dock's closing waited for its workers
    painted = widget.previews_painted
    box.add_rectangles(box_to_rectangle([10, 10, 20, 20]))
    assert widget.is_idle and widget.previews_painted == painted  # a closed widget no longer decodes
    assert all(not getattr(cb, "_minisam_gesture", False) for cb in box.mouse_drag_callbacks)
    assert "C" not in {str(k) for k in viewer.keymap}  # its shortcuts are gone


def test_closing_napari_mid_propagation_ends_cleanly(make_napari_viewer, qtbot, monkeypatch):
    monkeypatch.setenv("MINISAM_NAPARI_MODEL", "tiny_hf_sam")
    viewer = make_napari_viewer()
    viewer.add_image(np.random.rand(30, 40, 40).astype(np.float32), name="vol")
    _, widget = viewer.window.add_plugin_dock_widget("napari-qlora-minisam", "MiniSAM segmentation")
    wait_idle(qtbot, widget, MODEL_TIMEOUT_MS)
    viewer.dims.set_current_step(0, 15)
    wait_idle(qtbot, widget)
    widget.images.make_now(widget.binding, "objects").data[15, 5:35, 5:35] = 1
    widget.propagate()
    assert widget.propagation.active
    viewer.close()
    assert widget.running == set() and not widget.propagation.active  # stopped and waited for, before Qt tore down
    assert QThreadPool.globalInstance().waitForDone(10_000)
