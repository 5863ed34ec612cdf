"""The objects panel: a table of the picked image's committed objects (id, name, slices, size).

Rows come from the session (``AnnotationSession.objects``), which reads the label image itself, so brush
edits and undo show up as they are. Names are edited in place and stored in the labels layer's
``features``; selecting a row selects that label in the objects layer.
"""

from __future__ import annotations

from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHeaderView,
    QStyledItemDelegate,
    QTableWidget,
    QTableWidgetItem,
)

from ..errors import MiniSamError

COLUMNS = ("id", "name", "slices", "size")
REFRESH_DELAY_MS = 150  # one recount after a burst of edits (a brush stroke emits many events)


class _NameEditor(QStyledItemDelegate):
    """Names are typed, or picked from the image's structure names (its dataset's classes)."""

    def __init__(self, panel):
        super().__init__(panel.table)
        self.panel = panel

    def createEditor(self, parent, option, index):  # noqa: N802 - Qt's name
        combo = QComboBox(parent)
        combo.setEditable(True)
        session = self.panel.session
        combo.addItems(list(session.class_names) if session is not None else [])
        return combo

    def setEditorData(self, editor, index):  # noqa: N802
        editor.setCurrentText(index.data())

    def setModelData(self, editor, model, index):  # noqa: N802
        model.setData(index, editor.currentText())


class ObjectsPanel(QObject):
    """Binds a ``QTableWidget`` to the picked image's session."""

    refreshed = Signal()

    def __init__(self, table: QTableWidget, status, parent=None):
        super().__init__(parent)
        self.table = table
        self.session = None
        self.status = status
        self._filling = False
        table.setColumnCount(len(COLUMNS))
        table.setHorizontalHeaderLabels(["id", "name", "slices", "size"])
        table.verticalHeader().setVisible(False)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        header = table.horizontalHeader()
        for col in range(len(COLUMNS)):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.Stretch if col == 1
                                        else QHeaderView.ResizeMode.ResizeToContents)
        table.setItemDelegateForColumn(1, _NameEditor(self))
        table.itemChanged.connect(self._renamed)
        table.itemSelectionChanged.connect(self._selected)
        self._timer = QTimer(self, singleShot=True, interval=REFRESH_DELAY_MS)
        self._timer.timeout.connect(self.refresh)

    def show_session(self, session) -> None:
        self.session = session
        self.refresh()

    def schedule_refresh(self) -> None:
        self._timer.start()

    def refresh(self) -> None:
        """Fill the table from the label image as it is now."""
        records = [] if self.session is None else self.session.objects()
        depth = 0 if self.session is None else self.session.depth
        self._filling = True
        try:
            self.table.setRowCount(len(records))
            for row, rec in enumerate(records):
                cells = (str(rec.id), rec.name, rec.slices_text(), rec.size_text(depth))
                for col, text in enumerate(cells):
                    item = QTableWidgetItem(text)
                    item.setData(Qt.ItemDataRole.UserRole, rec.id)
                    if col != 1:
                        item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                    self.table.setItem(row, col, item)
        finally:
            self._filling = False
        self.refreshed.emit()

    @property
    def rows(self) -> list[tuple[str, ...]]:
        """The table's text, row by row (what the user reads)."""
        return [tuple(self.table.item(r, c).text() for c in range(len(COLUMNS))) for r in range(self.table.rowCount())]

    def selected_id(self) -> int | None:
        items = self.table.selectedItems()
        return None if not items else int(items[0].data(Qt.ItemDataRole.UserRole))

    def select(self, label_id: int) -> None:
        for row in range(self.table.rowCount()):
            if int(self.table.item(row, 0).data(Qt.ItemDataRole.UserRole)) == label_id:
                self.table.selectRow(row)
                return

    def _renamed(self, item) -> None:
        if self._filling or item.column() != 1 or self.session is None:
            return
        try:
            self.session.rename(int(item.data(Qt.ItemDataRole.UserRole)), item.text())
        except MiniSamError as exc:
            self.status.error("objects", exc)
            self.refresh()

    def delete_selected(self) -> None:
        """Erase the selected object from the label image (one undo step; its name is kept for a redo)."""
        label_id = self.selected_id()
        if label_id is None or self.session is None:
            self.status.error("objects", "Select an object in the table first.")
            return
        pixels = self.session.delete(label_id)
        self.refresh()
        self.status.info(f"Deleted object {label_id} ({pixels} px); Ctrl+Z brings it back.", clears=("objects",))

    def _selected(self) -> None:
        label_id = self.selected_id()
        if label_id is not None and self.session is not None and self.session.labels is not None:
            self.session.labels.selected_label = label_id
