"""Mouse gestures on the prompt layers, seen from their press, so a preview can be ready when they end.

napari tells the widget of an edit when the mouse button comes up: a click's point is added at the release
(a press that turns into a drag adds nothing), and a drawn or moved box emits its data event at the release.
The button is down for ~80-150 ms in a click and longer in a drag, several times a decode of the bundled
model (~15 ms). So the widget watches the gesture itself:

- at a click's press it decodes the prompts the release will make if the click ends where it began, and
  keeps the result aside unpainted (``predicted_click``);
- while a drag pauses it decodes and paints the prompts as they are at that moment.

When the release's data event arrives its prompts have usually been decoded already, and the preview is
painted at once. Any other outcome (a release elsewhere, another polarity, a drag still moving) makes a
prompt key of its own and is decoded as usual: a wrong guess costs one spare decode, never a wrong mask.
"""

from __future__ import annotations

import weakref

import numpy as np

from ..prompts import PROMPT_FEATURE
from .napari_compat import put_drag_callback_first, remove_drag_callback


def predicted_click(layer, event) -> tuple[np.ndarray, list] | None:
    """The points layer's ``(data, polarities)`` after the click this press starts; ``None`` if it adds no point.

    Mirrors napari's add mode, which puts the point at ``world_to_data(event.position)`` of the *release*, with
    the layer's feature defaults; a click ends where it began, so the press's position stands in for it.
    """
    if str(layer.mode) != "add":
        return None
    coords = layer.world_to_data(event.position)
    data = np.append(layer.data, np.atleast_2d(coords), axis=0)
    polarities = layer.features[PROMPT_FEATURE].tolist() if len(layer.data) else []
    polarities.append(layer.feature_defaults[PROMPT_FEATURE].iloc[0])
    return data, polarities


def install(layer, owner) -> None:
    """Tell ``owner`` of each gesture in ``layer``, before napari's own mode callback handles the event.

    ``owner`` has ``gesture_pressed(layer, event)``, ``gesture_moved(layer)`` and ``gesture_released(layer)``;
    it is held weakly, so a closed widget is not kept alive by the layer. A previous owner's callback is
    replaced: one widget drives a prompt layer.
    """
    ref = weakref.ref(owner)

    def minisam_gesture(layer, event):
        if (watcher := ref()) is not None:
            watcher.gesture_pressed(layer, event)
        yield
        while event.type == "mouse_move":
            if (watcher := ref()) is not None:
                watcher.gesture_moved(layer)
            yield
        if (watcher := ref()) is not None:
            watcher.gesture_released(layer)

    # First, so that at a release it ends before napari's callback emits the data event, and at a press it
    # runs before napari adds anything (see napari_compat).
    put_drag_callback_first(layer, minisam_gesture)


def uninstall(layer) -> None:
    """Stop watching ``layer`` (the widget closed)."""
    remove_drag_callback(layer)
