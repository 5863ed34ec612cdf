"""Holding back repaints while a preview decodes, so one edit costs one frame.

An edit of a prompt layer makes napari repaint the canvas (the new point, the moved box) and that layer's
row in the layer list (a "data changed" and a new thumbnail). The canvas is a ``QOpenGLWidget``, so Qt then
composes the *whole window* through OpenGL. With software OpenGL (Xvfb, virtual machines, remote desktops:
the hospital workstation case) that composition costs ~20-25 ms, and it runs inside napari's main-window
``event()`` override, that is in C++ called from Python, holding Python's GIL. It lands exactly while the
worker thread decodes the preview for the same edit, and the decoder's ~150 torch calls each need the GIL
back: the decode and the frame then take turns instead of overlapping (docs/plugin.md).

So the widget holds the canvas from the edit until the preview is painted, and the list until shortly
after: the new prompt and its mask come in one frame, and the list's row in a frame of its own after it.
Each hold is bounded by a timer, so a slow decode (a first embedding) never leaves anything frozen.
"""

from __future__ import annotations

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QAbstractItemView, QOpenGLWidget, QWidget


class RepaintHold:
    """Suspend repaints of the widgets of ``kinds`` in ``owner``'s window (not the owner's own), up to ``max_ms``.

    The default kind is the item views (napari's layer list); ``(QOpenGLWidget,)`` holds napari's canvas.
    """

    def __init__(self, owner: QWidget, max_ms: int = 300, kinds: tuple = (QAbstractItemView,)):
        self._owner = owner
        self._max_ms = max_ms
        self._kinds = tuple(kinds)
        self._held: list[QWidget] = []
        self._views: tuple = ((), [])  # (window signature, its widgets of the held kinds): see _window_views
        self._timer = QTimer(owner)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.release)

    @property
    def held(self) -> tuple:
        return tuple(self._held)

    def hold(self) -> None:
        """Stop the window's visible widgets of the held kinds from repainting; restarts the bound."""
        self._timer.start(self._max_ms)
        if self._held:
            return
        window = self._owner.window()
        if window is None or window is self._owner:
            return  # not docked in a viewer window: nothing of napari's to hold
        self._held = [v for v in self._window_views(window) if _shown(v)]
        for view in self._held:
            view.setUpdatesEnabled(False)

    def _window_views(self, window) -> list:
        """The window's widgets of the held kinds outside the owner, found again only when the window gains or loses a child.

        Walking napari's hundreds of widgets costs the Qt thread time right when the decode starts; new
        views (another plugin's dock) come with a new direct child of the main window.
        """
        sig = (id(window), len(window.children()))
        if self._views[0] != sig:
            self._views = (sig, [v for kind in self._kinds for v in window.findChildren(kind)
                                 if not self._owner.isAncestorOf(v)])
        return self._views[1]

    def release_after(self, ms: int) -> None:
        """Release in ``ms`` (unless held again meanwhile): after the frame that is about to be drawn."""
        if self._held:
            self._timer.start(ms)

    def release(self) -> None:
        """Let the held widgets repaint again; Qt repaints them in the next frame (re-enabling updates asks for it)."""
        self._timer.stop()
        views, self._held = self._held, []
        for view in views:
            try:
                view.setUpdatesEnabled(True)
            except RuntimeError:  # the view was deleted meanwhile (viewer closed)
                pass


def _shown(view) -> bool:
    try:
        return view.isVisible() and view.updatesEnabled()
    except RuntimeError:  # deleted since it was found
        return False


def canvas_hold(owner: QWidget, max_ms: int) -> RepaintHold:
    """A hold of the window's OpenGL canvases (napari's), found with plain Qt rather than napari's private API."""
    return RepaintHold(owner, max_ms=max_ms, kinds=(QOpenGLWidget,))
