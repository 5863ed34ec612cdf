"""The *Segment everything* button: a worker, a progress bar, Cancel, and a new labels layer (tiny random SAM)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_qlora_minisam._qt.workers import SYNC_ENV
from tests._qt.helpers import STEP_TIMEOUT_MS, wait_idle

pytestmark = [pytest.mark.gui]

# The tiny model has random weights: its scores mean nothing, so the filters are off.
LOOSE = {"mode": "points", "points_per_side": 4, "pred_iou_thresh": -10.0, "stability_thresh": 0.0, "min_area": 5,
         "batch": 4}


@pytest.fixture
def heart(tiny_widget, qtbot):
    from napari_qlora_minisam._sample_data import heart_mri

    viewer, widget, _ = tiny_widget
    for data, kwargs, kind in heart_mri():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget.set_image_layer(viewer.layers["cardiac MRI"])
    wait_idle(qtbot, widget)
    return viewer, widget


def test_button_writes_an_editable_labels_layer(heart, qtbot):
    viewer, widget = heart
    panel = widget.everything
    panel.settings = dict(LOOSE)
    seen = []
    panel.progressed.connect(lambda done, total: seen.append((done, total)))
    panel.start_button.click()
    name = "cardiac MRI · everything"
    qtbot.waitUntil(lambda: name in viewer.layers and not panel.active, timeout=STEP_TIMEOUT_MS)
    layer = viewer.layers[name]
    assert layer.data.shape == viewer.layers["cardiac MRI"].data.shape
    assert layer.data.max() >= 1 and layer.editable
    assert seen and seen[-1] == (16, 16)
    assert panel.start_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert not panel.progress.isVisible()


def test_the_adapter_box_waits_for_the_run(heart, qtbot):
    """An adapter switch mid-run would answer the later prompts with another model than the first ones."""
    viewer, widget = heart
    panel = widget.everything
    panel.settings = {**LOOSE, "batch": 1}
    states = []
    panel.progressed.connect(lambda done, total: states.append(widget.ui.adapter.isEnabled()))
    assert widget.ui.adapter.isEnabled()
    panel.start_button.click()
    qtbot.waitUntil(lambda: not panel.active, timeout=STEP_TIMEOUT_MS)
    wait_idle(qtbot, widget)
    assert len(states) > 1 and not any(states)  # greyed out at every progress report
    assert widget.ui.adapter.isEnabled()


def test_cancel_stops_and_adds_no_layer(heart, qtbot, monkeypatch):
    viewer, widget = heart
    monkeypatch.setenv(SYNC_ENV, "1")  # deterministic: Cancel is pressed from the first progress report
    panel = widget.everything
    panel.settings = {**LOOSE, "batch": 1}
    seen = []

    def press_cancel(done, total):
        seen.append(done)
        panel.cancel_button.click()

    panel.progressed.connect(press_cancel)
    before = len(viewer.layers)
    panel.start_button.click()
    qtbot.waitUntil(lambda: not panel.active, timeout=STEP_TIMEOUT_MS)
    assert len(viewer.layers) == before and seen[-1] == 1  # stopped after the first batch
    assert "cancelled" in widget.message.lower()
    assert np.all([not layer.name.endswith("everything") for layer in viewer.layers])


def test_3d_image_segments_the_slice_in_view(tiny_widget, qtbot):
    from napari_qlora_minisam._sample_data import lung_ct_volume

    viewer, widget, _ = tiny_widget
    for data, kwargs, kind in lung_ct_volume():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    image = viewer.layers["chest CT"]
    widget.set_image_layer(image)
    z = image.data.shape[0] // 2
    viewer.dims.set_current_step(0, z)
    wait_idle(qtbot, widget)
    panel = widget.everything
    panel.settings = dict(LOOSE)
    panel.start_button.click()
    name = "chest CT · everything"
    qtbot.waitUntil(lambda: name in viewer.layers and not panel.active, timeout=STEP_TIMEOUT_MS)
    data = viewer.layers[name].data
    assert data.shape == image.data.shape and np.array_equal(viewer.layers[name].scale, image.scale)
    filled = np.flatnonzero(data.reshape(data.shape[0], -1).any(axis=1))
    assert filled.tolist() == [z]
