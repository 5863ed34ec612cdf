"""Training an adapter from the objects the user committed, inside napari, while previews keep working.

The model the previews use is never trained: a copy of it is (``copy.deepcopy``, a fraction of a second for
LiteMedSAM, 4-bit or not), in a worker, with ``train_adapter``. The adapter it writes into the user
adapters folder is then loaded onto the previews' model, without reloading the base, and made active.
"""

from __future__ import annotations

import copy
import re
import threading

from qtpy.QtCore import QObject, Signal

from . import workers

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]+")
MODALITY = "annotated"  # what the Adapter box shows beside the name of an adapter trained here


def train_task(backend, pairs, names, out_dir, name, minutes, init_adapter, cancel, report):
    """Worker: train a copy of ``backend``; returns ``(adapter path, its metadata)``."""
    from ..adapter_training import train_adapter

    yield "copying the model"
    trainee = copy.deepcopy(backend)
    path = train_adapter(trainee, pairs, out_dir, name, max_minutes=minutes, progress=report.emit, cancel=cancel,
                         init_adapter=init_adapter, sample_names=names, modality=MODALITY)
    return path, trainee.adapter_info[name]


def default_name(image_name: str) -> str:
    return (_UNSAFE.sub("-", image_name).strip("-_") or "my") + "-adapter"


def training_units(counts: list[tuple[int, int]]) -> int:
    """What the trainer can hold back one of: objects, or the slices of the only object (as the trainer does)."""
    objects = sum(c[0] for c in counts)
    return objects if objects >= 2 else sum(c[1] for c in counts if c[0])


class AdapterTraining(QObject):
    """The form's *Train adapter* group: what it would use, the run, its progress and its result."""

    progress = Signal(object)  # TrainProgress, emitted from the worker thread
    trained = Signal(object, object)  # (adapter path, metadata)

    def __init__(self, widget):
        super().__init__(widget)
        self.widget = widget
        self.ui = ui = widget.ui
        self.worker = None
        self._cancel = threading.Event()
        self._trained_on = None  # the name of the model a run started on
        self.progress.connect(self._show_progress)
        self.trained.connect(self._trained)
        ui.train.clicked.connect(self.start)
        ui.train_cancel.clicked.connect(self.cancel)
        ui.train_others.toggled.connect(lambda _on: self.refresh())

    @property
    def active(self) -> bool:
        return self.worker is not None

    def _sessions(self) -> list:
        w = self.widget
        if w.session is None:
            return []
        others = [b.session for b in w.images.bindings.values() if b is not w.binding]
        return [w.session] + (others if self.ui.train_others.isChecked() else [])

    def refresh(self) -> None:
        """Say what a run would use (the objects panel calls this after every change)."""
        sessions = self._sessions()
        counts = [s.labelled_counts() for s in sessions]
        objects, slices = sum(c[0] for c in counts), sum(c[1] for c in counts)
        images = sum(1 for c in counts if c[0])
        text = (f"Uses {objects} object{'s' * (objects != 1)} on {slices} slice{'s' * (slices != 1)} of {images} "
                f"image{'s' * (images != 1)}.")
        if training_units(counts) < 2:
            text += " Commit at least 2 objects (or one object on 2 slices) first: some are held back to score it."
        self.ui.train_summary.setText(text)
        if not self.ui.train_name.text() and self.widget.session is not None:
            self.ui.train_name.setPlaceholderText(default_name(self.widget.session.name))
        self.ui.train.setEnabled(not self.active and training_units(counts) >= 2)

    def start(self) -> None:
        from ..adapters import user_adapters_dir

        w, ui = self.widget, self.ui
        sessions = [s for s in self._sessions() if s.training_pair() is not None]
        if self.active or w.models.engine is None:
            return
        if training_units([s.labelled_counts() for s in sessions]) < 2:
            w.status.error("training", "Training needs at least 2 committed objects (or one object on 2 slices): "
                                       "some are held back to measure the adapter.")
            return
        backend = w.models.engine.backend
        self._trained_on = backend.name  # the user may load another model before the run ends
        init = None
        if ui.train_start.currentIndex() == 1:
            init = backend.adapter_info.get(backend.active_adapter or "", {}).get("_path")
            if init is None:
                w.status.error("training", "No adapter is active to continue: pick one in the Adapter box, or "
                                           "start a new adapter.")
                return
        name = ui.train_name.text().strip() or ui.train_name.placeholderText()
        self._cancel.clear()
        ui.train_progress.setRange(0, 0)
        ui.train_progress.setFormat("preparing the training views…")
        ui.train_progress.setVisible(True)
        ui.train_cancel.setEnabled(True)
        ui.train.setEnabled(False)
        w.status.info(f"Training adapter {name!r} on {len(sessions)} image(s)…", clears=("training",))
        self.worker = workers.start(
            train_task, backend, [s.training_pair() for s in sessions], [s.name for s in sessions],
            user_adapters_dir(), name, ui.train_minutes.value(), init, self._cancel, self.progress,
            on_returned=lambda result: self.trained.emit(*result),
            on_errored=lambda exc: w.status.error("training", exc), on_finished=self._finished, keep=w.running)

    def cancel(self) -> None:
        if self.active:
            self._cancel.set()
            self.ui.train_progress.setFormat("cancelling: writing the best weights so far…")

    def _show_progress(self, p) -> None:
        bar = self.ui.train_progress
        bar.setRange(0, max(1, p.total))
        bar.setValue(p.step)
        parts = [f"step {p.step}/{p.total}"]
        if p.loss is not None:
            parts.append(f"loss {p.loss:.3f}")
        if p.val_dice is not None:
            parts.append(f"held-back Dice {p.val_dice:.2f}")
        bar.setFormat(" · ".join(parts) + f" · {p.elapsed_s:.0f} s")

    def _trained(self, path, meta) -> None:
        t = meta.get("training", {})
        done = (f"Adapter {path.name} trained ({t.get('steps_done')} steps, {t.get('train_seconds', 0):.0f} s, "
                f"{t.get('stopped')}): {describe(meta)}. Saved in {path.parent}")
        models = self.widget.models
        if models.backend is None or meta.get("base_identity") != models.backend.identity:
            # an adapter loads only onto its own base: another model was loaded while it trained
            in_use = "no model" if models.backend is None else models.backend.name
            self.widget.status.info(f"{done}; not active: it was trained on {self._trained_on} and {in_use} is "
                                    f"loaded now. Load {self._trained_on} to use it.", clears=("training",))
            models.refresh_adapters()
            return
        models.activate_path(path, f"{done}; active now.")

    def _finished(self) -> None:
        self.worker = None
        self.ui.train_progress.setVisible(False)
        self.ui.train_cancel.setEnabled(False)
        self.refresh()


def describe(metadata: dict) -> str:
    """"box Dice 0.57 → 0.74, click 0.02 → 0.45 on 3 held-back objects" from an adapter's metadata."""
    scores = metadata.get("scores", {})
    box, click = scores.get("box", {}), scores.get("click", {})
    if box.get("after") is None:
        return "no object was held back to score it"

    def pair(s: dict) -> str:
        return f"{s['before']:.2f} → {s['after']:.2f}"

    n = scores.get("held_back_objects", 0)
    return f"box Dice {pair(box)}, click {pair(click)} on {n} held-back object{'s' * (n != 1)}"

