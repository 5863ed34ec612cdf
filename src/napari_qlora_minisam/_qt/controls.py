"""The widget's form: plain Qt controls, no behaviour (that lives in ``widget.py``)."""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

AS_DISPLAYED = "as displayed"  # the image layer's contrast limits (see intensity.display_range)
INTENSITY_CHOICES = {
    "min–max": "minmax",
    AS_DISPLAYED: AS_DISPLAYED,
    "percentile 0.5–99.5": "percentile",
    "CT soft tissue (W400 L40)": "ct_soft_tissue",
    "CT lung (W1500 L−600)": "ct_lung",
    "CT bone (W1800 L400)": "ct_bone",
}
MODEL_CHOICES = ("minisam", "litemedsam", "facebook/sam-vit-base", "facebook/sam-vit-large", "facebook/sam-vit-huge")
NO_ADAPTER = "none"


class _RelayoutWatch(QObject):
    """Calls ``callback`` whenever ``widget``'s layout is recomputed (its contents changed size)."""

    def __init__(self, widget: QWidget, callback):
        super().__init__(widget)
        self._callback = callback
        widget.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.LayoutRequest:
            self._callback()
        return False


def _row(*widgets) -> QHBoxLayout:
    row = QHBoxLayout()
    row.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        row.addWidget(w)
    return row


class Controls:
    """Builds the form into ``parent`` and exposes each control as an attribute.

    The groups scroll (``scroll``, holding ``body``) so that the dock fits a laptop screen; the embedding bar
    and the message line stay below them, always in sight.
    """

    def __init__(self, parent: QWidget):
        self.form = QWidget()
        outer = self.body = QVBoxLayout(self.form)  # the groups, top to bottom; panels add theirs here

        self.image = QComboBox()
        self.image.setToolTip("The image layer to segment (2D slice or 3D Z,Y,X stack). Each image keeps its "
                              "own prompts, preview and objects layers.")
        self.help = QToolButton()
        self.help.setText("?")
        self.help.setCheckable(True)
        self.help.setToolTip("Keyboard shortcuts")
        top = QFormLayout()
        top.addRow("Image", _row(self.image, self.help))
        outer.addLayout(top)
        self.shortcuts = QLabel()
        self.shortcuts.setVisible(False)
        outer.addWidget(self.shortcuts)
        self.guidance = QLabel()
        self.guidance.setWordWrap(True)
        self.guidance.setStyleSheet("color: #9fd5ff;")
        outer.addWidget(self.guidance)

        model_box = QGroupBox("Model")
        form = QFormLayout(model_box)
        self.model = QComboBox()
        self.model.setEditable(True)
        self.model.addItems(MODEL_CHOICES)
        self.model.setToolTip("minisam (bundled, the default: the project's student distilled from LiteMedSAM, "
                              "a quarter of its encoder's cost at 0.98x its box Dice), litemedsam (bundled, its "
                              "teacher), a Hugging Face id, a save_pretrained folder or a .pth file.")
        self.browse = QPushButton("…")
        self.browse.setToolTip("Pick a segment-anything .pth checkpoint, or a config.json of a model folder.")
        self.browse.setMaximumWidth(32)
        self.load = QPushButton("Load")
        form.addRow("Model", _row(self.model, self.browse, self.load))
        self.quantize = QCheckBox("4-bit NF4")
        self.quantize.setToolTip("Quantize the linear layers to 4 bits (bitsandbytes NF4): less memory.")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        form.addRow("Quantize", _row(self.quantize, QLabel("Device"), self.device))
        self.bf16_decoder = QCheckBox("bf16 decoder")
        self.bf16_decoder.setToolTip(
            "Decode prompts in bfloat16 (masks > 0.99 Dice of float32): ~15 % faster on CPUs with native "
            "bf16 (AVX512-BF16 / AMX), where it can be ticked.")
        form.addRow("Speed", self.bf16_decoder)
        self.adapter = QComboBox()
        self.adapter.setToolTip("LoRA modality adapter; switching does not reload the base model. Greyed out "
                                "while a propagation or segment everything runs.")
        self.refresh_adapters = QPushButton("⟳")
        self.refresh_adapters.setToolTip("Look for new adapters (e.g. written by minisam-train adapt).")
        self.refresh_adapters.setMaximumWidth(32)
        form.addRow("Adapter", _row(self.adapter, self.refresh_adapters))
        self.intensity = QComboBox()
        self.intensity.addItems(list(INTENSITY_CHOICES))
        self.intensity.setToolTip("How raw intensities (e.g. CT Hounsfield units) are mapped for the model; "
                                  "'as displayed' feeds it the image layer's contrast limits.")
        form.addRow("Intensity", self.intensity)
        outer.addWidget(model_box)

        prompt_box = QGroupBox("Prompts")
        pv = QVBoxLayout(prompt_box)
        self.box_mode = QPushButton("Draw box")
        self.point_mode = QPushButton("Add points")
        self.negative = QCheckBox("negative points (N)")
        self.negative.setToolTip("New clicks mark background; N in the points layer toggles this, "
                                 "Shift+N flips the selected points.")
        pv.addLayout(_row(self.box_mode, self.point_mode))
        self.clear = QPushButton("Clear prompts")
        pv.addLayout(_row(self.negative, self.clear))
        outer.addWidget(prompt_box)

        objects_box = QGroupBox("Objects")
        ov = QVBoxLayout(objects_box)
        self.commit = QPushButton("Commit (C)")
        self.commit.setToolTip("Write every previewed object into the objects layer, each box its own label, "
                               "in one undo step (shortcut C).")
        self.redraw = QPushButton("Redraw (Shift+R)")
        self.redraw.setToolTip("The preview replaces the selected object on this slice (its other slices stay), "
                               "one undo step: the correction before Re-propagate ↑ / ↓ (shortcut Shift+R).")
        self.undo = QPushButton("Undo")
        self.undo.setToolTip("napari's undo of the objects layer: commits and brush strokes, in order (Ctrl+Z).")
        self.redo = QPushButton("Redo")
        ov.addLayout(_row(self.commit, self.redraw, self.undo, self.redo))
        self.overwrite = QCheckBox("overwrite other objects")
        self.overwrite.setToolTip("Off: a new object only fills background pixels.")
        self.delete_object = QPushButton("Delete object")
        self.delete_object.setToolTip("Erase the selected object from the objects layer (undoable).")
        self.adopt = QPushButton("Use selected labels")
        self.adopt.setToolTip("Make the labels layer selected in the layer list (same shape as the image, e.g. "
                              "objects saved earlier and opened again) this image's objects layer: commits, "
                              "propagation, the table and undo then work on it.")
        ov.addLayout(_row(self.overwrite, self.delete_object))
        self.objects = QTableWidget(0, 4)
        self.objects.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                     | QAbstractItemView.EditTrigger.EditKeyPressed)
        self.objects.setMinimumHeight(110)
        self.objects.setToolTip("Committed objects of this image; double-click a name to edit it.")
        ov.addWidget(self.objects)
        ov.addLayout(_row(QLabel("Saved objects opened again?"), self.adopt))
        outer.addWidget(objects_box)

        volume_box = QGroupBox("3D")
        vv = QVBoxLayout(volume_box)
        self.max_slices = QSpinBox()
        self.max_slices.setRange(0, 10000)
        self.max_slices.setSpecialValueText("until it stops")
        self.max_slices.setToolTip("Slices to segment in each direction (0: until the mask vanishes, "
                                   "collapses or leaks, or the stack ends).")
        self.propagate = QPushButton("Propagate")
        self.propagate.setToolTip("Segment the object committed on this slice up and down, slice by slice.")
        self.cancel = QPushButton("Cancel")
        self.cancel.setEnabled(False)
        vv.addLayout(_row(QLabel("Slices each way"), self.max_slices))
        vv.addLayout(_row(self.propagate, self.cancel))
        self.propagate_progress = QProgressBar()
        self.propagate_progress.setTextVisible(True)
        self.propagate_progress.setVisible(False)
        vv.addWidget(self.propagate_progress)
        outer.addWidget(volume_box)

        train_box = QGroupBox("Train adapter (from the objects committed)")
        tf = QFormLayout(train_box)
        self.train_name = QLineEdit()
        self.train_name.setPlaceholderText("e.g. my-caudate")
        self.train_name.setToolTip("The adapter's name and folder name (letters, digits, - and _).")
        tf.addRow("Name", self.train_name)
        self.train_minutes = QDoubleSpinBox()
        self.train_minutes.setRange(0.1, 60.0)
        self.train_minutes.setSingleStep(0.5)
        self.train_minutes.setValue(2.0)
        self.train_minutes.setSuffix(" min")
        self.train_start = QComboBox()
        self.train_start.addItems(["new adapter", "the active adapter"])
        self.train_start.setToolTip("Continue training the adapter in use with these objects, or start afresh.")
        tf.addRow("Budget", _row(self.train_minutes, QLabel("start from"), self.train_start))
        self.train_others = QCheckBox("also the objects of the other images")
        tf.addRow(self.train_others)
        self.train_summary = QLabel()
        self.train_summary.setWordWrap(True)
        # a wrapped label in a form row gets one line's height when the form is squeezed: keep room for three
        self.train_summary.setMinimumHeight(3 * self.train_summary.fontMetrics().lineSpacing())
        tf.addRow(self.train_summary)
        self.train = QPushButton("Train")
        self.train.setToolTip("QLoRA adapter trained on the committed objects, some held back to score it; "
                              "previews keep working meanwhile. Saved in the user adapters folder, then active.")
        self.train_cancel = QPushButton("Cancel")
        self.train_cancel.setEnabled(False)
        tf.addRow(_row(self.train, self.train_cancel))
        self.train_progress = QProgressBar()
        self.train_progress.setTextVisible(True)
        self.train_progress.setVisible(False)
        tf.addRow(self.train_progress)
        outer.addWidget(train_box)

        outer.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(self.form)

        self.embed_progress = QProgressBar()
        self.embed_progress.setRange(0, 0)  # busy: the encoder gives no intermediate progress
        self.embed_progress.setTextVisible(True)
        self.embed_progress.setFormat("embedding…")
        self.embed_progress.setVisible(False)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setMinimumWidth(240)
        dock = QVBoxLayout(parent)
        dock.setContentsMargins(0, 0, 0, 0)
        dock.addWidget(self.scroll, 1)
        bottom = QVBoxLayout()
        bottom.setContentsMargins(9, 0, 9, 9)
        bottom.addWidget(self.embed_progress)
        bottom.addWidget(self.message)
        dock.addLayout(bottom)
        self._width_watch = _RelayoutWatch(self.form, self.fit_width)
        self.fit_width()

    def add_group(self, group: QWidget, after: QWidget | None = None) -> None:
        """Add a panel's group to the scrolling form: below ``after``, else last."""
        at = self.body.indexOf(after) + 1 if after is not None else self.body.count() - 1  # before the stretch
        self.body.insertWidget(at, group)
        self.fit_width()

    def fit_width(self) -> None:
        """No horizontal scrolling: the scroll area is as wide as the widest group needs."""
        bar = self.scroll.verticalScrollBar()
        # the style's border round the viewport (napari's stylesheet gives it one), known once shown
        border = self.scroll.width() - self.scroll.viewport().width() - (bar.width() if bar.isVisible() else 0)
        self.scroll.setMinimumWidth(self.form.minimumSizeHint().width() + bar.sizeHint().width() + max(0, border))

    def show_group(self, group: QWidget) -> None:
        """Scroll the form so that ``group`` is in sight."""
        self.scroll.ensureWidgetVisible(group, 0, 0)
