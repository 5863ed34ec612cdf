"""*Precompute embeddings* for the picked 3D image: every slice, nearest to the one in view first, in a worker.

The embeddings go into the engine's :class:`EmbeddingStore` (on disk), so reopening the same volume with the
same model, adapter and intensity is instant. Previews keep working meanwhile: the worker holds the engine's
lock for one slice at a time. Cancel stops before the next slice; what is stored stays stored.
"""

from __future__ import annotations

from . import workers
from .job_group import JobGroup


def precompute_task(engine, volume, start: int, intensity: str):
    """Worker: yields a ``PrecomputeStep`` per slice; returns ``(slices computed, slices total)``."""
    from ..embedding_store import precompute

    computed = total = 0
    for step in precompute(engine.predictor, volume, start=start, intensity=intensity, lock=engine.lock):
        computed += step.computed
        total = step.total
        yield step
    return computed, total


class PrecomputePanel(JobGroup):
    """The form's *Embeddings* group: the button, its progress bar and Cancel."""

    def __init__(self, widget):
        super().__init__(widget, "Embeddings", "Precompute embeddings",
                         "Embed every slice of this 3D image now (nearest to the one in view first) and keep them "
                         "on disk: reopening it with the same model is instant.")
        self.worker = None
        self.cancelled = False
        self._counts = [0, 0]  # computed, taken from the store
        self._name = ""  # the image being precomputed: the user may have moved to another one by its end

    @property
    def active(self) -> bool:
        return self.worker is not None

    def start(self) -> None:
        session, status = self.widget.session, self.widget.status
        if self.active:
            return
        if session is None or not session.depth:
            status.error("precompute", "Pick a 3D image (Z, Y, X) to precompute its embeddings.")
            return
        engine = session.engine
        if engine is None or engine.predictor.store is None:
            status.error("precompute", "No model is loaded yet (or it keeps no embeddings on disk).")
            return
        self.cancelled, self._counts, self._name = False, [0, 0], session.name
        depth = session.shape[0]
        self.show_progress(0, depth, f"precomputing {depth} slices of {session.name} from slice {session.z}…")
        self.set_running(True)
        self.worker = workers.start(precompute_task, engine, session.image, session.z or 0, session.intensity,
                                    on_yielded=self._step, on_errored=lambda exc: status.error("precompute", exc),
                                    on_finished=self._finished, keep=self.widget.running)

    def cancel(self) -> None:
        if self.worker is not None:
            self.cancelled = True
            self.worker.quit()

    def _step(self, step) -> None:
        self._counts[0 if step.computed else 1] += 1
        self.show_progress(step.done, step.total,
                           f"{self._name}: embeddings {step.done}/{step.total} (slice {step.z})")

    def _finished(self) -> None:
        self.worker = None
        self.set_running(False)
        computed, stored = self._counts
        what = "cancelled" if self.cancelled else "done"
        self.widget.status.info(f"Precompute {what} for {self._name}: {computed} slices embedded, {stored} were on "
                                "disk already.",
                                clears=("precompute",))
