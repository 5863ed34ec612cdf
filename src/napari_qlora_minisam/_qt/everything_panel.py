"""*Segment everything* for the picked 2D image or the slice in view, in a worker, into a new labels layer.

The masks come from :func:`~napari_qlora_minisam.everything.segment_everything` (``auto``: a click grid when
the model answers clicks, box proposals for bare LiteMedSAM) and go into a new layer ``<image> · everything``
the user edits like any labels layer. The worker holds the engine's lock for the whole run (so a preview
cannot switch the image under it); Cancel stops before the next decoder batch and adds no layer.
"""

from __future__ import annotations

import threading

import numpy as np
from qtpy.QtCore import Signal
from . import workers
from .job_group import JobGroup


def everything_task(engine, plane, intensity: str, cancel: threading.Event, report, settings: dict):
    """Worker: returns the label image of ``plane`` (``None`` when cancelled); ``report(done, total)``."""
    from ..everything import Cancelled, segment_everything, to_labels

    yield 0, 1
    with engine.lock:
        try:
            found = segment_everything(engine.predictor, plane, intensity=intensity, progress=report,
                                       cancel=cancel, **settings)
        except Cancelled:
            return None
    return to_labels(found, np.shape(plane)[:2])


class EverythingPanel(JobGroup):
    """The form's *Segment everything* group: the button, its progress bar and Cancel."""

    progressed = Signal(int, int)  # emitted from the worker thread; Qt queues it to the GUI thread

    def __init__(self, widget, **settings):
        super().__init__(widget, "Automatic", "Segment everything",
                         "Segment every object of this image (or of the slice in view) into a new labels layer "
                         "you can edit. Clicks need a point-capable model or adapter; bare LiteMedSAM uses box "
                         "proposals.")
        self.settings = settings  # keyword arguments of segment_everything (tests pass small grids)
        self.worker = None
        self._running = False  # set before the worker starts: a synchronous run finishes inside start()
        self._cancel = threading.Event()
        self._target = None  # (image layer, z) the running job writes to
        self.progressed.connect(self._show)

    @property
    def active(self) -> bool:
        return self._running

    def start(self) -> None:
        binding, status = self.widget.binding, self.widget.status
        if self.active:
            return
        session = None if binding is None else binding.session
        if session is None or session.engine is None:
            status.error("everything", "Pick an image and wait for the model to load first.")
            return
        self._cancel.clear()
        self._running = True
        self._target = (binding.image, session.z if session.depth else None, session.shape)
        self._show(0, 1)
        self.set_running(True)
        self.worker = workers.start(everything_task, session.engine, session.plane(), session.intensity,
                                    self._cancel, self.progressed.emit, dict(self.settings),
                                    on_returned=self._done,
                                    on_errored=lambda exc: status.error("everything", exc),
                                    on_finished=self._finished, keep=self.widget.running)

    def cancel(self) -> None:
        self._cancel.set()

    def _show(self, done: int, total: int) -> None:
        self.show_progress(done, total, f"segment everything: {done}/{total} prompts")

    def _done(self, labels) -> None:
        layer, z, shape = self._target
        if labels is None:
            self.widget.status.info("Segment everything cancelled.", clears=("everything",))
            return
        if z is None:
            data = labels
        else:  # a 3D image: the slice in view, in a volume-shaped layer
            data = np.zeros(shape, labels.dtype)
            data[z] = labels
        self.widget.viewer.add_labels(data, name=f"{layer.name} · everything", scale=layer.scale[-data.ndim:],
                                      translate=layer.translate[-data.ndim:])
        where = "" if z is None else f" on slice {z}"
        self.widget.status.info(f"Segment everything: {int(labels.max())} objects{where}.", clears=("everything",))

    def _finished(self) -> None:
        self._running = False
        self.worker = None
        self.set_running(False)
