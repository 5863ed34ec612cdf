"""A click's prompts, known at the press: the widget decodes them while the mouse button is still down.

napari's points layer adds a point when the button comes up, not when it goes down (a press that turns
into a drag adds nothing). A user's click keeps the button down ~80-150 ms, several times a decode of the
bundled model (~15 ms). So at the press the widget decodes the prompts the release will make if the click
ends where it began, and keeps the result aside unpainted. When the release adds exactly that point, the
preview is painted at once. Any other outcome (a drag, a release elsewhere, another polarity) makes a
prompt key of its own and is decoded as usual: a wrong guess costs one spare decode, never a wrong mask.
"""

from __future__ import annotations

import weakref

import numpy as np

from ..prompts import PROMPT_FEATURE

_MARK = "_minisam_click_ahead"


def predicted_click(layer, event) -> tuple[np.ndarray, list] | None:
    """The points layer's ``(data, polarities)`` after the click this press starts; ``None`` if it adds no point.

    Mirrors napari's add mode: the point goes to ``world_to_data(event.position)`` of the release, with the
    layer's feature defaults.
    """
    if str(layer.mode) != "add":
        return None
    coords = layer.world_to_data(event.position)
    data = np.append(layer.data, np.atleast_2d(coords), axis=0)
    polarities = layer.features[PROMPT_FEATURE].tolist() if len(layer.data) else []
    polarities.append(layer.feature_defaults[PROMPT_FEATURE].iloc[0])
    return data, polarities


def install(layer, on_press) -> None:
    """Call ``on_press(layer, event)`` on each press in ``layer``, before napari's own mode callback.

    A previous widget's callback is replaced (one widget drives a points layer). ``on_press`` is held
    weakly, so a closed widget is not kept alive by the layer.
    """
    ref = weakref.WeakMethod(on_press)

    def click_ahead(layer, event):  # a plain function: napari calls it at the press only
        callback = ref()
        if callback is not None:
            callback(layer, event)

    setattr(click_ahead, _MARK, True)
    callbacks = layer.mouse_drag_callbacks
    callbacks[:] = [cb for cb in callbacks if not getattr(cb, _MARK, False)]
    callbacks.insert(0, click_ahead)  # napari appends its mode callbacks: this one stays first
