"""GUI fixtures: the widget opened through the manifest in a napari viewer (pytest-qt, Xvfb)."""

from __future__ import annotations

import pytest

from tests._qt.helpers import MODEL_TIMEOUT_MS, add_sample, wait_idle


@pytest.fixture
def open_widget(make_napari_viewer, qtbot):
    """``open_widget(sample_fn)`` -> (viewer, widget, layers); the widget is opened via the manifest."""

    def _open(sample_fn=None):
        viewer = make_napari_viewer()
        layers = add_sample(viewer, sample_fn) if sample_fn else []
        _, widget = viewer.window.add_plugin_dock_widget("napari-qlora-minisam", "MiniSAM segmentation")
        wait_idle(qtbot, widget, MODEL_TIMEOUT_MS)
        return viewer, widget, layers

    yield _open
