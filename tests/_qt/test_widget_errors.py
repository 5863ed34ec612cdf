"""Bad inputs and cancellation: messages in the widget, never a traceback; labels survive."""

from __future__ import annotations

import numpy as np
import pytest

from napari_qlora_minisam.prompts import box_to_rectangle
from tests._qt.helpers import MODEL_TIMEOUT_MS, wait_idle, wait_preview

pytestmark = [pytest.mark.gui]


def test_rgb_stack_and_4d_images_give_messages(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    viewer.add_image(np.random.randint(0, 255, (3, 32, 32, 3), np.uint8), rgb=True, name="rgb stack")
    widget.set_image_layer(viewer.layers["rgb stack"])
    assert "RGB image stacks" in widget.message and widget.image_layer is None
    viewer.add_image(np.random.rand(2, 3, 32, 32), name="4d")
    widget.set_image_layer(viewer.layers["4d"])
    assert "4 dimensions" in widget.message
    widget.commit()  # nothing to commit into: a message, no exception
    assert "image layer" in widget.message


def test_nan_image_gives_message_and_keeps_labels(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    good = viewer.add_image(np.random.rand(40, 50).astype(np.float32), name="good")
    widget.set_image_layer(good)
    wait_idle(qtbot, widget)
    before = widget.previews_painted
    widget.shapes_layer.add_rectangles(box_to_rectangle([5, 5, 30, 30]))
    wait_preview(qtbot, widget, before)
    widget.commit()
    committed = widget.objects_layer.data.copy()
    assert committed.any()

    bad = np.random.rand(40, 50).astype(np.float32)
    bad[3, 4] = np.nan
    viewer.add_image(bad, name="bad")
    widget.set_image_layer(viewer.layers["bad"])
    qtbot.waitUntil(lambda: "NaN" in widget.message, timeout=MODEL_TIMEOUT_MS)
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(viewer.layers["good objects"].data, committed)


def test_commit_without_prompt_and_propagate_on_2d_give_messages(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    widget.set_image_layer(viewer.add_image(np.random.rand(40, 50), name="img"))
    wait_idle(qtbot, widget)
    widget.commit()
    assert "Nothing to commit" in widget.message
    widget.propagate()
    assert "3D" in widget.message


def test_propagation_can_be_cancelled_threaded(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    vol = np.random.rand(12, 40, 40).astype(np.float32)
    widget.set_image_layer(viewer.add_image(vol, name="vol"))
    viewer.dims.set_current_step(0, 6)
    wait_idle(qtbot, widget)
    widget.objects_layer.data[6, 10:30, 10:30] = 5  # an object the user painted by hand
    widget.objects_layer.selected_label = 5
    widget.propagate()
    widget.cancel_propagation()
    qtbot.waitUntil(lambda: not widget.is_propagating, timeout=MODEL_TIMEOUT_MS)
    assert "cancelled" in widget.message or "Propagated" in widget.message
    assert widget.objects_layer.data[6, 15, 15] == 5
    wait_idle(qtbot, widget)


def test_synchronous_switch_runs_inline(tiny_widget, qtbot, monkeypatch):
    viewer, widget, _ = tiny_widget
    monkeypatch.setenv("MINISAM_NAPARI_SYNC", "1")
    widget.set_image_layer(viewer.add_image(np.random.rand(40, 50), name="img"))
    before = widget.previews_painted
    widget.shapes_layer.add_rectangles(box_to_rectangle([5, 5, 30, 30]))
    assert widget.previews_painted > before and widget.preview is not None  # no waiting needed
    widget.commit()
    assert widget.objects_layer.data.any()


def test_polarity_toggle_affects_next_clicks_and_shift_n_flips_selected(tiny_widget, qtbot):
    from napari_qlora_minisam.prompts import NEGATIVE, POSITIVE, PROMPT_FEATURE

    viewer, widget, _ = tiny_widget
    widget.set_image_layer(viewer.add_image(np.random.rand(40, 50), name="img"))
    wait_idle(qtbot, widget)
    points = widget.points_layer
    points.add([[10, 10]])
    widget.toggle_negative()  # the click just made stays positive
    points.add([[20, 20]])
    assert points.features[PROMPT_FEATURE].tolist() == [POSITIVE, NEGATIVE]
    assert widget.current_prompts().point_labels.tolist() == [1, 0]
    points.selected_data = {0}
    widget.flip_selected_points()
    assert points.features[PROMPT_FEATURE].tolist() == [NEGATIVE, NEGATIVE]
    wait_idle(qtbot, widget)


def test_quantize_toggle_reloads_in_nf4_and_keeps_labels(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    widget.set_image_layer(viewer.add_image(np.random.rand(40, 50), name="img"))
    wait_idle(qtbot, widget)
    widget.objects_layer.data[5:9, 5:9] = 3
    committed = widget.objects_layer.data.copy()
    widget.ui.quantize.setChecked(True)
    wait_idle(qtbot, widget, MODEL_TIMEOUT_MS)
    assert widget.model.quantization == "nf4", widget.message
    np.testing.assert_array_equal(widget.objects_layer.data, committed)
    before = widget.previews_painted
    widget.shapes_layer.add_rectangles(box_to_rectangle([5, 5, 30, 30]))
    wait_preview(qtbot, widget, before)
    assert widget.preview is not None
