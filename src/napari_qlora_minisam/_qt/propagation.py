"""3D propagation for the widget: one run at a time, shown in the preview layer while it runs, committed
into the objects layer in one undo step when it ends (or is cancelled: the slices done so far are kept)."""

from __future__ import annotations

from qtpy.QtCore import QObject, Signal

from ..errors import MiniSamError
from . import tasks, workers


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
        self._run = None  # (binding, label_id, steps, overwrite)
        self._stopped = ""  # why each direction stopped (from the generator's result)
        self._error = None

    @property
    def active(self) -> bool:
        return self.worker is not None

    def start(self, binding, max_slices: int | None, overwrite: bool) -> None:
        """Propagate the object on the slice in view of ``binding``'s image: the selected label, else the last
        committed (a message says why when there is none)."""
        session = binding.session
        if self.active or session.engine is None:
            return
        selected = None if session.labels is None else session.labels.selected_label
        try:
            label_id, start_mask = session.propagation_seed(selected)
        except MiniSamError as exc:
            self.status.error("propagation", exc)
            return
        self.cancelled, self._stopped, self._error = False, "", None
        self._run = (binding, label_id, [], overwrite)
        self._progress(f"propagating object {label_id} from slice {session.z}…", 0, 1)
        self.worker = workers.start(tasks.propagate_task, session, start_mask, max_slices,
                                    on_yielded=self._step, on_returned=self._returned,
                                    on_errored=self._failed, on_finished=self._finished, keep=self.running)

    def cancel(self) -> None:
        if self.worker is not None:
            self.cancelled = True
            self.worker.quit()

    def _step(self, step) -> None:
        binding, label_id, steps, _ = self._run
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
        reasons = "; ".join(f"{'up' if d > 0 else 'down'}: {why}" for d, why in sorted(result.stopped.items()))
        self._stopped = f" Stopped {reasons}."

    def _failed(self, exc) -> None:
        self._error = exc

    def _finished(self) -> None:
        binding, label_id, steps, overwrite = self._run
        self.worker, self._run = None, None
        self.bar.setVisible(False)
        if binding.session.labels is None and steps:
            binding.ensure("objects")  # deleted meanwhile: made again, the run is not lost
        # The slices segmented before a cancel or a failure are kept: they cost the user time.
        written = binding.session.commit_propagation(label_id, steps, overwrite) if steps else 0
        for step in steps:
            binding.paint_slice(step.z, None)
        zs = sorted(s.z for s in steps)
        span = f" (slices {zs[0]}–{zs[-1]})" if zs else ""
        if self._error is not None:
            self.status.error("propagation", self._error)
        elif self.cancelled:
            self.status.info(f"Propagation cancelled after {len(zs)} slices{span}: those are kept, {written} px "
                             "(Ctrl+Z takes them back).", clears=("propagation",))
        else:
            self.status.info(f"Propagated object {label_id} to {len(zs)} more slices{span}, {written} px, one "
                             f"undo step.{self._stopped}", clears=("propagation",))
        self.ended.emit()
