"""Holding back the window's list repaints while a preview decodes, so one edit costs one frame.

An edit of a prompt layer makes napari repaint that layer's row in the layer list (a "data changed" and
a new thumbnail). The canvas is a ``QOpenGLWidget``, so Qt then composes the *whole window* through
OpenGL before it shows the new row. With software OpenGL (Xvfb, virtual machines, remote desktops: the
hospital workstation case) that composition costs ~25 ms of C++ that holds Python's GIL, and it lands
exactly while the worker thread decodes the preview for the same edit: the decode and the frame then
take turns instead of overlapping (docs/benchmarks.md). The widget holds the list's repaints from the edit
until shortly after the preview is painted, so the row comes in a frame of its own after the one that shows
the preview. The hold is bounded by a timer, so a slow decode (a first embedding) never leaves the list frozen.
"""

from __future__ import annotations

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QAbstractItemView, QWidget


class RepaintHold:
    """Suspend repaints of the item views (napari's layer list) of ``owner``'s window, up to ``max_ms``."""

    def __init__(self, owner: QWidget, max_ms: int = 300):
        self._owner = owner
        self._max_ms = max_ms
        self._held: list[QWidget] = []
        self._views: tuple = ((), [])  # (window signature, its item views): see _window_views
        self._timer = QTimer(owner)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.release)

    @property
    def held(self) -> tuple:
        return tuple(self._held)

    def hold(self) -> None:
        """Stop the window's visible item views (not the owner's own) from repainting; restarts the bound."""
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
        """The window's item views outside the owner, found again only when the window gains or loses a child.

        Walking napari's ~850 widgets costs ~1.4 ms on the Qt thread, right when the decode starts; new
        views (another plugin's dock) come with a new direct child of the main window.
        """
        sig = (id(window), len(window.children()))
        if self._views[0] != sig:
            self._views = (sig, [v for v in window.findChildren(QAbstractItemView)
                                 if not self._owner.isAncestorOf(v)])
        return self._views[1]

    def release_after(self, ms: int) -> None:
        """Release in ``ms`` (unless held again meanwhile): after the frame that is about to be drawn."""
        if self._held:
            self._timer.start(ms)

    def release(self) -> None:
        """Let the held views repaint again; Qt repaints them in the next frame."""
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
