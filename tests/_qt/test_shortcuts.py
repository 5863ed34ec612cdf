"""Viewer-wide shortcuts: they work whatever layer is active, are listed in the widget, and go with it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_qlora_minisam._qt.shortcuts import SHORTCUTS
from napari_qlora_minisam.prompts import box_to_rectangle
from tests._qt.helpers import draw_boxes, press_key, wait_idle

pytestmark = [pytest.mark.gui]


def test_commit_clear_and_polarity_keys_from_any_layer(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    image = viewer.add_image(np.random.rand(40, 50), name="img")
    user_labels = viewer.add_labels(np.zeros((40, 50), np.int32), name="my labels")
    widget.set_image_layer(image)
    wait_idle(qtbot, widget)
    widget.ui.overwrite.setChecked(True)  # the same box each time: each commit takes the pixels over
    for active, expected_id in ((widget.layers["box"], 1), (image, 2), (user_labels, 3)):
        draw_boxes(qtbot, widget, [5, 5, 30, 30])
        viewer.layers.selection.active = active
        assert press_key(viewer, "C"), f"C did nothing with {active.name!r} active"
        assert f"Committed object {expected_id}" in widget.message
    assert not widget.ui.negative.isChecked()
    assert press_key(viewer, "N") and widget.ui.negative.isChecked()
    widget.layers["points"].add([[10, 10]])
    wait_idle(qtbot, widget)
    assert press_key(viewer, "Shift-C")
    assert len(widget.layers["points"].data) == 0 and widget.session.prompts == []
    viewer.layers.selection.active = widget.layers["box"]
    assert press_key(viewer, "Q") and viewer.layers.selection.active is widget.layers["points"]
    assert press_key(viewer, "Q") and viewer.layers.selection.active is widget.layers["box"]
    assert press_key(viewer, "Control-Z") and not (widget.layers["objects"].data == 3).any()
    assert press_key(viewer, "Control-Shift-Z") and (widget.layers["objects"].data == 3).any()
    wait_idle(qtbot, widget)


def test_slice_keys_step_and_embed_ahead(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    widget.set_image_layer(viewer.add_image(np.random.rand(6, 32, 32), name="vol"))
    viewer.dims.set_current_step(0, 2)
    wait_idle(qtbot, widget)
    assert press_key(viewer, ".")
    wait_idle(qtbot, widget)
    assert widget.session.z == 3 and widget.session.is_embedded(4)  # the next one is ready before it is asked
    assert press_key(viewer, ",")
    wait_idle(qtbot, widget)
    assert widget.session.z == 2 and widget.session.is_embedded(1)
    widget.layers["box"].add_rectangles(box_to_rectangle([4, 4, 20, 20], 2))
    wait_idle(qtbot, widget)
    press_key(viewer, "C")
    assert press_key(viewer, "G")  # propagate
    qtbot.waitUntil(lambda: not widget.propagation.active, timeout=60_000)
    assert "ropagat" in widget.message
    wait_idle(qtbot, widget)


def test_the_help_lists_every_shortcut_and_closing_restores_the_keys(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    image = viewer.add_image(np.random.rand(40, 50), name="img")
    widget.set_image_layer(image)
    wait_idle(qtbot, widget)
    assert widget.ui.shortcuts.isHidden()
    widget.ui.help.click()
    assert not widget.ui.shortcuts.isHidden()
    text = widget.ui.shortcuts.text()
    for key, _, what in SHORTCUTS:
        assert key.replace("Control", "Ctrl") in text and what in text
    viewer.window.remove_dock_widget(widget)
    viewer.layers.selection.active = image
    assert not press_key(viewer, "G")  # the widget's keys are gone with it
    assert "C" not in {str(k) for k in image.keymap}  # napari's own C (auto-contrast) is the image's again
