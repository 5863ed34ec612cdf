"""The form's *Image series* group: step through a folder of images, each case's objects saved on leaving it.

The state (cases, the one open, where objects go, which are done) is an :class:`~..series.ImageSeries`;
this panel moves layers. Leaving a case saves its objects layer (only if it changed, see ``series.py``),
then puts the next case's image where the last one was, with its objects layer made from the saved file,
has the widget pick it, and removes the last case's image and objects layer, so memory stays that of one
case (the prompt layers are lent to the new image, not made again). Files are read and written on the Qt
thread, in one short pause per switch: the viewer cannot show the next case before it is read anyway, and a
worker would let the user edit a case while it is being saved (docs/plugin.md, *Image series*, gives times).
If the case cannot be saved or the next one cannot be read, the message says why and the case stays open.
Closing the widget or napari, or deleting the case's image or objects layer, saves the case first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (QComboBox, QFileDialog, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                            QVBoxLayout)

from ..annotation.objects import features_with_names, names_from_features
from ..series import ImageSeries, SeriesError
from . import layers as L

FORMAT_CHOICES = {"TIFF (.tif)": "tiff", "NIfTI (.nii.gz)": "nifti"}  # series.FORMATS, as the form names them


class SeriesPanel(QGroupBox):
    """Open series…, the output folder and format, Previous / Next and the progress."""

    def __init__(self, widget):
        super().__init__("Image series")
        self.widget = widget
        self.viewer = widget.viewer
        self.series: ImageSeries | None = None
        self.image = None  # the open case's image layer
        self._moving = False  # layers this panel removes are not the user's deletions
        self._saved_note = ""  # what the last save did, said again with the case opened next
        self.open_button = QPushButton("Open series…")
        self.open_button.setToolTip("A folder of images (TIFF, PNG, NIfTI) or of DICOM series folders, "
                                    "annotated one case at a time; label files (*_seg*, *_label*, *_mask*) "
                                    "are skipped.")
        self.output = QLineEdit()
        self.output.setPlaceholderText("next to each image")
        self.output.setToolTip("Folder for the objects files (<case>_objects.tif / .nii.gz); empty: next to "
                               "each image.")
        self.browse_output = QPushButton("…")
        self.browse_output.setMaximumWidth(32)
        self.format = QComboBox()
        self.format.addItems(list(FORMAT_CHOICES))
        self.format.setToolTip("NIfTI keeps the image's affine (overlays it in ITK-SNAP / 3D Slicer); TIFF "
                               "keeps the voxel size in mm.")
        self.previous_button = QPushButton("◀ Previous")
        self.next_button = QPushButton("Next ▶")
        self.previous_button.setToolTip("Save this case's objects and open the previous case (Ctrl+Left).")
        self.next_button.setToolTip("Save this case's objects and open the next case (Ctrl+Right).")
        self.progress = QLabel("no series open")
        self.progress.setWordWrap(True)
        layout = QVBoxLayout(self)
        for widgets in ((self.open_button, self.format), (QLabel("Save to"), self.output, self.browse_output),
                        (self.previous_button, self.next_button)):
            row = QHBoxLayout()
            for w in widgets:
                row.addWidget(w)
            layout.addLayout(row)
        layout.addWidget(self.progress)
        self.open_button.clicked.connect(self.choose_folder)
        self.browse_output.clicked.connect(self.choose_output)
        self.output.editingFinished.connect(self._apply_output)
        self.format.currentIndexChanged.connect(self._apply_output)
        self.previous_button.clicked.connect(self.previous_case)
        self.next_button.clicked.connect(self.next_case)
        self.viewer.layers.events.removing.connect(self._on_removing)
        widget.ui.add_group(self, after=widget.ui.guidance)  # the first thing a series needs
        self._show_progress()

    # -- choosing -------------------------------------------------------------------------------------
    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a series: the folder holding the images")
        if folder:
            self.open_folder(folder)

    def choose_output(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for the objects files")
        if folder:
            self.output.setText(folder)
            self._apply_output()

    def output_settings(self) -> tuple:
        return self.output.text().strip() or None, FORMAT_CHOICES[self.format.currentText()]

    def _apply_output(self, *_) -> None:
        if self.series is not None:
            output, self.series.fmt = self.output_settings()
            self.series.output_dir = None if output is None else Path(output)
            self._show_progress()

    def open_folder(self, folder, output_dir=None, fmt: str | None = None) -> bool:
        """Open the series in ``folder`` at its first case without objects (``output_dir``/``fmt`` set the form)."""
        if output_dir is not None:
            self.output.setText(str(output_dir))
        if fmt is not None:
            self.format.setCurrentIndex(list(FORMAT_CHOICES.values()).index(fmt))
        output, fmt = self.output_settings()
        try:
            series = ImageSeries.from_folder(folder, output_dir=output, fmt=fmt)
        except SeriesError as exc:
            self.widget.status.error("series", exc)
            return False
        if not self.save_current():
            return False
        previous, self.series = self.series, series
        if not self._open(series.first_not_done()):
            self.series = previous
            self._show_progress()
            return False
        return True

    # -- moving ---------------------------------------------------------------------------------------
    def next_case(self) -> bool:
        return self._step(+1)

    def previous_case(self) -> bool:
        return self._step(-1)

    def go(self, i: int) -> bool:
        """Save the open case and open case ``i`` (0-based); ``False`` (the case stays open) on any error."""
        if self.series is None:
            self.widget.status.error("series", "Open a series first (Open series… in the Image series group).")
            return False
        if not 0 <= i < len(self.series):
            self.widget.status.info(f"No case {i + 1}: the series has {len(self.series)}.")
            return False
        return self.save_current() and self._open(i)

    def _step(self, step: int) -> bool:
        return self.go((self.series.index if self.series is not None else 0) + step)

    def _open(self, i: int) -> bool:
        try:
            case = self.series.load(i)
        except SeriesError as exc:
            self._saved_note = ""
            self.widget.status.error("series", exc)
            return False
        self._swap_layers(case)
        self.series.go(i)
        done = " (objects reloaded)" if case.objects is not None else ""
        note, self._saved_note = self._saved_note, ""
        self.widget.status.info(f"{note}Case {i + 1}: {self.series.name()}{done}.", clears=("series",))
        self._show_progress()
        return True

    def _swap_layers(self, case) -> None:
        from napari.layers import Layer

        viewer, old_image = self.viewer, self.image if self.image in self.viewer.layers else None
        old_objects = None if old_image is None else L.find_helper(viewer, "objects", L.image_id(old_image))
        image = Layer.create(*case.layer)
        objects = None
        if case.objects is not None:
            objects = L.make_layer("objects", image)
            objects.data = case.objects.astype(np.int32)
            objects.features = features_with_names(case.names)
        # where the last case's layers were: the prompt layers above them stay visible
        at = viewer.layers.index(old_image) if old_image is not None else len(viewer.layers)
        viewer.layers.insert(at, image)
        if objects is not None:
            above = viewer.layers.index(old_objects) + 1 if old_objects is not None else viewer.layers.index(image) + 1
            viewer.layers.insert(above, objects)
        if self.widget.binding is None or self.widget.binding.image is not image:
            self.widget.set_image_layer(image)
        self._moving = True
        try:
            for layer in (old_objects, old_image):
                if layer is not None:
                    viewer.layers.remove(layer)
        finally:
            self._moving = False
        self.image = image
        viewer.reset_view()

    # -- saving ---------------------------------------------------------------------------------------
    def save_current(self) -> bool:
        """Save the open case's objects if they changed; ``False`` (with the reason shown) if that failed."""
        image = self.image
        if self.series is None or image is None or image not in self.viewer.layers:
            return True
        objects = L.find_helper(self.viewer, "objects", L.image_id(image))
        ndim = len(L.spatial_shape(image))
        try:
            what = self.series.save_objects(
                self.series.index, None if objects is None else objects.data,
                names=None if objects is None else names_from_features(objects.features),
                scale=image.scale[-ndim:], translate=image.translate[-ndim:], affine=image.metadata.get("affine"))
        except SeriesError as exc:
            self.widget.status.error("series", exc)
            return False
        path = self.series.objects_path()
        self._saved_note = {"written": f"Saved the objects of {self.series.name()} to {path}. ",
                            "removed": f"Every object of {self.series.name()} was erased: removed {path}. "
                            }.get(what, "")
        if self._saved_note:
            self.widget.status.info(self._saved_note.strip(), clears=("series",))
        self._show_progress()
        return True

    def _on_removing(self, event) -> None:
        if self._moving or self.image is None:
            return
        layer = self.viewer.layers[event.index]
        if layer is self.image or (layer.metadata.get(L.ROLE) == "objects"
                                   and layer.metadata.get(L.IMAGE_ID) == self.image.metadata.get(L.IMAGE_ID)):
            self.save_current()  # before napari drops the data: the case's work is on disk
            if layer is self.image:
                self.image = None

    def cancel(self) -> None:
        """The widget is closing: save the open case and stop watching the viewer."""
        self.save_current()
        self.viewer.layers.events.removing.disconnect(self._on_removing)

    # -- what the group shows -------------------------------------------------------------------------
    def _show_progress(self) -> None:
        series = self.series
        if series is None:
            self.progress.setText("no series open")
        else:
            self.progress.setText(f"{series.progress_text()} — {series.name()}")
        self.previous_button.setEnabled(series is not None and series.index > 0)
        self.next_button.setEnabled(series is not None and series.index < len(series) - 1)
