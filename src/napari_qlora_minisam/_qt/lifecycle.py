"""Knowing when the widget's work must end: its dock closed, or napari's window closing.

napari takes a closed dock's widget out of the window (its parent becomes ``None``); napari's main window
receives a ``Close`` event when the viewer closes. Both are plain Qt, watched here on the widget and on
each of its ancestors (a dock is given its widget before the dock is put into the main window), so the
widget can stop its workers before Qt deletes the objects they report to.
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject


class CloseWatcher(QObject):
    """Calls ``on_close`` once when ``widget`` leaves its window or that window closes."""

    def __init__(self, widget, on_close):
        super().__init__(widget)
        self.widget = widget
        self.on_close = on_close
        self.closed = False
        self._docked = False
        self._watched: list = []
        self._watch()

    def _watch(self) -> None:
        """Filter the widget and its ancestors (the top one is the window whose closing ends the work)."""
        for obj in self._watched:
            obj.removeEventFilter(self)
        self._watched, node = [], self.widget
        while node is not None:
            node.installEventFilter(self)
            self._watched.append(node)
            node = node.parentWidget()
        self._docked = self._docked or len(self._watched) > 1

    def eventFilter(self, obj, ev) -> bool:
        kind = ev.type()
        if kind == QEvent.Type.ParentChange:
            if obj is self.widget and self.widget.parentWidget() is None and self._docked:
                self.close()  # napari took the widget out of its dock (the dock's close button)
            else:
                self._watch()
        elif kind == QEvent.Type.Close and obj is self._watched[-1] and obj is not self.widget:
            self.close()
        return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for obj in self._watched:
                obj.removeEventFilter(self)
            self._watched = []
            self.on_close()
