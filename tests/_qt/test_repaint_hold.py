"""The layer list waits for the preview: held while a decode runs, repainted after, never frozen for long."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtWidgets import QListView, QMainWindow, QVBoxLayout, QWidget

from napari_qlora_minisam._qt.repaint_hold import RepaintHold
from napari_qlora_minisam._qt.live_preview import LIST_REPAINT_DELAY_MS
from napari_qlora_minisam._sample_data import heart_mri
from napari_qlora_minisam.masks import dice, tight_box
from tests._qt.helpers import MODEL_TIMEOUT_MS, add_sample, move, press, release, wait_idle, wait_preview

pytestmark = pytest.mark.gui


def window_with_views(qtbot):
    window = QMainWindow()
    qtbot.addWidget(window)
    central = QWidget()
    layout = QVBoxLayout(central)
    other = QListView()  # stands in for napari's layer list
    owner = QWidget()
    own = QListView(owner)  # a view inside the owner (e.g. a combo box popup) is never held
    layout.addWidget(other)
    layout.addWidget(owner)
    window.setCentralWidget(central)
    window.show()
    qtbot.waitExposed(window)
    return window, owner, other, own  # the caller keeps the window alive (qtbot holds a weak reference)


def test_hold_release_and_bound(qtbot):
    _window, owner, other, own = window_with_views(qtbot)
    hold = RepaintHold(owner, max_ms=200)
    hold.hold()
    assert hold.held == (other,)
    assert not other.updatesEnabled() and own.updatesEnabled()
    hold.hold()  # a second edit while held: still one hold, bound restarted
    assert hold.held == (other,)
    hold.release()
    assert other.updatesEnabled() and hold.held == ()

    hold.hold()
    hold.release_after(20)
    assert not other.updatesEnabled()  # not in this frame
    qtbot.waitUntil(other.updatesEnabled, timeout=2000)

    hold.hold()  # nobody releases: the bound does
    qtbot.waitUntil(other.updatesEnabled, timeout=2000)
    assert hold.held == ()


def test_release_survives_a_deleted_view(qtbot):
    window, owner, other, _ = window_with_views(qtbot)
    hold = RepaintHold(owner)
    hold.hold()
    other.deleteLater()
    qtbot.waitUntil(lambda: len(window.findChildren(QListView)) == 1, timeout=2000)  # only the owner's left
    hold.release()  # must not raise on the deleted C++ object
    assert hold.held == ()
    hold.hold()  # nor may a hold that meets it in its list of known views
    assert hold.held == ()
    hold.release()


def test_a_view_docked_later_is_held_too(qtbot):
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QDockWidget

    window, owner, other, _ = window_with_views(qtbot)
    hold = RepaintHold(owner)
    hold.hold()
    hold.release()
    dock = QDockWidget("another plugin", window)
    late = QListView()
    dock.setWidget(late)
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    qtbot.waitUntil(late.isVisible, timeout=2000)
    hold.hold()
    assert set(hold.held) == {other, late}
    hold.release()


def test_canvas_hold_takes_the_opengl_widgets_only(qtbot):
    from qtpy.QtWidgets import QOpenGLWidget

    from napari_qlora_minisam._qt.repaint_hold import canvas_hold

    window, owner, other, _ = window_with_views(qtbot)
    gl = QOpenGLWidget()
    window.centralWidget().layout().addWidget(gl)
    qtbot.waitUntil(gl.isVisible, timeout=2000)
    hold = canvas_hold(owner, max_ms=100)
    hold.hold()
    assert hold.held == (gl,) and not gl.updatesEnabled() and other.updatesEnabled()
    qtbot.waitUntil(gl.updatesEnabled, timeout=2000)  # nobody releases: the bound does
    assert hold.held == ()


def test_not_docked_holds_nothing(qtbot):
    lone = QWidget()
    qtbot.addWidget(lone)
    hold = RepaintHold(lone)
    hold.hold()
    assert hold.held == ()


@pytest.mark.slow
def test_layer_list_waits_for_the_preview(make_napari_viewer, qtbot, monkeypatch):
    """Threaded: a box edit holds napari's layer list until its preview is painted, then lets it repaint."""
    from qtpy.QtWidgets import QAbstractItemView, QOpenGLWidget

    viewer = make_napari_viewer(show=True)
    _, reference = add_sample(viewer, heart_mri)
    _, widget = viewer.window.add_plugin_dock_widget("napari-qlora-minisam", "MiniSAM segmentation")
    wait_idle(qtbot, widget, MODEL_TIMEOUT_MS)
    window = widget.window()
    [canvas] = [w for w in window.findChildren(QOpenGLWidget) if w.isVisible()]  # napari's canvas
    lists = [v for v in window.findChildren(QAbstractItemView) if v.isVisible() and not widget.isAncestorOf(v)]
    assert lists, "napari's layer list should be an item view outside the widget"
    live = widget.live
    from napari_qlora_minisam.prompts import box_to_rectangle

    before = widget.previews_painted
    seen_at_paint = []
    widget.preview_painted.connect(lambda: seen_at_paint.append(canvas.updatesEnabled()))
    widget.layers["box"].add_rectangles(box_to_rectangle(tight_box(reference.data == 1)))
    assert widget.session.preview.running is not None, "the edit should have started a decode in a worker"
    assert set(lists) <= set(live.list_hold.held) and not any(v.updatesEnabled() for v in lists)
    assert live.canvas_hold.held == (canvas,) and not canvas.updatesEnabled()
    wait_preview(qtbot, widget, before)
    assert widget.preview.masks[0].any()
    assert seen_at_paint[-1], "the canvas must draw the frame that shows the preview"
    qtbot.waitUntil(lambda: all(v.updatesEnabled() for v in lists), timeout=LIST_REPAINT_DELAY_MS + 5000)
    assert live.list_hold.held == ()
    # A click is held from napari's "adding" event, before napari asks the canvas to draw the point.
    held_when_added = []
    widget.layers["points"].events.data.connect(
        lambda e: held_when_added.append((str(e.action), canvas.updatesEnabled())), position="first")
    before = widget.previews_painted
    ys, xs = np.nonzero(reference.data == 1)
    widget.layers["points"].add([ys.mean(), xs.mean()])
    assert ("added", False) in held_when_added
    wait_preview(qtbot, widget, before)
    qtbot.waitUntil(canvas.updatesEnabled, timeout=2000)
    # Drawing a box with the mouse: napari announces it ("adding") at the press, but the canvas must follow
    # the drag, so nothing is held while the button is down, except for the paused drag's preview. Decodes
    # wait on a gate here, so what is held while one runs can be seen.
    import threading

    from napari_qlora_minisam.annotation import PreviewJob

    gate, real_run = threading.Event(), PreviewJob.run
    monkeypatch.setattr(PreviewJob, "run", lambda job: gate.wait(30) and real_run(job))
    widget.clear_prompts()
    wait_idle(qtbot, widget)
    widget.tools.activate_box_mode()
    shapes = widget.layers["box"]
    bottom, right = float(ys.max()) + 2, float(xs.max()) + 2  # not the box decoded above (that one is cached)
    press(shapes, (float(ys.min()), float(xs.min())))
    assert len(shapes.data) == 1 and canvas.updatesEnabled() and live.canvas_hold.held == ()
    before = widget.previews_painted
    move(shapes, (bottom, right))
    assert canvas.updatesEnabled() and live.list_hold.held  # the list waits, the box is drawn
    qtbot.waitUntil(lambda: widget.session.preview.running is not None, timeout=5000)  # the rest decodes
    assert live.canvas_hold.held == (canvas,)  # the still box and its preview in one frame
    gate.set()
    wait_preview(qtbot, widget, before)
    assert canvas.updatesEnabled() and seen_at_paint[-1]
    gate.clear()
    move(shapes, (bottom + 1, right + 1))
    qtbot.waitUntil(lambda: widget.session.preview.running is not None, timeout=5000)
    assert live.canvas_hold.held == (canvas,)
    before = widget.previews_painted
    move(shapes, (bottom, right))  # moving again frees the canvas at once
    assert canvas.updatesEnabled() and live.canvas_hold.held == ()
    gate.set()
    wait_preview(qtbot, widget, before)  # the drag's next rest brings its preview (decoded before: at once)
    release(shapes, (bottom, right))
    wait_idle(qtbot, widget)
    assert canvas.updatesEnabled() and dice(widget.preview.masks[0], reference.data == 1) > 0.8
    # An edit that fails (box outside the image) releases the list and the canvas too.
    shapes.add_rectangles(box_to_rectangle(np.array([5000, 5000, 5100, 5100], np.float32)))
    wait_idle(qtbot, widget)
    qtbot.waitUntil(lambda: all(v.updatesEnabled() for v in lists), timeout=5000)
    assert canvas.updatesEnabled() and live.canvas_hold.held == ()
