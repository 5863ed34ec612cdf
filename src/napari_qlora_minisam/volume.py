"""Slice-wise 3D: which arrays can be segmented, one plane of a stack, and propagation of an object.

Qt-free: the napari widget runs :func:`propagate` in a worker and applies each step as it arrives, and the
tests run it directly. Coordinates are (x, y) like the predictor; masks are ``(H, W)`` bool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .errors import InputError
from .masks import tight_box


def stack_depth(shape: tuple, rgb: bool = False) -> int:
    """How many leading slice axes an image of ``shape`` has (0 for a 2D slice, 1 for a 3D stack).

    Raises:
        InputError: for shapes the slice-wise model cannot take (RGB stacks, 4D and more, 1D).
    """
    spatial = len(shape) - (1 if rgb else 0)
    if rgb and spatial == 2:
        return 0
    if rgb:
        raise InputError(
            f"RGB image stacks (shape {tuple(shape)}) are not supported; convert the stack to grey "
            "(one channel) first, or open one RGB slice as a 2D image."
        )
    if spatial == 2:
        return 0
    if spatial == 3:
        return 1
    if spatial > 3:
        raise InputError(
            f"Image has {spatial} dimensions (shape {tuple(shape)}); the model segments 2D slices of a 2D "
            "image or of a 3D (Z, Y, X) stack. Split channels/time points into separate layers first."
        )
    raise InputError(f"Image of shape {tuple(shape)} is not an image; it needs at least 2 dimensions.")


def plane(data, z: int | None) -> np.ndarray:
    """The 2D plane ``z`` of a stack (or the image itself when ``z`` is None) as an in-memory array."""
    arr = data if z is None else data[int(z)]
    return np.asarray(arr)


def box_from_mask(mask: np.ndarray, margin: float = 0.1, min_margin: int = 3) -> np.ndarray | None:
    """Tight (x0, y0, x1, y1) box of ``mask`` grown by ``margin`` × its size (at least ``min_margin`` px).

    The margin lets the next slice's object grow a little past this slice's outline; the result is clipped
    to the image. ``None`` when the mask is empty.
    """
    if not np.any(mask):
        return None
    h, w = mask.shape
    x0, y0, x1, y1 = tight_box(mask)
    mx = max(min_margin, margin * (x1 - x0 + 1))
    my = max(min_margin, margin * (y1 - y0 + 1))
    return np.array([max(0, x0 - mx), max(0, y0 - my), min(w - 1, x1 + mx), min(h - 1, y1 + my)], np.float32)


@dataclass
class PropagationStep:
    """One slice segmented during propagation."""

    z: int
    mask: np.ndarray
    score: float
    done: int  # slices visited so far (for progress bars)
    total: int  # slices that could be visited at most


@dataclass
class PropagationResult:
    """Why each direction stopped, and which slices got a mask."""

    slices: list[int] = field(default_factory=list)
    stopped: dict[int, str] = field(default_factory=dict)  # direction (+1/-1) -> reason


@dataclass(frozen=True)
class StopRules:
    """When propagation stops going further in one direction.

    Attributes:
        min_area: the mask "vanishes" below this many pixels.
        collapse_ratio: the mask "collapses" when it shrinks below this fraction of its neighbour's area.
        max_growth: the mask "leaks" into surrounding tissue when it grows past this multiple of its
            neighbour's area (a box prompt always returns something, often the whole box).
        min_score: the model's own predicted IoU below which its mask is not trusted.
        min_intensity_match: the mask "left the object" when fewer than this fraction of its pixels lie
            in the committed object's intensity range (its 2nd-98th percentiles). A box prompt past the
            end of a lung tumour returns a blob of air; this is what stops it.
        min_start_fraction: the object "faded out" when its mask falls below this fraction of the committed
            slice's area (0: off, the default). Past a tumour that touches the chest wall the box returns
            small blobs of soft tissue the intensity rule cannot tell apart (lung2: 190 px, 7 % of the committed
            2795 px, one slice past the tumour's last at 469 px).
    """

    min_area: int = 20
    collapse_ratio: float = 0.25
    max_growth: float = 2.5
    min_score: float = 0.0
    min_intensity_match: float = 0.2
    min_start_fraction: float = 0.0

    def reason_to_stop(self, area: int, previous_area: int, score: float,
                       intensity_match: float = 1.0, start_area: int = 0) -> str | None:
        if area < self.min_area:
            return f"mask vanished ({area} px)"
        if area < self.min_start_fraction * start_area:
            return f"object faded out ({area} px, {100 * area / start_area:.0f}% of the committed slice's)"
        if area < self.collapse_ratio * previous_area:
            return f"mask collapsed ({area} px after {previous_area} px)"
        if area > self.max_growth * previous_area:
            return f"mask leaked ({area} px after {previous_area} px)"
        if score < self.min_score:
            return f"low model confidence ({score:.2f})"
        if intensity_match < self.min_intensity_match:
            return f"mask left the object's intensities ({100 * intensity_match:.0f}% inside its range)"
        return None


def intensity_range(image: np.ndarray, mask: np.ndarray, percentiles=(2, 98)) -> tuple[float, float]:
    """Robust intensity range of the object ``mask`` in ``image``."""
    lo, hi = np.percentile(np.asarray(image, np.float32)[mask], percentiles)
    return float(lo), float(hi)


def intensity_match(image: np.ndarray, mask: np.ndarray, bounds: tuple[float, float]) -> float:
    """Fraction of the mask's pixels whose intensity lies within ``bounds``."""
    values = np.asarray(image, np.float32)[mask]
    if values.size == 0:
        return 0.0
    return float(((values >= bounds[0]) & (values <= bounds[1])).mean())


def trim_to_intensity(image: np.ndarray, mask: np.ndarray, bounds: tuple[float, float],
                      keep: float = 0.3) -> np.ndarray:
    """``mask`` less its pixels outside ``bounds`` (holes this leaves inside are filled again).

    A box prompt on a lung tumour takes in a rim of the air around it, which lies far outside the tumour's
    intensity range. ``mask`` itself is returned when trimming would keep less than ``keep`` of it: then the
    range does not describe this slice's object, and a mask cut to shreds is worse than the model's own.
    """
    from scipy.ndimage import binary_fill_holes

    values = np.asarray(image, np.float32)
    trimmed = binary_fill_holes(mask & (values >= bounds[0]) & (values <= bounds[1]))
    return trimmed if trimmed.sum() >= keep * mask.sum() else mask


SegmentSlice = Callable[..., tuple]  # (z, box xyxy, **neighbour prompts) -> (mask (H, W) bool, score)

# What the neighbour slice gives the next one: the box of its mask (plus the margin); "mask" adds that mask as
# SAM's ``mask_input`` prompt, "point" a positive click at its most interior pixel. "point" alone sends no box,
# for models that answer a click (adapters trained with clicks): the object may then outgrow the neighbour's box.
NEIGHBOUR_PROMPTS = ("box", "box+mask", "box+point", "box+mask+point", "point")
DEFAULT_NEIGHBOUR_PROMPT = "box+mask+point"  # chosen on lung1 + brain1 (benchmarks/propagation_quality.py)
# Where a model's own choice on those volumes differs: MiniSAM's adapters never saw a ``mask_input`` prompt in
# training and answer one with a worse mask than the box alone (brain1 Dice (all) 0.14 against 0.32). Their
# adapters were trained on slices of lung1 and brain1, so those volumes cannot tell a better recipe for them
# from one that fits their training slices: the click alone ("point") stays an option there, not the default.
ADAPTED_NEIGHBOUR_PROMPTS = {"minisam": "box"}


def default_neighbour_prompt(backend=None) -> str:
    """The neighbour prompt propagation uses for ``backend`` (its base and whether an adapter is active)."""
    if backend is not None and getattr(backend, "active_adapter", None):
        return ADAPTED_NEIGHBOUR_PROMPTS.get(getattr(backend, "source", None), DEFAULT_NEIGHBOUR_PROMPT)
    return DEFAULT_NEIGHBOUR_PROMPT


def check_neighbour_prompt(prompt: str) -> str:
    if prompt not in NEIGHBOUR_PROMPTS:
        raise InputError(f"Unknown neighbour prompt {prompt!r}; choose one of {', '.join(NEIGHBOUR_PROMPTS)}.")
    return prompt


def interior_point(mask: np.ndarray) -> np.ndarray:
    """(x, y) of the mask pixel farthest from its edge (inside the mask, unlike a centroid)."""
    from scipy.ndimage import distance_transform_edt

    dist = distance_transform_edt(np.pad(np.asarray(mask, bool), 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([x, y], np.float32)


def neighbour_box(previous: np.ndarray, prompt: str, margin: float = 0.1) -> np.ndarray | None:
    """The box the neighbour's mask gives (:func:`box_from_mask`), or ``None`` for the click alone (``"point"``)."""
    return None if prompt == "point" else box_from_mask(previous, margin)


def neighbour_prompt(previous: np.ndarray, prompt: str) -> dict:
    """The prompts beyond the box that ``prompt`` takes from the neighbour's mask, as keyword arguments."""
    extra = {}
    if "mask" in prompt:
        extra["mask"] = previous
    if "point" in prompt:
        extra["points"] = interior_point(previous)[None]
        extra["point_labels"] = np.ones(1, np.int64)
    return extra


def propagate(
    segment_slice: SegmentSlice,
    start_z: int,
    start_mask: np.ndarray,
    depth: int,
    *,
    margin: float = 0.1,
    rules: StopRules = StopRules(),
    max_slices: int | None = None,
    stack=None,
    directions=(1, -1),
    prompt: str = "box",
    trim: bool = False,
) -> Iterator[PropagationStep]:
    """Segment one object slice by slice away from ``start_z`` (up, then down).

    Each slice is prompted with the box of its neighbour's mask plus ``margin`` (and, per ``prompt``, that
    mask as ``mask_input`` and/or a click inside it: ``segment_slice(z, box, mask=..., points=...,
    point_labels=...)``; with ``"box"`` it is called as ``segment_slice(z, box)``, with ``"point"`` as
    ``segment_slice(z, None, points=..., point_labels=...)``); a direction ends at the
    stack's edge or where :class:`StopRules` says the mask vanished, collapsed or leaked (that slice is
    not yielded). A generator, so a worker can report progress and be cancelled between slices.

    Args:
        segment_slice: ``(z, box) -> (mask, score)``; e.g. a :class:`SliceSegmenter`.
        start_z: the slice holding the committed object.
        start_mask: its ``(H, W)`` mask.
        depth: number of slices in the stack.
        max_slices: at most this many slices per direction (``None``: until a stop rule or the edge).
        stack: the image stack; when given, masks must keep the committed object's intensities
            (``StopRules.min_intensity_match``).
        directions: ``(1, -1)`` both ways (up first), ``(1,)`` up only, ``(-1,)`` down only.
        prompt: one of :data:`NEIGHBOUR_PROMPTS`; ``"box"`` here (any ``(z, box)`` callable works), the
            session and the widget use the model's :func:`default_neighbour_prompt`.
        trim: yield each mask less its pixels outside the committed object's intensity range
            (:func:`trim_to_intensity`; needs ``stack``). Only the yielded mask is trimmed: the next slice's
            prompts and the stop rules see the model's mask, so where a run stops does not change. Off by
            default: it lifts the CT lung tumours and costs the MRI brain tumours a little
            (benchmarks/propagation_quality.py).

    Yields:
        :class:`PropagationStep` per accepted slice. The generator's return value is a
        :class:`PropagationResult`.
    """
    start_mask = np.asarray(start_mask, bool)
    check_neighbour_prompt(prompt)
    directions = tuple(int(d) for d in directions)
    if not directions or any(d not in (1, -1) for d in directions):
        raise InputError(f"Directions must be +1 (up) and/or -1 (down); got {directions}.")
    if not start_mask.any():
        raise InputError(f"There is no object on slice {start_z} to propagate; commit one there first.")
    if not 0 <= start_z < depth:
        raise InputError(f"Slice {start_z} is outside the stack of {depth} slices.")
    if trim and stack is None:
        raise InputError("Trimming masks to the object's intensities needs the image stack; pass stack=.")
    result = PropagationResult()
    bounds = intensity_range(plane(stack, start_z), start_mask) if stack is not None else None
    total = sum(
        min(max_slices or depth, depth - 1 - start_z if d > 0 else start_z) for d in directions
    )
    done = 0
    for direction in directions:
        previous = start_mask
        z = start_z + direction
        while True:
            if not 0 <= z < depth:
                result.stopped[direction] = "edge of the stack"
                break
            if max_slices is not None and abs(z - start_z) > max_slices:
                result.stopped[direction] = f"{max_slices} slices done"
                break
            box = neighbour_box(previous, prompt, margin)
            extra = neighbour_prompt(previous, prompt)
            mask, score = segment_slice(z, box, **extra) if extra else segment_slice(z, box)
            mask = np.asarray(mask, bool)
            done += 1
            match = intensity_match(plane(stack, z), mask, bounds) if bounds is not None else 1.0
            reason = rules.reason_to_stop(int(mask.sum()), int(previous.sum()), float(score), match,
                                          int(start_mask.sum()))
            if reason:
                result.stopped[direction] = f"{reason} at slice {z}"
                break
            result.slices.append(z)
            written = trim_to_intensity(plane(stack, z), mask, bounds) if trim else mask
            yield PropagationStep(z, written, float(score), done, total)
            previous = mask
            z += direction
    return result


def segment_with_neighbour(predictor, box: np.ndarray, mask: np.ndarray | None = None, points=None,
                           point_labels=None) -> tuple[np.ndarray, float]:
    """One propagation step on the predictor's current image: ``(mask, score)`` for the neighbour's prompts."""
    mask_input = None if mask is None else predictor.mask_prompt(mask)
    masks, scores, _ = predictor.predict(box=box, points=points, point_labels=point_labels,
                                         mask_input=mask_input, multimask=False)
    return masks[0], float(scores[0])


class SliceSegmenter:
    """``(z, box, **neighbour prompts) -> (mask, score)`` on a stack with a predictor (embeddings cached)."""

    def __init__(self, predictor, stack, intensity: str | None = None):
        self.predictor = predictor
        self.stack = stack
        self.intensity = intensity

    def __call__(self, z: int, box: np.ndarray, **neighbour):
        self.predictor.set_image(plane(self.stack, z), intensity=self.intensity)
        return segment_with_neighbour(self.predictor, box, **neighbour)


def run_propagation(generator) -> tuple[list[PropagationStep], PropagationResult]:
    """Drain a :func:`propagate` generator (scripts and tests); returns its steps and its result."""
    steps = []
    while True:
        try:
            steps.append(next(generator))
        except StopIteration as stop:
            return steps, stop.value
