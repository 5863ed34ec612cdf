"""GUI test helpers: wait for the widget's workers with qtbot, compare masks."""

from __future__ import annotations

import numpy as np

# Under Xvfb with 5 other jobs on 2 cores an embedding can take 10 s; these are ceilings, not timings.
MODEL_TIMEOUT_MS = 300_000
STEP_TIMEOUT_MS = 120_000


def add_sample(viewer, sample_fn):
    layers = []
    for data, kwargs, kind in sample_fn():
        layers.append(getattr(viewer, f"add_{kind}")(data, **kwargs))
    return layers


def wait_idle(qtbot, widget, timeout=STEP_TIMEOUT_MS):
    qtbot.waitUntil(lambda: widget.is_idle, timeout=timeout)


def wait_preview(qtbot, widget, painted_before, timeout=STEP_TIMEOUT_MS):
    """Until a preview newer than ``painted_before`` is on screen and nothing is queued."""
    qtbot.waitUntil(lambda: widget.previews_painted > painted_before and widget.is_idle, timeout=timeout)


def draw_boxes(qtbot, widget, *boxes, z=None):
    """Add boxes (x0, y0, x1, y1) to the picked image's box layer in one edit; wait for their preview."""
    from napari_qlora_minisam.prompts import box_to_rectangle

    before = widget.previews_painted
    widget.layers["box"].add_rectangles([box_to_rectangle(b, z) for b in boxes])
    wait_preview(qtbot, widget, before)


def press_key(viewer, key):
    """A key press resolved as napari resolves it: the active layer's bindings first, then the viewer's."""
    from napari.utils.key_bindings import KeymapHandler

    handler = KeymapHandler()
    active = viewer.layers.selection.active
    handler.keymap_providers = [viewer] if active is None else [active, viewer]
    handled = handler.press_key(key)
    handler.release_key(key)
    return handled


def press(layer, position, pos=(0, 0)):
    """A mouse press at ``position`` (world) through napari's own layer mouse bindings."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks

    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=position, pos=np.array(pos)))


def move(layer, position, pos=(0, 0)):
    """A mouse move with the button down (a drag) through napari's own layer mouse bindings."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_move_callbacks

    mouse_move_callbacks(layer, read_only_mouse_event(type="mouse_move", is_dragging=True, position=position,
                                                      pos=np.array(pos)))


def release(layer, position, pos=(0, 0)):
    """The release; ``pos`` is the canvas position: napari adds no point when it is far from the press's (a drag)."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_release_callbacks

    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", position=position, pos=np.array(pos),
                                                         is_dragging=True))

