"""GUI fixtures: the widget opened through the manifest in a napari viewer (pytest-qt, Xvfb)."""

from __future__ import annotations

import pytest
from qtpy.QtCore import QThreadPool

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


@pytest.fixture
def tiny_widget(open_widget, monkeypatch):
    """The widget on a tiny random SAM: code paths that do not need the real weights."""
    monkeypatch.setenv("MINISAM_NAPARI_MODEL", "tiny_hf_sam")
    return open_widget()


@pytest.fixture(autouse=True)
def embeddings_dir(tmp_path_factory, monkeypatch):
    """The widget keeps embeddings on disk: GUI tests keep them in a folder of their own, never the user's."""
    path = tmp_path_factory.mktemp("embeddings")
    monkeypatch.setenv("MINISAM_EMBEDDINGS_DIR", str(path))
    return path


@pytest.fixture(autouse=True)
def drain_worker_threads():
    """Let every worker thread finish after a test, after the viewer has closed.

    Autouse fixtures are set up first and so torn down last: this runs after ``make_napari_viewer`` has
    closed the viewer. A worker still running when the interpreter exits would emit ``finished`` into a
    deleted Qt object and abort the process, failing a run whose tests all passed.
    """
    yield
    assert QThreadPool.globalInstance().waitForDone(60_000), "a widget worker did not finish within 60 s"
