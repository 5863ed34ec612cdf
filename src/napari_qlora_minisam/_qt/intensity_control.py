"""The form's Intensity box applied to the picked image, including "as displayed": the image layer's contrast
limits, followed as the user adjusts them (one re-embedding per adjustment, not per slider step)."""

from __future__ import annotations

from qtpy.QtCore import QObject, QTimer, Signal

from ..intensity import display_range
from .controls import AS_DISPLAYED, INTENSITY_CHOICES

SETTLE_MS = 300  # contrast slider drags settle this long before the model sees the new window


class IntensityControl(QObject):
    """Sets the session's intensity policy from the combo box; ``changed`` when previews must be redone."""

    changed = Signal()
    warning = Signal(str)

    def __init__(self, combo, parent=None):
        super().__init__(parent)
        self.combo = combo
        self.binding = None
        self._settle = QTimer(self, singleShot=True, interval=SETTLE_MS)
        self._settle.timeout.connect(lambda: self.apply(self.binding))
        combo.currentIndexChanged.connect(lambda _i: self.apply(self.binding))

    def apply(self, binding, announce: bool = True) -> None:
        """Give ``binding``'s session the policy the box shows (and follow its contrast limits if "as displayed")."""
        if self.binding is not None and self.binding is not binding:
            self.binding.image.events.contrast_limits.disconnect(self._contrast_moved)
        self.binding = binding
        if binding is None:
            return
        choice, image = INTENSITY_CHOICES[self.combo.currentText()], binding.image
        if choice == AS_DISPLAYED:
            choice = display_range(*image.contrast_limits)
            image.events.contrast_limits.connect(self._contrast_moved)  # napari skips a callback connected twice
        else:
            image.events.contrast_limits.disconnect(self._contrast_moved)
        warning = binding.session.set_intensity(choice)
        if warning:
            self.warning.emit(warning)
        if announce:
            self.changed.emit()

    def _contrast_moved(self, event=None) -> None:
        self._settle.start()

    def close(self) -> None:
        self._settle.stop()
        self.apply(None)
