"""Gestures on the prompt layers through napari's own mouse bindings, threaded: a click is decoded while its
button is down, a paused drag is previewed before its release."""

from __future__ import annotations

import numpy as np
import pytest

from napari_qlora_minisam.prompts import box_to_rectangle
from tests._qt.helpers import move, press, release, wait_idle, wait_preview

pytestmark = [pytest.mark.gui]


def fresh_masks(qtbot, widget):
    """The preview of the current prompts decoded anew, nothing reused."""
    widget.session.preview.forget()
    before = widget.previews_painted
    widget.live.refresh()
    wait_preview(qtbot, widget, before)
    return [m.copy() for m in widget.preview.masks]


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture
def clicking(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    rng = np.random.default_rng(0)
    widget.set_image_layer(viewer.add_image(rng.random((40, 50)), name="img"))
    wait_idle(qtbot, widget)
    widget.layers["box"].add_rectangles(box_to_rectangle([5, 5, 40, 30]))
    wait_idle(qtbot, widget)
    widget.tools.activate_point_mode()
    return widget


def test_a_click_is_decoded_at_the_press_and_painted_at_the_release(clicking, qtbot):
    widget = clicking
    points = widget.layers["points"]
    painted, shown = widget.previews_painted, widget.layers["preview"].data.copy()
    press(points, (12.0, 20.0))
    assert not widget.is_idle  # the decode started at the press, in a worker
    wait_idle(qtbot, widget)
    # Decoded, but nothing shown yet: the point does not exist until the button comes up.
    assert widget.previews_painted == painted and len(points.data) == 0
    np.testing.assert_array_equal(widget.layers["preview"].data, shown)

    release(points, (12.0, 20.0))
    assert len(points.data) == 1
    assert widget.previews_painted > painted  # painted within the release's own event handling, no decode
    assert widget.session.preview.ahead_used == 1 and widget.is_idle
    ahead = [m.copy() for m in widget.preview.masks]
    np.testing.assert_array_equal(widget.layers["preview"].data > 0, ahead[0])
    assert same(fresh_masks(qtbot, widget), ahead)
    assert widget.session.preview.ahead_used == 1  # a fresh decode is not counted as one made ahead


def test_a_release_elsewhere_decodes_its_own_point(clicking, qtbot):
    widget = clicking
    points = widget.layers["points"]
    press(points, (12.0, 20.0))
    wait_idle(qtbot, widget)
    painted = widget.previews_painted
    release(points, (25.0, 10.0))  # the mouse moved a little, under napari's drag threshold
    np.testing.assert_array_equal(points.data, [[25.0, 10.0]])
    wait_preview(qtbot, widget, painted)
    assert widget.session.preview.ahead_used == 0
    np.testing.assert_array_equal(widget.session.prompts[0].points_xy, [[10.0, 25.0]])
    masks = [m.copy() for m in widget.preview.masks]
    assert same(fresh_masks(qtbot, widget), masks)


def test_a_press_that_becomes_a_drag_paints_nothing(clicking, qtbot):
    widget = clicking
    points = widget.layers["points"]
    painted, shown = widget.previews_painted, widget.layers["preview"].data.copy()
    generation = widget.session.preview.generation
    press(points, (12.0, 20.0))
    release(points, (30.0, 40.0), pos=(50, 50))  # far on the canvas: napari pans instead of adding
    wait_idle(qtbot, widget)
    assert len(points.data) == 0 and widget.previews_painted == painted
    assert widget.session.preview.generation == generation  # nothing changed: the box's preview is current
    np.testing.assert_array_equal(widget.layers["preview"].data, shown)
    assert widget.session.preview_is_current
    widget.commit()  # the current preview is committed at once, no decode awaited
    assert widget.message.startswith("Committed object 1")
    np.testing.assert_array_equal(widget.layers["objects"].data > 0, shown > 0)


def test_one_gesture_callback_per_layer_and_no_click_decode_outside_add_mode(clicking, qtbot):
    widget = clicking
    points = widget.layers["points"]
    widget.set_image_layer(widget.binding.image)  # the layers are found again, not duplicated
    wait_idle(qtbot, widget)
    for layer in (widget.layers["box"], points):
        marked = [cb for cb in layer.mouse_drag_callbacks if getattr(cb, "_minisam_gesture", False)]
        assert len(marked) == 1 and layer.mouse_drag_callbacks[0] is marked[0]
    points.mode = "select"
    assert points.mouse_drag_callbacks[0] is marked[0]  # napari appends its mode callbacks after it
    press(points, (12.0, 20.0))
    assert widget.is_idle  # select mode: a press adds no point, so nothing is decoded ahead
    release(points, (12.0, 20.0))
    wait_idle(qtbot, widget)


def test_a_paused_drag_is_previewed_before_its_release(clicking, qtbot):
    """Drawing a box: the preview follows once the drag pauses, and the release paints it at once."""
    widget = clicking
    shapes = widget.layers["box"]
    shapes.data = []
    wait_idle(qtbot, widget)
    widget.tools.activate_box_mode()
    painted = widget.previews_painted
    press(shapes, (5.0, 5.0))
    move(shapes, (20.0, 25.0))
    assert len(shapes.data) == 1 and widget.is_idle  # nothing decoded while the mouse moves
    wait_preview(qtbot, widget, painted)  # the drag paused: a preview with the button still down
    np.testing.assert_allclose(widget.session.prompts[0].box, [5, 5, 25, 20])
    move(shapes, (30.0, 35.0))
    painted = widget.previews_painted
    wait_preview(qtbot, widget, painted)
    assert widget.live.gesture_layer is shapes
    masks = [m.copy() for m in widget.preview.masks]
    painted = widget.previews_painted
    release(shapes, (30.0, 35.0))
    assert widget.live.gesture_layer is None
    assert widget.previews_painted > painted and widget.is_idle  # the release's preview needed no decode
    np.testing.assert_allclose(widget.session.prompts[0].box, [5, 5, 35, 30])
    assert same(widget.preview.masks, masks) and same(fresh_masks(qtbot, widget), masks)


def test_a_drag_released_while_moving_is_decoded_at_the_release(clicking, qtbot):
    widget = clicking
    shapes = widget.layers["box"]
    shapes.mode = "select"
    shapes.selected_data = {0}
    centre = tuple(np.mean(shapes.data[0], axis=0))
    painted = widget.previews_painted
    press(shapes, centre)
    move(shapes, centre)
    move(shapes, tuple(np.add(centre, 3.0)))
    release(shapes, tuple(np.add(centre, 3.0)))  # no pause: nothing was decoded during the drag
    assert widget.previews_painted == painted and not widget.is_idle
    wait_preview(qtbot, widget, painted)
    np.testing.assert_allclose(widget.session.prompts[0].box, [8, 8, 43, 33])
    assert same(fresh_masks(qtbot, widget), widget.preview.masks)


def test_moving_again_drops_the_rest_preview(clicking, qtbot, monkeypatch):
    import threading

    from napari_qlora_minisam.annotation import PreviewJob

    widget = clicking
    shapes = widget.layers["box"]
    shapes.mode = "select"
    shapes.selected_data = {0}
    gate = threading.Event()
    real_run = PreviewJob.run

    def gated_run(job):
        gate.wait(30)  # the decode of the rest lasts until the test lets it end
        return real_run(job)

    monkeypatch.setattr(PreviewJob, "run", gated_run)
    centre = tuple(np.mean(shapes.data[0], axis=0))
    painted = widget.previews_painted
    boxes_painted = []  # the box of the preview behind each paint
    widget.preview_painted.connect(lambda: boxes_painted.append(widget.preview.objects[0].box.copy()))
    press(shapes, centre)
    move(shapes, tuple(np.add(centre, 2.0)))
    qtbot.waitUntil(lambda: widget.session.preview.running is not None, timeout=5000)  # the rest's decode
    move(shapes, tuple(np.add(centre, 4.0)))  # and moves on before that decode ends
    assert widget.live.canvas_hold.held == ()  # moving frees the canvas at once
    gate.set()
    qtbot.waitUntil(lambda: widget.live.gesture_layer is shapes and widget.previews_painted > painted,
                    timeout=10_000)
    # Every preview painted is the second rest's, of the box where it is now, never the first one's.
    np.testing.assert_allclose(widget.session.prompts[0].box, [9, 9, 44, 34])
    assert boxes_painted and all(np.allclose(b, [9, 9, 44, 34]) for b in boxes_painted)
    assert widget.session.preview_is_current
    assert same(fresh_masks(qtbot, widget), widget.preview.masks)
    release(shapes, tuple(np.add(centre, 4.0)))
    wait_idle(qtbot, widget)


def test_a_dragged_point_is_previewed_at_its_rest_and_released_without_a_decode(clicking, qtbot):
    widget = clicking
    points = widget.layers["points"]
    points.add([[12.0, 20.0]])
    wait_idle(qtbot, widget)
    points.mode = "select"
    press(points, (12.0, 20.0))
    assert points.selected_data == {0}
    painted = widget.previews_painted
    move(points, (15.0, 24.0))
    wait_preview(qtbot, widget, painted)  # the point rests: its preview, the button still down
    np.testing.assert_array_equal(widget.session.prompts[0].points_xy, [[24.0, 15.0]])
    masks = [m.copy() for m in widget.preview.masks]
    painted = widget.previews_painted
    release(points, (15.0, 24.0))
    assert widget.previews_painted > painted and widget.is_idle  # painted within the release, no decode
    assert same(widget.preview.masks, masks) and same(fresh_masks(qtbot, widget), masks)


def test_real_mouse_events_on_the_canvas(make_napari_viewer, qtbot, monkeypatch):
    """Qt mouse events on napari's canvas (through vispy), as a user's hand makes them, not napari's callbacks."""
    from qtpy.QtCore import QPoint, Qt
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QOpenGLWidget

    from tests._qt.helpers import MODEL_TIMEOUT_MS

    monkeypatch.setenv("MINISAM_NAPARI_MODEL", "tiny_hf_sam")
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.random.default_rng(0).random((40, 50)), name="img")
    _, widget = viewer.window.add_plugin_dock_widget("napari-qlora-minisam", "MiniSAM segmentation")
    wait_idle(qtbot, widget, MODEL_TIMEOUT_MS)
    widget.layers["box"].add_rectangles(box_to_rectangle([5, 5, 40, 30]))
    wait_idle(qtbot, widget)
    viewer.reset_view()
    qtbot.wait(100)
    [canvas] = [w for w in widget.window().findChildren(QOpenGLWidget) if w.isVisible()]  # napari's canvas
    centre = QPoint(canvas.width() // 2, canvas.height() // 2)  # the image's centre, inside the box
    left, none = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier

    # A click: decoded while the button is down, painted when it comes up.
    widget.tools.activate_point_mode()
    QTest.mouseMove(canvas, centre)
    QTest.mousePress(canvas, left, none, centre)
    assert len(widget.layers["points"].data) == 0 and not widget.is_idle
    wait_idle(qtbot, widget)
    painted = widget.previews_painted
    QTest.mouseRelease(canvas, left, none, centre)
    assert len(widget.layers["points"].data) == 1 and widget.session.preview.ahead_used == 1
    assert widget.previews_painted > painted and widget.is_idle

    # A drag of the box: previewed at its rest with the button down, and the release needs no decode.
    widget.layers["points"].data = widget.layers["points"].data[:0]
    wait_idle(qtbot, widget)
    shapes = widget.layers["box"]
    shapes.mode = "select"
    viewer.layers.selection.active = shapes
    box = widget.session.prompts[0].box.copy()
    QTest.mousePress(canvas, left, none, centre)
    painted = widget.previews_painted
    for step in range(1, 6):
        QTest.mouseMove(canvas, centre + QPoint(4 * step, 4 * step))
        qtbot.wait(5)
    assert widget.live.gesture_layer is shapes
    moved = widget.binding.read_prompts()[0].box
    assert moved[0] > box[0] and moved[1] > box[1]
    # (a slow machine may also have previewed a rest between two moves: wait for the last position's)
    qtbot.waitUntil(lambda: widget.is_idle and widget.session.preview.shows(widget.binding.read_prompts()),
                    timeout=10_000)
    assert widget.previews_painted > painted and widget.live.gesture_layer is shapes
    painted = widget.previews_painted
    QTest.mouseRelease(canvas, left, none, centre + QPoint(20, 20))
    assert widget.live.gesture_layer is None and widget.previews_painted > painted and widget.is_idle
    np.testing.assert_array_equal(widget.session.prompts[0].box, moved)


def test_a_click_on_a_slice_of_a_volume_is_decoded_from_its_press(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    volume = np.random.default_rng(1).random((5, 40, 50))
    widget.set_image_layer(viewer.add_image(volume, name="vol"))
    viewer.dims.set_current_step(0, 3)
    wait_idle(qtbot, widget)
    widget.layers["box"].add_rectangles(box_to_rectangle([5, 5, 40, 30], 3))
    wait_idle(qtbot, widget)
    widget.tools.activate_point_mode()
    points = widget.layers["points"]
    press(points, (3.0, 12.0, 20.0))
    wait_idle(qtbot, widget)
    painted = widget.previews_painted
    release(points, (3.0, 12.0, 20.0))
    assert widget.previews_painted > painted and widget.session.preview.ahead_used == 1
    assert widget.preview.z == 3 and widget.layers["preview"].data[3].any()
    np.testing.assert_array_equal(widget.session.prompts[0].points_xy, [[20.0, 12.0]])
    assert same(fresh_masks(qtbot, widget), widget.preview.masks)
    # On another slice neither the click nor the box prompts anything, and the preview leaves slice 3.
    viewer.dims.set_current_step(0, 1)
    wait_idle(qtbot, widget)
    assert widget.session.prompts == [] and not widget.layers["preview"].data.any()
