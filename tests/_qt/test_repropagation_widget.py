"""The 3D group's *Re-propagate ↑ / ↓* buttons and *Advanced* stop rules, on a tiny model whose slice step is
replaced by a box-filling stand-in (the masks are then known; the model is tested elsewhere)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_qlora_minisam.volume import DEFAULT_NEIGHBOUR_PROMPT, StopRules
from tests._qt.helpers import wait_idle

pytestmark = [pytest.mark.gui]


def box_fill(plane, intensity, box, **neighbour):
    """The box less the 3 px margin a 10 px object's box gets: objects keep their size slice by slice."""
    mask = np.zeros(plane.shape, bool)
    x0, y0, x1, y1 = np.round(box).astype(int)
    mask[y0 + 3:y1 - 2, x0 + 3:x1 - 2] = True
    return mask, 1.0


@pytest.fixture
def corrected_volume(tiny_widget, qtbot, monkeypatch):
    """Object 5 on every slice (an old propagation), moved by hand on slice 4; object 7 on slice 6."""
    viewer, widget, _ = tiny_widget
    widget.set_image_layer(viewer.add_image(np.random.rand(9, 40, 40).astype(np.float32), name="vol"))
    viewer.dims.set_current_step(0, 4)
    wait_idle(qtbot, widget)
    monkeypatch.setattr(widget.session.engine, "segment_box", box_fill)
    labels = widget.images.make_now(widget.binding, "objects")
    labels.data[:, 5:15, 5:15] = 5
    labels.data[4] = 0
    labels.data[4, 20:30, 20:30] = 5
    labels.data[6, 30:36, 30:36] = 7
    labels.selected_label = 5
    return widget, labels


@pytest.mark.parametrize("direction, replaced, kept", [(1, range(5, 9), range(0, 5)), (-1, range(0, 4), range(4, 9))])
def test_repropagate_button_replaces_the_slices_beyond_in_one_undo_step(corrected_volume, qtbot, direction,
                                                                        replaced, kept):
    widget, labels = corrected_volume
    before = np.array(labels.data, copy=True)
    qtbot.mouseClick(widget.propagation.options.buttons[direction], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.propagation.active, timeout=30_000)
    after = np.array(labels.data, copy=True)
    assert "Re-propagated object 5" in widget.message, widget.message
    for z in replaced:
        assert not (after[z, 5:15, 5:15] == 5).any() and (after[z, 20:30, 20:30] == 5).all()
    for z in kept:
        np.testing.assert_array_equal(after[z], before[z])
    np.testing.assert_array_equal(after == 7, before == 7)
    assert all(b.isEnabled() for b in widget.propagation.options.buttons.values())
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)


def test_the_adapter_box_waits_for_a_running_propagation(corrected_volume, qtbot, monkeypatch):
    """Switching adapters mid-run would prompt the slices beyond with another model than those before."""
    import threading

    widget, labels = corrected_volume
    release = threading.Event()

    def held(plane, intensity, box, **neighbour):
        release.wait(30)
        return box_fill(plane, intensity, box, **neighbour)

    monkeypatch.setattr(widget.session.engine, "segment_box", held)
    assert widget.ui.adapter.isEnabled()
    qtbot.mouseClick(widget.propagation.options.buttons[1], Qt.MouseButton.LeftButton)
    assert widget.propagation.active and not widget.ui.adapter.isEnabled()
    assert not widget.ui.adopt.isEnabled()  # the run writes into the objects layer when it ends
    other = widget.viewer.add_labels(np.zeros_like(labels.data), name="other")
    assert not widget.use_labels_layer(other) and "Wait for the propagation" in widget.message
    release.set()
    qtbot.waitUntil(lambda: not widget.propagation.active, timeout=30_000)
    wait_idle(qtbot, widget)
    assert widget.ui.adapter.isEnabled()


def test_an_unchanged_repropagation_says_it_made_no_undo_step(corrected_volume, qtbot):
    widget, labels = corrected_volume
    before = np.array(labels.data, copy=True)
    for _ in range(2):  # the second run finds the masks the first wrote: nothing to change
        qtbot.mouseClick(widget.propagation.options.buttons[1], Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: not widget.propagation.active, timeout=30_000)
    assert "replaced its slices beyond, nothing changed (no undo step)" in widget.message, widget.message
    labels.undo()  # so Ctrl+Z takes back the first run, as the message warns
    np.testing.assert_array_equal(labels.data, before)


def test_advanced_stop_rules_start_at_the_defaults_and_are_used(corrected_volume, qtbot):
    widget, labels = corrected_volume
    options = widget.propagation.options
    assert options.advanced.isHidden()
    options.toggle.setChecked(True)
    assert not options.advanced.isHidden()
    assert options.rules() == StopRules() and options.neighbour_prompt() == DEFAULT_NEIGHBOUR_PROMPT
    options.min_area.setValue(10_000)  # nothing is that large: the first slice "vanishes"
    before = np.array(labels.data, copy=True)
    qtbot.mouseClick(options.buttons[1], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.propagation.active, timeout=30_000)
    assert "vanished" in widget.message, widget.message
    assert not (labels.data[5:] == 5).any()  # the object's slices above were replaced by nothing
    np.testing.assert_array_equal(labels.data[:5], before[:5])
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)


@pytest.mark.parametrize("checked", [False, True])
def test_advanced_trim_reaches_the_propagation(corrected_volume, qtbot, monkeypatch, checked):
    from napari_qlora_minisam._qt import tasks

    widget, _ = corrected_volume
    seen = {}
    real = tasks.propagate_task

    def spy(session, start_mask, max_slices, **options):
        seen.update(options)
        return (yield from real(session, start_mask, max_slices, **options))

    monkeypatch.setattr(tasks, "propagate_task", spy)
    options = widget.propagation.options
    assert not options.trim.isChecked()  # off by default: it hurts the brain volumes
    options.trim.setChecked(checked)
    qtbot.mouseClick(options.buttons[1], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.propagation.active, timeout=30_000)
    assert seen.get("trim") is checked


def test_the_neighbour_prompt_follows_the_model_until_the_user_picks_one(corrected_volume, monkeypatch):
    widget, _ = corrected_volume
    options = widget.propagation.options
    seen = []
    monkeypatch.setattr(options, "follow_model", seen.append)
    widget.models.engine_changed.emit(widget.session.engine)  # a load or an adapter switch
    assert seen == [widget.session.engine.backend]
    monkeypatch.undo()
    minisam_ct = SimpleNamespace(source="minisam", active_adapter="minisam-ct")
    options.follow_model(minisam_ct)
    assert options.neighbour_prompt() == "box"  # what that model propagates best with
    options.follow_model(SimpleNamespace(source="minisam", active_adapter=None))
    assert options.neighbour_prompt() == DEFAULT_NEIGHBOUR_PROMPT
    options.prompt.setCurrentText("box+mask")
    options.prompt.activated.emit(options.prompt.currentIndex())  # what a user's pick emits
    options.follow_model(minisam_ct)
    assert options.neighbour_prompt() == "box+mask"  # the user's choice stays


def test_redraw_a_slice_then_repropagate_from_it(corrected_volume, qtbot):
    """The correction the docs describe: box the object on a slice, Shift+R, then Re-propagate ↑."""
    from tests._qt.helpers import draw_boxes, press_key

    widget, labels = corrected_volume
    labels.data[4] = 0
    labels.data[4, 5:15, 5:15] = 5  # slice 4 still holds the old outline: the one to correct
    labels.data[4, 30:32, 30:32] = 7  # and another object where the new box will go
    before = np.array(labels.data, copy=True)
    draw_boxes(qtbot, widget, [18, 18, 33, 33], z=4)
    mask = np.logical_or.reduce([np.asarray(m, bool) for m in widget.preview.masks])
    assert mask.any()
    viewer = widget.viewer
    viewer.layers.selection.active = widget.layers["box"]
    assert press_key(viewer, "Shift-R")
    wait_idle(qtbot, widget)
    assert "Redrew object 5" in widget.message and "slice 4" in widget.message, widget.message
    np.testing.assert_array_equal(labels.data[4] == 5, mask & (before[4] != 7))  # other objects keep theirs
    np.testing.assert_array_equal(labels.data[:4], before[:4])
    np.testing.assert_array_equal(labels.data[5:], before[5:])
    assert widget.session.prompts == [] and len(widget.layers["box"].data) == 0
    assert widget.objects.selected_id() == 5
    redrawn = np.array(labels.data, copy=True)
    qtbot.mouseClick(widget.propagation.options.buttons[1], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.propagation.active, timeout=30_000)
    assert "Re-propagated object 5" in widget.message, widget.message
    from napari_qlora_minisam.volume import box_from_mask

    expected = box_fill(np.zeros((40, 40)), None, box_from_mask(redrawn[4] == 5))[0]  # from the redrawn outline
    np.testing.assert_array_equal(labels.data[5] == 5, expected)
    assert not np.array_equal(labels.data[5], before[5])
    labels.undo()  # the re-propagation, then the redraw: one step each
    np.testing.assert_array_equal(labels.data, redrawn)
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)


def test_redraw_asks_for_an_object_first(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    widget.set_image_layer(viewer.add_image(np.random.rand(40, 40).astype(np.float32), name="img"))
    wait_idle(qtbot, widget)
    assert not widget.ui.redraw.isEnabled()  # no objects layer yet
    options = widget.propagation.options  # a 2D image: nothing to re-propagate or erase above / below
    assert not any(b.isEnabled() for b in (*options.buttons.values(), *options.erase_buttons.values()))
    widget.redraw()
    assert "commit an object" in widget.message, widget.message
    widget.commit()  # the same message path as a commit with nothing prompted
    assert "Nothing to commit" in widget.message, widget.message


def test_redraw_pressed_before_its_preview_is_ready_redraws_the_object_picked_then(corrected_volume, qtbot):
    from napari_qlora_minisam.prompts import box_to_rectangle

    widget, labels = corrected_volume
    before = np.array(labels.data, copy=True)
    widget.layers["box"].add_rectangles([box_to_rectangle(np.array([18, 18, 33, 33]), 4)])
    widget.redraw()  # the box's preview is still being decoded: the redraw is owed
    assert "as soon as the preview" in widget.message, widget.message
    labels.selected_label = 7  # picking another label meanwhile does not change the object redrawn
    qtbot.waitUntil(lambda: "Redrew object 5" in widget.message, timeout=30_000)
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(labels.data == 7, before == 7)
    np.testing.assert_array_equal(labels.data[5:], before[5:])
    assert widget.session.commit_into is None and not widget.session.commit_requested


def test_erase_above_takes_a_leak_off_in_one_undo_step(corrected_volume, qtbot):
    widget, labels = corrected_volume  # object 5 on every slice, the view on slice 4
    assert all(b.isEnabled() for b in widget.propagation.options.erase_buttons.values())
    before = np.array(labels.data, copy=True)
    qtbot.mouseClick(widget.propagation.options.erase_buttons[1], Qt.MouseButton.LeftButton)
    assert "Erased object 5 above slice 4: 4 slices (slices 5–8)" in widget.message, widget.message
    assert not (labels.data[5:] == 5).any() and (labels.data[6] == 7).sum() == 36
    np.testing.assert_array_equal(labels.data[:5], before[:5])
    assert widget.objects.rows[0][2] == "0–4"  # the table follows
    qtbot.mouseClick(widget.propagation.options.erase_buttons[1], Qt.MouseButton.LeftButton)
    assert "nothing erased" in widget.message, widget.message
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)


def test_repropagate_stops_before_a_slice_the_user_redrew(corrected_volume, qtbot):
    from tests._qt.helpers import draw_boxes

    widget, labels = corrected_volume  # object 5 on every slice, none of them set by hand
    viewer = widget.viewer
    viewer.dims.set_current_step(0, 6)
    wait_idle(qtbot, widget)
    draw_boxes(qtbot, widget, [18, 18, 33, 33], z=6)
    widget.redraw()
    assert "Redrew object 5" in widget.message, widget.message
    redrawn = np.array(labels.data, copy=True)
    viewer.dims.set_current_step(0, 4)
    wait_idle(qtbot, widget)
    qtbot.mouseClick(widget.propagation.options.buttons[1], Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.propagation.active, timeout=30_000)
    assert "1 slice (slice 5)" in widget.message and "before slice 6, which you set by hand" in widget.message, \
        widget.message
    np.testing.assert_array_equal(labels.data[6:], redrawn[6:])  # the redrawn slice and those past it: kept
    np.testing.assert_array_equal(labels.data[:5], redrawn[:5])
    viewer.dims.set_current_step(0, 5)
    wait_idle(qtbot, widget)
    qtbot.mouseClick(widget.propagation.options.buttons[1], Qt.MouseButton.LeftButton)
    assert "nothing to re-propagate" in widget.message and not widget.propagation.active, widget.message


def test_redraw_waits_for_a_running_propagation(corrected_volume, qtbot):
    from tests._qt.helpers import draw_boxes

    widget, labels = corrected_volume
    draw_boxes(qtbot, widget, [18, 18, 33, 33], z=4)
    before = np.array(labels.data, copy=True)
    qtbot.mouseClick(widget.propagation.options.buttons[1], Qt.MouseButton.LeftButton)
    assert widget.propagation.active and not widget.ui.redraw.isEnabled()
    widget.redraw()  # Shift+R meanwhile: the run's result, written when it ends, would take the slice back
    assert "propagation is running" in widget.message, widget.message
    np.testing.assert_array_equal(labels.data[4], before[4])
    qtbot.waitUntil(lambda: not widget.propagation.active, timeout=30_000)
    wait_idle(qtbot, widget)
    assert widget.ui.redraw.isEnabled()


def test_slices_text_lists_the_runs_round_the_committed_slice():
    from napari_qlora_minisam._qt.propagation import slices_text

    assert slices_text([]) == "0 slices"
    assert slices_text([12], "more ") == "1 more slice (slice 12)"
    assert slices_text([18, 19, 20, 21, 22], "more ") == "5 more slices (slices 18–22)"
    # both ways from slice 8: not "6–10", which would count the committed slice
    assert slices_text([6, 7, 9, 10], "more ") == "4 more slices (slices 6–7, 9–10)"
    assert slices_text([3, 5]) == "2 slices (slices 3, 5)"
