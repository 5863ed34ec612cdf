"""``AnnotationSession``: everything MiniSAM knows about one image being annotated. Qt-free.

Per image it holds the model handle (a :class:`SegmentationEngine`), the intensity policy and the slice in
view (which together pick the embedding), the prompted objects, the live preview's generations
(:class:`PreviewState`), and the link to the label image its objects are committed into. Writes to that
label image go through its own edit history (``labels_edit``). The napari widget binds layers and events
to sessions; scripts and tests drive a session directly.

Example (no viewer; ``labels`` is a napari ``Labels`` layer, which needs no Qt)::

    session = AnnotationSession(image, name="cardiac MRI")
    session.set_engine(SegmentationEngine(load_model("litemedsam")))
    session.labels = Labels(np.zeros(image.shape, np.int32))
    session.set_prompts(slice_objects(shapes=[rectangle], shape_types=["rectangle"]))
    job = session.request_preview()          # a PreviewJob: run it (a worker does), then finish it
    session.finish_preview(job, job.run())
    session.commit()                         # one undo step: session.labels.undo() takes it back
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..intensity import check_policy, hounsfield_warning
from ..labels_edit import (erase_object, next_free_id, replace_object, replace_slices, writable_pixels, write_objects,
                           write_slices)
from ..prompts import SlicePrompts
from ..volume import PropagationStep, StopRules, default_neighbour_prompt, plane, propagate, stack_depth
from .objects import ObjectRecord, default_name, features_with_names, measure_objects, names_from_features
from .preview import Preview, PreviewJob, PreviewState


@dataclass
class CommitResult:
    """What a commit wrote: per prompted object its new id and pixels, or ``None`` when it had no free pixel."""

    z: int | None
    written: list[tuple[int, int] | None]
    names: dict[int, str] = field(default_factory=dict)

    @property
    def ids(self) -> list[int]:
        return [w[0] for w in self.written if w is not None]

    @property
    def pixels(self) -> int:
        return sum(w[1] for w in self.written if w is not None)

    @property
    def selected_id(self) -> int:
        """The object the widget selects afterwards: the last one committed."""
        return self.ids[-1]

    def describe(self) -> str:
        where = f" on slice {self.z}" if self.z is not None else ""
        ids = self.ids
        if len(ids) == 1:
            text = f"Committed object {ids[0]} ({self.names.get(ids[0], '')}){where}: {self.pixels} px."
        else:
            text = f"Committed {len(ids)} objects (ids {ids[0]}–{ids[-1]}){where}: {self.pixels} px."
        empty = [str(i + 1) for i, w in enumerate(self.written) if w is None]
        if empty:
            text += (f" Skipped object {', '.join(empty)} of the prompts: no free pixel (other objects hold "
                     "them; tick 'overwrite' to replace them).")
        return text


@dataclass
class RedrawResult:
    """What a redraw changed: object ``label_id`` on slice ``z`` went from ``before`` to ``after`` pixels."""

    z: int | None
    label_id: int
    name: str
    before: int
    after: int

    @property
    def selected_id(self) -> int:
        return self.label_id

    def describe(self) -> str:
        where = f" on slice {self.z}" if self.z is not None else ""
        again = " Re-propagate ↑ / ↓ from here to carry it on." if self.z is not None else ""
        return (f"Redrew object {self.label_id} ({self.name}){where}: {self.after} px (was {self.before} px)."
                f"{again}")


class AnnotationSession:
    """One image: its prompts, live preview, committed objects and the label image they go into.

    Args:
        image: ``(H, W)``, ``(H, W, 3)`` RGB or ``(Z, H, W)`` array (any dtype).
        name: shown in messages and used to name the image's layers.
        rgb: whether the last axis holds colour.
        spacing: mm per pixel along each spatial axis (``objects.spacing_mm``), ``None`` if not known.
        class_names: structure names of the image's dataset, offered as object names in order.

    Raises:
        InputError: for images the slice-wise model cannot take (4D, RGB stacks, 1D).
    """

    def __init__(self, image, *, name: str = "image", rgb: bool = False, spacing: tuple | None = None,
                 class_names=()):
        self.image = image
        self.rgb = bool(rgb)
        self.depth = stack_depth(np.shape(image), self.rgb)
        self.name = name
        self.spacing = spacing
        self.class_names = tuple(class_names)
        self.engine = None
        self.intensity = "minmax"
        self.z: int | None = 0 if self.depth else None
        self.prompts: list[SlicePrompts] = []
        self.saved_prompts: dict | None = None  # the prompt layers' data while another image is picked
        self.preview = PreviewState()
        self.labels = None  # the label image objects go into (a napari Labels layer), None until made
        self.last_id = 0  # the highest id this session committed: ids go on from there, even into a new layer
        self.last_committed: list[int] = []
        self.commit_requested = False  # commit as soon as the preview of the newest prompts is painted
        self.commit_into: int | None = None  # ... and into this object (:meth:`redraw`), not as new ones
        # label id -> {slice: digest of the object's mask there} for the slices the user set by commit or redraw
        self._set_by_hand: dict[int, dict[int, bytes]] = {}

    # -- what the model sees ------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        """The label image's shape: the image's, without colour."""
        shape = tuple(np.shape(self.image))
        return shape[:-1] if self.rgb else shape

    def set_engine(self, engine) -> None:
        self.engine = engine
        self.preview.invalidate()

    def set_intensity(self, policy: str) -> str | None:
        """Use ``policy`` for every embedding of this image; returns a warning when it does not fit the data."""
        self.intensity = check_policy(policy)
        self.preview.invalidate()
        return hounsfield_warning(self.plane(), policy)

    def set_slice(self, z: int | None) -> bool:
        """The slice in view changed (True if it did)."""
        if not self.depth:
            return False
        z = int(np.clip(int(z), 0, self.shape[0] - 1))
        if z == self.z:
            return False
        self.z = z
        self.preview.invalidate()
        return True

    def plane(self, z: int | None = None) -> np.ndarray:
        """The 2D plane the model segments: slice ``z`` (default: in view) of a stack, or the image."""
        return plane(self.image, (self.z if z is None else z) if self.depth else None)

    def is_embedded(self, z: int | None = None) -> bool:
        return self.engine is not None and self.engine.is_embedded(self.plane(z), self.intensity)

    def embed(self, z: int | None = None) -> None:
        """Embed a slice (default: in view) into the engine's cache; a worker calls this."""
        self.engine.embed(self.plane(z), self.intensity)

    # -- prompts and preview ------------------------------------------------------------------------------
    def set_prompts(self, objects: list[SlicePrompts]) -> None:
        """The objects prompted on the slice in view (``prompts.slice_objects`` of the prompt layers)."""
        self.prompts = [o for o in objects if not o.is_empty]

    @property
    def _context(self) -> tuple:
        return (self.z, self.intensity, None if self.engine is None else self.engine.identity)

    def _make_job(self, generation: int, objects, keys) -> PreviewJob:
        return PreviewJob(generation, self.z, self.plane(), self.intensity, self.engine, list(objects), keys)

    def request_preview(self) -> Preview | PreviewJob | None:
        """The preview of the prompts as they are: a :class:`Preview` to paint now, a :class:`PreviewJob` to
        run in a worker and hand to :meth:`finish_preview`, or ``None`` (a decode runs or no model yet)."""
        if self.engine is None and self.prompts:
            self.preview.invalidate()
            return None
        return self.preview.request(self.prompts, self.z, self._context, self._make_job)

    def decode_ahead(self, objects: list[SlicePrompts]) -> PreviewJob | None:
        """A job for prompts that will exist in a moment (a click's, at its press); never painted as such."""
        objects = [o for o in objects if not o.is_empty]
        if self.engine is None or not objects:
            return None
        return self.preview.ahead(objects, self._context, self._make_job)

    def finish_preview(self, job: PreviewJob, decoded) -> Preview | None:
        """A job ended (``decoded`` is ``None`` when it failed); the preview to paint, if still current."""
        shown = self.preview.finish(job, decoded)
        if decoded is None:
            self.commit_requested, self.commit_into = False, None
        return shown

    @property
    def preview_is_current(self) -> bool:
        return self.preview.is_current

    # -- objects --------------------------------------------------------------------------------------------
    def names(self) -> dict[int, str]:
        return names_from_features(self.labels.features) if self.labels is not None else {}

    def objects(self) -> list[ObjectRecord]:
        """The committed objects as the label image holds them now (brush edits and undo included)."""
        if self.labels is None:
            return []
        return measure_objects(self.labels.data, self.depth, self.spacing, self.names())

    def commit(self, overwrite: bool = False) -> CommitResult | None:
        """Write every previewed object into the label image as a new object, in one undo step.

        Returns ``None`` when the preview of the newest prompts is still being decoded: the commit is then
        owed (:attr:`commit_requested`) and the caller commits once that preview is painted.

        Raises:
            InputError: nothing prompted, no label image, or no free pixel in any previewed mask.
        """
        shown = self._preview_to_commit(None)
        if shown is None:
            return None
        first = next_free_id(self.labels.data, self.last_id + 1)
        written = write_objects(self.labels, shown.masks, shown.z, first, overwrite)
        result = CommitResult(shown.z, written)
        if not result.ids:
            raise InputError("Nothing committed: every pixel of the preview belongs to another object already "
                             "(tick 'overwrite other objects' to replace them).")
        names = self.names()
        taken = set(names.values())
        for label_id in result.ids:
            names[label_id] = default_name(label_id, taken, self.class_names)
            taken.add(names[label_id])
            result.names[label_id] = names[label_id]
        self.labels.features = features_with_names(names)
        self.last_id = max(self.last_id, *result.ids)
        self.last_committed = result.ids
        for label_id in result.ids:
            self._mark_set_by_hand(label_id, shown.z)
        return result

    def redraw(self, label_id: int | None, overwrite: bool = False) -> RedrawResult | None:
        """Object ``label_id`` on the previewed slice becomes the preview (every previewed mask together), one
        undo step; its other slices stay. The correction before a re-propagation from this slice.

        Returns ``None`` when the preview is still being decoded (the redraw is owed, like :meth:`commit`'s).

        Raises:
            InputError: no object picked, an id the label image does not hold, nothing prompted, or no free pixel.
        """
        if self.labels is None:
            raise InputError(f"No objects layer for {self.name!r}: commit an object (C) before redrawing one.")
        if not label_id or not np.any(np.asarray(self.labels.data) == int(label_id)):
            raise InputError("Pick the object to redraw first (a row of the objects table)." if not label_id else
                             f"There is no object {label_id} to redraw; pick one in the objects table, or commit "
                             "the preview as a new object (C).")
        shown = self._preview_to_commit(int(label_id))
        if shown is None:
            return None
        mask = np.logical_or.reduce(shown.masks)
        z, label_id = shown.z, int(label_id)
        plane = self._labels_plane(z)
        before = int(np.count_nonzero(plane == label_id))
        if not writable_pixels(np.where(plane == label_id, 0, plane), mask, overwrite).any():
            raise InputError("Nothing redrawn: every pixel of the preview belongs to another object (tick "
                             "'overwrite other objects' to take them).")
        replace_object(self.labels, label_id, z, mask, overwrite)
        after = int(np.count_nonzero(self._labels_plane(z) == label_id))
        self.last_committed = [label_id]
        self._mark_set_by_hand(label_id, z)
        return RedrawResult(z, label_id, self.names().get(label_id, f"object {label_id}"), before, after)

    def _preview_to_commit(self, into: int | None):
        """The painted preview a commit (``into`` ``None``) or redraw writes; ``None``: owed until it is painted."""
        if self.labels is None:
            raise InputError(f"No objects layer for {self.name!r} to commit into.")
        if not self.preview.is_current:
            if self.prompts and self.preview.busy:
                self.commit_requested, self.commit_into = True, into
                return None
            raise InputError("Nothing to commit: draw a box or click points first.")
        self.commit_requested, self.commit_into = False, None
        shown = self.preview.shown
        if not shown.decoded:
            raise InputError("Nothing to commit: draw a box or click points first.")
        return shown

    def _labels_plane(self, z: int | None) -> np.ndarray:
        return np.asarray(self.labels.data if z is None else self.labels.data[z])

    def rename(self, label_id: int, name: str) -> None:
        name = str(name).strip()
        if not name:
            raise InputError("An object's name cannot be empty.")
        names = self.names()
        names[int(label_id)] = name
        self.labels.features = features_with_names(names)

    def delete(self, label_id: int) -> int:
        """Erase object ``label_id`` (one undo step); its name is kept for a redo."""
        if self.labels is None:
            return 0
        return erase_object(self.labels, label_id)

    # -- training an adapter from the objects ------------------------------------------------------------
    def training_pair(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(image, labels)`` for ``train_adapter``: the image and its label image, ``None`` without objects.

        A volume goes whole: the trainer uses the slices that hold labels.
        """
        if self.labels is None:
            return None
        labels = np.asarray(self.labels.data)
        return (np.asarray(self.image), labels) if labels.any() else None

    def labelled_counts(self) -> tuple[int, int]:
        """``(objects, slices)``: the object ids committed and the slices holding any (1 for a 2D image)."""
        records = self.objects()
        if not records:
            return 0, 0
        if not self.depth:
            return len(records), 1
        labels = np.asarray(self.labels.data)
        return len(records), int(labels.reshape(labels.shape[0], -1).any(axis=1).sum())

    # -- 3D propagation -------------------------------------------------------------------------------------
    def propagation_seed(self, selected: int | None = None) -> tuple[int, np.ndarray]:
        """The object to propagate from the slice in view and its mask there.

        The selected label if it is on this slice, else the object committed last that is, else the only
        object on the slice.
        """
        if not self.depth:
            raise InputError("Propagation needs a 3D (Z, Y, X) image.")
        if self.labels is None:
            raise InputError(f"No committed object on slice {self.z}: commit one here first.")
        labels = np.asarray(self.labels.data[self.z])
        present = set(np.unique(labels).tolist()) - {0}
        for label_id in [selected, *reversed(self.last_committed)]:
            if label_id in present:
                return int(label_id), labels == label_id
        if len(present) == 1:
            label_id = present.pop()
            return int(label_id), labels == label_id
        raise InputError(f"No committed object on slice {self.z} to propagate: commit one here, or select its "
                         "label in the objects layer when there are several.")

    def propagate(self, start_mask: np.ndarray, max_slices: int | None = None, rules: StopRules = StopRules(), *,
                  directions=(1, -1), prompt: str | None = None, trim: bool = False):
        """Generator of :class:`PropagationStep` away from the slice in view (a worker runs it).

        ``prompt``: the neighbour prompt (``volume.NEIGHBOUR_PROMPTS``); ``None``: the loaded model's
        ``volume.default_neighbour_prompt``.
        ``directions``: ``(1, -1)`` both ways, ``(1,)`` up only, ``(-1,)`` down only (re-propagation).
        ``trim``: drop mask pixels outside the committed object's intensity range (``volume.propagate``).
        """
        z0, intensity, engine, image = self.z, self.intensity, self.engine, self.image
        prompt = default_neighbour_prompt(getattr(engine, "backend", None)) if prompt is None else prompt

        def segment(z: int, box: np.ndarray, **neighbour):
            return engine.segment_box(plane(image, z), intensity, box, **neighbour)

        return (yield from propagate(segment, z0, start_mask, self.shape[0], rules=rules, max_slices=max_slices,
                                     stack=image, directions=directions, prompt=prompt, trim=trim))

    def commit_propagation(self, label_id: int, steps: list[PropagationStep], overwrite: bool = False) -> int:
        """Write the propagated slices of object ``label_id`` in one undo step; pixels written."""
        return write_slices(self.labels, label_id, {s.z: s.mask for s in steps}, overwrite)

    def _object_digest(self, label_id: int, z: int) -> bytes:
        mask = np.asarray(self.labels.data[z]) == label_id
        return hashlib.blake2b(np.packbits(mask).tobytes(), digest_size=16).digest()

    def _mark_set_by_hand(self, label_id: int, z: int | None) -> None:
        if z is not None:
            self._set_by_hand.setdefault(int(label_id), {})[int(z)] = self._object_digest(label_id, z)

    def set_by_hand(self, label_id: int) -> list[int]:
        """The slices where object ``label_id`` is still as a commit or redraw of the user left it (an undo or a
        later edit of that slice releases it; brush strokes are not tracked)."""
        if self.labels is None or not self.depth:
            return []
        marks = self._set_by_hand.get(int(label_id), {})
        return sorted(z for z, digest in marks.items() if self._object_digest(int(label_id), z) == digest)

    def repropagation_bound(self, label_id: int, direction: int) -> int | None:
        """The nearest slice beyond the one in view, going ``direction``, that the user set by hand for object
        ``label_id`` (:meth:`set_by_hand`): a re-propagation stops before it instead of overwriting it."""
        ahead = [z for z in self.set_by_hand(label_id) if (z - self.z) * direction > 0]
        return min(ahead, key=lambda z: abs(z - self.z)) if ahead else None

    def beyond(self, from_z: int, direction: int) -> range:
        """The slices past ``from_z`` going ``direction`` (+1 up, -1 down) to the stack's edge."""
        if direction not in (1, -1):
            raise InputError(f"Direction must be +1 (up) or -1 (down); got {direction}.")
        return range(from_z + 1, self.shape[0]) if direction > 0 else range(0, from_z)

    def erase_beyond(self, label_id: int | None, direction: int) -> tuple[list[int], int]:
        """The object ends on the slice in view: object ``label_id`` is erased from every slice beyond it in
        ``direction`` (a leak past the object's end), one undo step. Returns the slices it held there and the
        pixels erased."""
        if not self.depth:
            raise InputError("Erasing above or below a slice needs a 3D (Z, Y, X) image.")
        if self.labels is None or not label_id:
            raise InputError("Pick the object to end here first (a row of the objects table).")
        zs = self.beyond(self.z, direction)
        held = [int(z) for z in zs if np.any(np.asarray(self.labels.data[z]) == int(label_id))]
        return held, replace_slices(self.labels, int(label_id), held, {})

    def commit_repropagation(self, label_id: int, from_z: int, direction: int, steps: list[PropagationStep],
                             overwrite: bool = False, complete: bool = True, until: int | None = None) -> int:
        """Re-propagation from a corrected slice: object ``label_id`` on every slice beyond ``from_z`` in
        ``direction`` becomes what ``steps`` found (none there: it is removed), in one undo step.

        The slice ``from_z``, the slices on its other side and every other object are left alone (other objects
        lose pixels only with ``overwrite``). A run that did not end by itself (``complete=False``: cancelled,
        failed) replaces only the slices up to the last it segmented; ``until`` (a slice set by hand,
        :meth:`repropagation_bound`): only the slices before it, it and the slices past it are kept.
        Returns the pixels changed.
        """
        zs = self.beyond(from_z, direction)
        if until is not None:
            if (until - from_z) * direction <= 0:
                raise InputError(f"Slice {until} is not beyond slice {from_z} in direction {direction:+d}.")
            zs = [z for z in zs if abs(z - from_z) < abs(until - from_z)]
        stray = [s.z for s in steps if s.z not in zs]
        if stray:
            raise InputError(f"Slices {stray} are not beyond slice {from_z} in direction {direction:+d}.")
        if not complete:
            reach = max((abs(s.z - from_z) for s in steps), default=0)
            zs = [z for z in zs if abs(z - from_z) <= reach]
        return replace_slices(self.labels, label_id, zs, {s.z: s.mask for s in steps}, overwrite)
