"""Viewer-wide keyboard shortcuts of the widget, and the table of them shown in its help.

Bound on the viewer with napari's own ``bind_key``, so they work whatever layer is active, except where
that layer's own napari shortcut takes the key. None of these keys is a napari shortcut of points, shapes
or labels layers; ``C`` is napari's auto-contrast of image layers, so it is also bound on the images being
segmented (napari's auto-contrast stays in the layer controls). Closing the widget restores what was there.
"""

from __future__ import annotations

import weakref

# (key, widget method (a dotted path from the widget), what it does)
SHORTCUTS = (
    ("C", "commit", "commit the previewed objects (each box is one object)"),
    ("Shift-C", "clear_prompts", "clear the prompts on this slice"),
    ("Shift-R", "redraw", "redraw the selected object on this slice from the preview"),
    ("N", "tools.toggle_negative", "next clicks negative / positive"),
    ("Shift-N", "tools.flip_selected_points", "flip the polarity of the selected clicks"),
    ("Q", "tools.toggle_prompt_mode", "switch between drawing boxes and clicking points"),
    (".", "tools.next_slice", "next slice (and embed the one after it)"),
    (",", "tools.previous_slice", "previous slice (and embed the one before it)"),
    ("G", "propagate", "propagate the object through the stack (3D)"),
    ("Control-Z", "undo", "undo (napari's labels history: commits and brush strokes)"),
    ("Control-Shift-Z", "redo", "redo"),
    ("Control-Right", "series.next_case", "next case of the image series (this one's objects saved)"),
    ("Control-Left", "series.previous_case", "previous case of the image series"),
)
IMAGE_KEYS = ("C",)  # keys napari's image layers bind themselves


def _caller(widget, method: str):
    ref = weakref.ref(widget)

    def call(_target=None):
        if (target := ref()) is not None:
            for name in method.split("."):
                target = getattr(target, name)
            target()

    call.__name__ = f"minisam_{method}"
    return call


class Shortcuts:
    """Binds :data:`SHORTCUTS` on a viewer (and ``C`` on the images being segmented) until :meth:`unbind`."""

    def __init__(self, viewer, widget):
        self.viewer = viewer
        self._widget = widget
        self._previous: dict[str, object] = {}
        self._images: list = []
        for key, method, _ in SHORTCUTS:
            self._previous[key] = viewer.bind_key(key, _caller(widget, method), overwrite=True)

    def bind_image(self, layer) -> None:
        if layer in self._images:
            return
        for key, method, _ in SHORTCUTS:
            if key in IMAGE_KEYS:
                layer.bind_key(key, _caller(self._widget, method), overwrite=True)
        self._images.append(layer)

    def unbind(self) -> None:
        for key, previous in self._previous.items():
            self.viewer.bind_key(key, previous, overwrite=True)
        for layer in self._images:
            for key in IMAGE_KEYS:
                layer.bind_key(key, None)
        self._previous, self._images = {}, []


def help_html() -> str:
    rows = "".join(f"<tr><td><b>{key.replace('Control', 'Ctrl')}</b></td><td>{text}</td></tr>"
                   for key, _, text in SHORTCUTS)
    return f"<table cellspacing='1'>{rows}</table>"
