"""The widget's 3D propagation: pick the committed object, run ``volume.propagate`` in a worker, write
each slice into the objects layer as it arrives (one undo step for the whole run), progress and cancel."""

from __future__ import annotations

import numpy as np

from . import tasks, workers


class PropagationController:
    """Owns one propagation run at a time for a ``MiniSamWidget``."""

    def __init__(self, widget):
        self.widget = widget
        self.worker = None
        self.slices: list[int] = []

    @property
    def running(self) -> bool:
        return self.worker is not None

    def object_on_slice(self, z: int) -> int | None:
        """The object to propagate: the objects layer's selected label, else the last committed one."""
        w = self.widget
        labels = w.objects_layer.data[z]
        candidates = [w.objects_layer.selected_label]
        if w.editor.undo_stack:
            candidates.append(w.editor.undo_stack[-1].label_id)
        for label_id in candidates:
            if label_id and (labels == label_id).any():
                return int(label_id)
        return None

    def start(self) -> None:
        w = self.widget
        if self.running:
            return
        if w.depth != 1 or w.objects_layer is None:
            w.show_message("Propagation needs a 3D (Z, Y, X) image.", error=True)
            return
        if w.predictor is None:
            w.show_message("The model is still loading.", error=True)
            return
        z = w.current_z()
        label_id = self.object_on_slice(z)
        if label_id is None:
            w.show_message(f"No committed object on slice {z}: commit one here (or select its label in "
                           "the objects layer) before propagating.", error=True)
            return
        start_mask = w.objects_layer.data[z] == label_id
        # An empty step that every propagated slice extends, so one Undo removes the whole run.
        w.editor.commit(w.objects_layer.data, np.zeros_like(start_mask), z, label_id=label_id,
                        description="propagation")
        ui = w.ui
        ui.propagate_progress.setRange(0, 1)
        ui.propagate_progress.setValue(0)
        ui.propagate_progress.setVisible(True)
        ui.cancel.setEnabled(True)
        self.slices = []
        self.worker = workers.start(
            tasks.propagate_task, w.predictor, w.image_layer.data, w.intensity, z, start_mask,
            ui.max_slices.value() or None,
            on_yielded=lambda step: self._on_step(step, label_id),
            on_returned=self._on_done, on_errored=w._error, on_finished=self._on_finished, keep=w._workers)
        if workers.run_synchronously():
            self._on_finished()  # the inline run ended before start() returned
        w._update_buttons()

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.quit()
            self.widget.show_message(f"Propagation cancelled after {len(self.slices)} slices "
                                     "(those stay; Undo removes them).")

    def _on_step(self, step, label_id: int) -> None:
        w = self.widget
        w.editor.commit(w.objects_layer.data, step.mask, step.z, label_id=label_id,
                        overwrite=w.ui.overwrite.isChecked(), extend=True)
        self.slices.append(step.z)
        # Only a slice in view needs a redraw now; napari reads the others from the array when the user
        # goes there. (A refresh per propagated slice stalled the Qt thread ~100 ms each under software GL.)
        if step.z == w.current_z() or w.viewer.dims.ndisplay == 3:
            w.objects_layer.refresh()
        w.ui.propagate_progress.setRange(0, step.total)
        w.ui.propagate_progress.setValue(step.done)
        w.show_message(f"Propagating: slice {step.z} done ({len(self.slices)} slices).")

    def _on_done(self, result) -> None:
        reasons = "; ".join(f"{'up' if d > 0 else 'down'}: {why}" for d, why in sorted(result.stopped.items()))
        slices = sorted(self.slices)
        span = f"slices {slices[0]}–{slices[-1]}" if slices else "no new slice"
        self.widget.show_message(f"Propagated to {len(slices)} slices ({span}). Stopped {reasons}.")

    def _on_finished(self) -> None:
        w = self.widget
        self.worker = None
        if w.objects_layer is not None:
            w.objects_layer.refresh()  # once, for the layer-list thumbnail
        w.ui.cancel.setEnabled(False)
        w.ui.propagate_progress.setVisible(False)
        w._update_buttons()
