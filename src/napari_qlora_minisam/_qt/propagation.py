"""3D propagation for the widget: one run at a time, shown in the preview layer while it runs, committed
into the objects layer in one undo step when it ends (or is cancelled: the slices done so far are kept).

Besides *Propagate* (both ways) the 3D group gets *Re-propagate ↑ / ↓* (from a corrected slice, one direction,
replacing the object's slices beyond it), *Erase above / below* (the object ends on this slice: a run that went
past its end is taken off) and an *Advanced* section: the neighbour prompt and the stop rules
(``volume.StopRules``, ``StopRules()`` as the defaults)."""

from __future__ import annotations

from functools import partial

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import MiniSamError
from ..volume import DEFAULT_NEIGHBOUR_PROMPT, NEIGHBOUR_PROMPTS, StopRules, default_neighbour_prompt
from . import tasks, workers

ARROWS = {1: "↑", -1: "↓"}


class PropagationOptions(QWidget):
    """*Re-propagate ↑ / ↓* and *Erase above / below* buttons and the collapsible *Advanced* section (neighbour
    prompt, stop rules)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.buttons = {}
        for direction, where in ((1, "above"), (-1, "below")):
            button = QPushButton(f"Re-propagate {ARROWS[direction]}")
            button.setToolTip(f"Propagate the object on this (corrected) slice to the slices {where} it only, "
                              f"replacing what the object held there; one undo step.")
            row.addWidget(button)
            self.buttons[direction] = button
        outer.addLayout(row)
        row = QHBoxLayout()
        self.erase_buttons = {}
        for direction, where in ((1, "above"), (-1, "below")):
            button = QPushButton(f"Erase {where}")
            button.setToolTip(f"The selected object ends on this slice: erase it from every slice {where} (a "
                              "propagation that ran past the object's end); one undo step.")
            row.addWidget(button)
            self.erase_buttons[direction] = button
        outer.addLayout(row)
        self.toggle = QToolButton()
        self.toggle.setText("Advanced")
        self.toggle.setCheckable(True)
        self.toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.toggled.connect(self._fold)
        outer.addWidget(self.toggle)
        self.advanced = QWidget()
        form = QFormLayout(self.advanced)
        self.prompt = QComboBox()
        self.prompt.addItems(NEIGHBOUR_PROMPTS)
        self.prompt.setCurrentText(DEFAULT_NEIGHBOUR_PROMPT)
        self.prompt.setToolTip("What each slice is prompted with: the box of its neighbour's mask (+10 %), and "
                               "optionally that mask (mask_input) and a click inside it; or that click alone "
                               "(point: for adapters trained with clicks, lets the object outgrow the box). "
                               "Follows the loaded model until you pick one.")
        self.prompt_picked = False  # by the user: from then on a model change leaves the choice alone
        self.prompt.activated.connect(self._prompt_picked)
        form.addRow("Neighbour prompt", self.prompt)
        self.trim = QCheckBox("trim masks to the object's intensities")
        self.trim.setToolTip("Drop mask pixels outside the committed object's intensity range (2nd–98th "
                             "percentile). Helps on CT tumours, slightly hurts on the MRI ones: see "
                             "docs/plugin.md, Propagation quality.")
        form.addRow(self.trim)
        d = StopRules()
        self.min_area = _spin(QSpinBox(), 0, 1_000_000, d.min_area, " px", "The mask vanished below this area.")
        self.collapse = _spin(QDoubleSpinBox(), 0.0, 1.0, d.collapse_ratio, "×",
                              "The mask collapsed when it shrinks below this fraction of its neighbour's area.")
        self.growth = _spin(QDoubleSpinBox(), 1.0, 100.0, d.max_growth, "×",
                            "The mask leaked when it grows past this multiple of its neighbour's area.")
        self.min_score = _spin(QDoubleSpinBox(), 0.0, 1.0, d.min_score, "",
                               "Stop where the model's predicted IoU falls below this.")
        self.intensity = _spin(QDoubleSpinBox(), 0.0, 1.0, d.min_intensity_match, "",
                               "Stop where fewer than this fraction of the mask's pixels lie in the committed "
                               "object's intensity range (2nd–98th percentile).")
        self.fade = _spin(QDoubleSpinBox(), 0.0, 1.0, d.min_start_fraction, "×",
                          "Stop where the mask falls below this fraction of the committed slice's area "
                          "(0: off). Stops leaks into tissue the intensity rule cannot tell apart.")
        for text, spin in (("Vanishes below", self.min_area), ("Collapses below", self.collapse),
                           ("Leaks above", self.growth), ("Min. model score", self.min_score),
                           ("Min. intensity match", self.intensity), ("Fades below", self.fade)):
            form.addRow(text, spin)
        self.advanced.setVisible(False)
        outer.addWidget(self.advanced)

    def _prompt_picked(self, _index: int) -> None:
        self.prompt_picked = True

    def follow_model(self, backend) -> None:
        """Show ``backend``'s default neighbour prompt (``volume.default_neighbour_prompt``), unless picked."""
        if not self.prompt_picked:
            self.prompt.setCurrentText(default_neighbour_prompt(backend))

    def _fold(self, shown: bool) -> None:
        self.advanced.setVisible(shown)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)

    def rules(self) -> StopRules:
        return StopRules(min_area=self.min_area.value(), collapse_ratio=self.collapse.value(),
                         max_growth=self.growth.value(), min_score=self.min_score.value(),
                         min_intensity_match=self.intensity.value(), min_start_fraction=self.fade.value())

    def neighbour_prompt(self) -> str:
        return self.prompt.currentText()


def slices_text(zs: list[int], more: str = "") -> str:
    """``"1 slice (slice 12)"``, ``"5 more slices (slices 18–22)"``, ``"4 more slices (slices 6–7, 9–10)"``
    (both ways round the committed slice 8), ``"0 slices"`` for sorted slice indices."""
    if not zs:
        return f"0 {more}slices"
    if len(zs) == 1:
        return f"1 {more}slice (slice {zs[0]})"
    runs, start = [], zs[0]
    for prev, z in zip(zs, zs[1:] + [None]):
        if z != prev + 1:
            runs.append(str(start) if start == prev else f"{start}–{prev}")
            start = z
    return f"{len(zs)} {more}slices (slices {', '.join(runs)})"


def _spin(spin, low, high, value, suffix: str, tip: str):
    spin.setRange(low, high)
    if isinstance(spin, QDoubleSpinBox):
        spin.setDecimals(2)
        spin.setSingleStep(0.05)
    spin.setValue(value)
    spin.setSuffix(suffix)
    spin.setToolTip(tip)
    return spin


class PropagationRun(QObject):
    """Runs ``session.propagate`` in a worker, shows its progress, and says how it ended."""

    ended = Signal()

    def __init__(self, running: set, progress_bar, status, parent=None):
        super().__init__(parent)
        self.running = running
        self.bar = progress_bar
        self.status = status  # the widget's StatusLine
        self.worker = None
        self.cancelled = False
        self.options: PropagationOptions | None = None
        self._run = None  # (binding, label_id, steps, overwrite, from_z, direction)
        self._stopped = ""  # why each direction stopped (from the generator's result)
        self._error = None

    @property
    def active(self) -> bool:
        return self.worker is not None

    @classmethod
    def for_widget(cls, widget) -> "PropagationRun":
        """The widget's run, its re-propagation buttons and *Advanced* section in the 3D group."""
        ui = widget.ui
        run = cls(widget.running, ui.propagate_progress, widget.status, widget)
        run.install(ui.propagate_progress.parentWidget().layout(),
                    lambda: (widget.binding, ui.max_slices.value() or None, ui.overwrite.isChecked()),
                    lambda: widget._update())
        widget.models.engine_changed.connect(lambda engine: run.options.follow_model(getattr(engine, "backend", None)))
        return run

    def install(self, layout, form_values, after=None) -> PropagationOptions:
        """Add the re-propagation buttons and the *Advanced* section to ``layout`` (the 3D group's).

        ``form_values()`` gives ``(binding, max_slices, overwrite)`` as the form holds them when a button is
        pressed; ``after()`` runs once a run is started (the widget refreshes its buttons).
        """
        self.options = PropagationOptions()
        layout.insertWidget(max(0, layout.count() - 1), self.options)  # above the progress bar
        for direction, button in self.options.buttons.items():
            button.clicked.connect(lambda _=False, d=direction: self._start_from_form(form_values, d, after))
        for direction, button in self.options.erase_buttons.items():
            button.clicked.connect(lambda _=False, d=direction: self.erase(form_values()[0], d))
        return self.options

    def erase(self, binding, direction: int) -> None:
        """The selected object ends on the slice in view: it is erased from every slice beyond (one undo step)."""
        if binding is None or self.active:
            return
        session = binding.session
        label_id = None if session.labels is None else session.labels.selected_label
        try:
            held, pixels = session.erase_beyond(label_id, direction)
        except MiniSamError as exc:
            self.status.error("propagation", exc)
            return
        where = "above" if direction > 0 else "below"
        if held:
            self.status.info(f"Erased object {label_id} {where} slice {session.z}: {slices_text(held)}, {pixels} px, "
                             "one undo step.", clears=("propagation",))
        else:
            self.status.info(f"Object {label_id} has no pixel {where} slice {session.z}: nothing erased.",
                             clears=("propagation",))
        self.ended.emit()

    def _start_from_form(self, form_values, direction: int, after) -> None:
        binding, max_slices, overwrite = form_values()
        if binding is not None:
            self.start(binding, max_slices, overwrite, direction)
        if after is not None:
            after()

    def start(self, binding, max_slices: int | None, overwrite: bool, direction: int | None = None) -> None:
        """Propagate the object on the slice in view of ``binding``'s image: the selected label, else the last
        committed (a message says why when there is none). ``direction`` ``+1`` / ``-1``: re-propagate only
        that way, replacing the object's slices beyond this one; ``None``: both ways, adding slices."""
        session = binding.session
        if self.active or session.engine is None:
            return
        selected = None if session.labels is None else session.labels.selected_label
        try:
            label_id, start_mask = session.propagation_seed(selected)
        except MiniSamError as exc:
            self.status.error("propagation", exc)
            return
        # a re-propagation stops before the next slice the user set by hand (commit or redraw) instead of
        # overwriting it
        bound = None if direction is None else session.repropagation_bound(label_id, direction)
        if bound is not None:
            gap = abs(bound - session.z) - 1
            if gap == 0:
                self.status.info(f"Slice {bound} holds object {label_id} as you set it (commit or redraw): nothing "
                                 f"to re-propagate {ARROWS[direction]} from here; re-propagate from slice {bound}.",
                                 clears=("propagation",))
                return
            max_slices = gap if max_slices is None else min(max_slices, gap)
        self.cancelled, self._stopped, self._error = False, "", None
        self._run = (binding, label_id, [], overwrite, session.z, direction, bound)
        way = "" if direction is None else f" {ARROWS[direction]}"
        self._progress(f"propagating object {label_id}{way} from slice {session.z}…", 0, 1)
        options = {} if direction is None else {"directions": (direction,)}
        if self.options is not None:
            options.update(rules=self.options.rules(), prompt=self.options.neighbour_prompt(),
                           trim=self.options.trim.isChecked())
        self.enable_buttons(False)
        self.worker = workers.start(partial(tasks.propagate_task, **options), session, start_mask, max_slices,
                                    on_yielded=self._step, on_returned=self._returned,
                                    on_errored=self._failed, on_finished=self._finished, keep=self.running)

    def enable_buttons(self, enabled: bool) -> None:
        if self.options is not None:
            for button in (*self.options.buttons.values(), *self.options.erase_buttons.values()):
                button.setEnabled(enabled)

    def cancel(self) -> None:
        if self.worker is not None:
            self.cancelled = True
            self.worker.quit()

    def _step(self, step) -> None:
        binding, label_id, steps = self._run[:3]
        steps.append(step)
        binding.paint_slice(step.z, step.mask)
        self._progress(f"propagating object {label_id}: slice {step.z} ({step.done}/{step.total})",
                       step.done, step.total)

    def _progress(self, text: str, done: int, total: int) -> None:
        self.bar.setRange(0, max(total, 1))
        self.bar.setValue(done)
        self.bar.setFormat(text)
        self.bar.setVisible(True)

    def _returned(self, result) -> None:
        _, _, steps, _, _, direction, bound = self._run
        if bound is not None and any(s.z == bound - direction for s in steps):  # it ran up to the bound
            result.stopped[direction] = f"before slice {bound}, which you set by hand (commit or redraw)"
        reasons = "; ".join(f"{'up' if d > 0 else 'down'}: {why}" for d, why in sorted(result.stopped.items()))
        self._stopped = f" Stopped {reasons}."

    def _failed(self, exc) -> None:
        self._error = exc

    def _finished(self) -> None:
        binding, label_id, steps, overwrite, from_z, direction, bound = self._run
        self.worker, self._run = None, None
        self.bar.setVisible(False)
        self.enable_buttons(True)
        if binding.session.labels is None and steps:
            binding.ensure("objects")  # deleted meanwhile: made again, the run is not lost
        # The slices segmented before a cancel or a failure are kept: they cost the user time.
        if direction is not None and binding.session.labels is not None:
            complete = not self.cancelled and self._error is None  # else only the slices reached are replaced
            written = binding.session.commit_repropagation(label_id, from_z, direction, steps, overwrite, complete,
                                                           until=bound)
        else:
            written = binding.session.commit_propagation(label_id, steps, overwrite) if steps else 0
        for step in steps:
            binding.paint_slice(step.z, None)
        zs = sorted(s.z for s in steps)
        if self._error is not None:
            self.status.error("propagation", self._error)
        elif self.cancelled:
            self.status.info(f"Propagation cancelled after {slices_text(zs)}: those are kept, {written} px "
                             "(Ctrl+Z takes them back).", clears=("propagation",))
        elif direction is not None:
            # An unchanged run writes nothing, so Ctrl+Z would take back the edit before it: say so.
            undo = f"{written} px changed, one undo step" if written else "nothing changed (no undo step)"
            self.status.info(f"Re-propagated object {label_id} {ARROWS[direction]} from slice {from_z}: "
                             f"{slices_text(zs)} replaced its slices beyond, {undo}."
                             f"{self._stopped}", clears=("propagation",))
        else:
            undo = f"{written} px, one undo step" if written else "nothing changed (no undo step)"
            self.status.info(f"Propagated object {label_id} to {slices_text(zs, 'more ')}, {undo}."
                             f"{self._stopped}", clears=("propagation",))
        self.ended.emit()
