"""The live preview of one image: which decode answers the prompts as they are, and which are stale.

Qt-free. Every change that can alter the preview (an edit of the prompts, another slice, model, adapter or
intensity) makes a new *generation*. A decode job carries the generation it was made for; its masks are
painted only if no newer generation was made meanwhile, so a fast drag never paints an old mask over a
newer one. Decoded masks are kept per object under their prompt key, so an edit of one box re-decodes that
box alone, and a decode made ahead (a click's, at its press) is found again when its prompts arrive.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ..prompts import SlicePrompts
from .engine import Decoded

AHEAD = -1  # the generation of a decode made before its prompts exist: kept, never painted as such
DECODED_KEPT = 64  # per-object masks kept for reuse (a few slices' worth of objects)


@dataclass(frozen=True)
class Preview:
    """The masks on screen: one per prompted object, in prompt order."""

    generation: int
    z: int | None
    objects: tuple[SlicePrompts, ...]
    decoded: tuple[Decoded, ...]

    @property
    def masks(self) -> list[np.ndarray]:
        return [d.mask for d in self.decoded]

    def label_plane(self, shape: tuple) -> np.ndarray:
        """One plane with object ``i`` (in prompt order) as id ``i + 1``; a later object wins an overlap."""
        plane = np.zeros(shape, np.uint8)
        for i, d in enumerate(self.decoded):
            plane[d.mask] = min(i + 1, 255)
        return plane


@dataclass
class PreviewJob:
    """What a worker decodes: ``todo`` objects of ``objects`` on ``plane`` (the others are decoded already)."""

    generation: int
    z: int | None
    plane: np.ndarray
    intensity: str
    engine: object
    objects: list[SlicePrompts]
    keys: list[tuple]
    todo: list[int] = field(default_factory=list)

    @property
    def needs_embedding(self) -> bool:
        return not self.engine.is_embedded(self.plane, self.intensity)

    def run(self) -> list[Decoded]:
        """The decode itself (in a worker thread): masks of the ``todo`` objects, in that order."""
        return self.engine.decode(self.plane, self.intensity, [self.objects[i] for i in self.todo])


class PreviewState:
    """Generations, the decode in flight and the decoded masks of one image."""

    def __init__(self):
        self.generation = 0
        self.running: PreviewJob | None = None
        self.pending = False  # asked for while a decode ran: ask again with the newest prompts when it ends
        self.shown: Preview | None = None
        self.ahead_used = 0  # previews painted from masks decoded ahead of their prompts
        self._decoded: OrderedDict[tuple, Decoded] = OrderedDict()
        self._ahead: set[tuple] = set()  # keys decoded ahead and not shown yet

    @property
    def is_current(self) -> bool:
        """The preview on screen answers the newest generation (prompts, slice, model as they are now)."""
        return self.shown is not None and self.shown.generation == self.generation

    @property
    def busy(self) -> bool:
        return self.running is not None or self.pending

    def shows(self, objects: list[SlicePrompts]) -> bool:
        """The current preview is on screen for exactly these prompts, and nothing decodes."""
        return (self.is_current and self.running is None
                and [o.key for o in self.shown.objects] == [o.key for o in objects if not o.is_empty])

    def invalidate(self) -> None:
        """Whatever is decoding or shown answers an older state now."""
        self.generation += 1

    def forget(self) -> None:
        """Drop every decoded mask (the model's weights changed in place, e.g. after training)."""
        self._decoded.clear()
        self.invalidate()

    def request(self, objects: list[SlicePrompts], z: int | None, context: tuple,
                make_job) -> Preview | PreviewJob | None:
        """Ask for the preview of ``objects``; a new generation.

        Returns the :class:`Preview` at once when every object is decoded already (or nothing is prompted:
        an empty preview), a :class:`PreviewJob` to run when something must be decoded, or ``None`` while a
        decode runs (the caller asks again when it ends, see :attr:`pending`).
        ``make_job(generation, objects, keys)`` builds the job for slice ``z``; ``context`` keys the decoded
        masks together with each object's prompts (slice, intensity, model).
        """
        self.invalidate()
        if self.running is not None:
            self.pending = True
            return None
        self.pending = False
        keys = [(context, o.key) for o in objects]
        todo = [i for i, k in enumerate(keys) if k not in self._decoded]
        if not todo:
            if self._ahead.intersection(keys):
                self.ahead_used += 1
                self._ahead.difference_update(keys)
            return self._show(self.generation, z, objects, keys)
        job = make_job(self.generation, objects, keys)
        job.todo = todo
        self.running = job
        return job

    def ahead(self, objects: list[SlicePrompts], context: tuple, make_job) -> PreviewJob | None:
        """A job for prompts that are about to exist (a click at its press), unless busy or decoded already."""
        if self.running is not None:
            return None
        keys = [(context, o.key) for o in objects]
        todo = [i for i, k in enumerate(keys) if k not in self._decoded]
        if not todo:
            return None
        job = make_job(AHEAD, objects, keys)
        job.todo = todo
        self.running = job
        return job

    def finish(self, job: PreviewJob, decoded: list[Decoded] | None) -> Preview | None:
        """A job ended (``decoded`` is ``None`` if it failed); the preview to paint if it is still current."""
        if self.running is job:
            self.running = None
        if decoded is None:
            return None
        for i, d in zip(job.todo, decoded):
            self._keep(job.keys[i], d)
            if job.generation == AHEAD:
                self._ahead.add(job.keys[i])
        if job.generation != self.generation or any(k not in self._decoded for k in job.keys):
            return None
        return self._show(job.generation, job.z, job.objects, job.keys)

    def _show(self, generation: int, z: int | None, objects, keys) -> Preview:
        self.shown = Preview(generation, z, tuple(objects), tuple(self._decoded[k] for k in keys))
        return self.shown

    def _keep(self, key: tuple, decoded: Decoded) -> None:
        self._decoded[key] = decoded
        self._decoded.move_to_end(key)
        while len(self._decoded) > DECODED_KEPT:
            self._ahead.discard(self._decoded.popitem(last=False)[0])
