"""What the widget assumes about napari beyond its documented API, in one place.

``tests/_qt/test_napari_compat.py`` checks each assumption against the installed napari and fails with a
message naming the one that broke, so a napari upgrade that changes them is caught before a user sees
a preview go missing.

- A layer's ``mouse_drag_callbacks`` list is public, but its *order* is an implementation detail: napari
  appends the callback of the layer's mode after ours when the mode changes, so a callback put first sees
  each press before napari adds a point or starts a box, and each release before napari emits the data event.
- napari's add mode adds a point at the *release*, at ``world_to_data`` of that event's position, with the
  layer's ``feature_defaults`` (``gestures.predicted_click`` relies on it).
- napari's canvas is a ``QOpenGLWidget`` inside the main window (``repaint_hold.canvas_hold`` finds it
  with plain Qt).
- napari hands a plugin widget its viewer wrapped in a proxy (``unwrap``).
"""

from __future__ import annotations

MARK = "_minisam_gesture"


def put_drag_callback_first(layer, callback) -> None:
    """Make ``callback`` the first of ``layer``'s drag callbacks, replacing one put there before."""
    setattr(callback, MARK, True)
    remove_drag_callback(layer)
    layer.mouse_drag_callbacks.insert(0, callback)


def remove_drag_callback(layer) -> None:
    callbacks = layer.mouse_drag_callbacks
    callbacks[:] = [cb for cb in callbacks if not getattr(cb, MARK, False)]


def has_drag_callback_first(layer) -> bool:
    callbacks = layer.mouse_drag_callbacks
    return bool(callbacks) and getattr(callbacks[0], MARK, False)


def unwrap(viewer):
    """The viewer behind napari's ``PublicOnlyProxy`` (napari hands plugin widgets a proxy of it).

    The proxy wraps every object read through it anew, so a layer read from ``viewer.layers`` is never
    ``is``-identical to the same layer met elsewhere (in an event, a mouse callback); the widget compares
    layers by identity. The proxy's ``__wrapped__`` is wrapt's documented attribute; no private napari
    attribute is read through it.
    """
    return getattr(viewer, "__wrapped__", viewer)
