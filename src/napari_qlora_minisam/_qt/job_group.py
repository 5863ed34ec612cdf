"""A form group for one background job: its start button, Cancel and a progress bar that shows while it runs.

The precompute and segment-everything groups are both one of these; each adds what its job starts and reports.
"""

from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QProgressBar, QPushButton, QVBoxLayout


class JobGroup(QGroupBox):
    """``start_button`` calls ``start``, ``cancel_button`` calls ``cancel``; placed above the embedding bar."""

    running_changed = Signal(bool)  # set_running's argument: the form greys out what must wait for the job

    def __init__(self, widget, title: str, start_text: str, tooltip: str):
        super().__init__(title)
        self.widget = widget
        self.start_button = QPushButton(start_text)
        self.start_button.setToolTip(tooltip)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setVisible(False)
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(self.start_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        widget.ui.add_group(self)  # last in the form, above the embedding bar and the message line

    def start(self) -> None:
        raise NotImplementedError

    def cancel(self) -> None:
        raise NotImplementedError

    def show_progress(self, done: int, total: int, text: str) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.progress.setFormat(text)
        self.progress.setVisible(True)

    def set_running(self, running: bool) -> None:
        """Buttons for a job that runs (Cancel enabled) or has ended (progress hidden)."""
        self.start_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.running_changed.emit(running)
        if not running:
            self.progress.setVisible(False)
