"""The teacher's outputs, computed once per image and kept on disk in fp16.

A distillation epoch needs, per slice, the teacher's image embedding and its mask logits for the prompts
the student will be given. The teacher is by far the most expensive part (ViT-H: ~70 s per 1024² image on
a CPU; LiteMedSAM: ~2 s), and its outputs never change, so they are computed on a first pass and every
epoch after that reads them back: the teacher runs exactly once per image, however many epochs follow.

Prompts:
    * slices with labels (COSMOS training images): the tight box around each object;
    * unlabelled slices: random proposal boxes are given to the teacher, and the tight box around each
      mask the teacher draws becomes a prompt ("boxes around the teacher's own masks"). The proposals are
      seeded by the slice key, so the same slice always gets the same prompts.

Layout::

    cache_root/<settings-hash>/manifest.json      teacher identity + the settings that shaped the entries
    cache_root/<settings-hash>/<slice>.pt         {embedding fp16, boxes, logits fp16, hw...}

Entries are written to a temporary file and renamed, so an interrupted first pass leaves only complete
entries; the next run computes the missing ones. Anything that changes the targets (teacher, quantization,
prompt settings, intensity policy) changes the settings hash, so a stale entry is never read.

With several processes (``accelerate launch``) the missing entries are split between them, each written
by exactly one process (temporary file + rename), and no process reads an entry before all have finished
theirs (a barrier), so readers never meet a half-written or missing file. The main process writes the
manifest (also renamed into place).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_qlora_minisam.errors import InputError
from napari_qlora_minisam.masks import tight_box
from napari_qlora_minisam.transforms import postprocess_logits, prepare_image, scale_boxes

from ..errors import ConfigError

CACHE_VERSION = 1


@dataclass(frozen=True)
class PromptSettings:
    """How prompts are chosen per slice (part of the cache key).

    Attributes:
        source: ``auto`` (label boxes where labels exist, else teacher boxes), ``labels`` or ``teacher``.
        per_image: at most this many prompts per slice.
        proposals: random proposal boxes tried per unlabelled slice.
        min_side, max_side: proposal box side as a fraction of the image side.
        min_area: a teacher mask smaller than this (pixels) is no object.
        max_area_fraction: a teacher mask covering more of the image is background, not an object.
        dedup_iou: two teacher boxes overlapping more than this are one object.
        seed: mixed with the slice key to seed the proposals.
    """

    source: str = "auto"
    per_image: int = 4
    proposals: int = 16
    min_side: float = 0.08
    max_side: float = 0.45
    min_area: int = 50
    max_area_fraction: float = 0.4
    dedup_iou: float = 0.7
    seed: int = 0

    def __post_init__(self):
        if self.source not in ("auto", "labels", "teacher"):
            raise ValueError(f"prompts.source={self.source!r}: choose auto, labels or teacher.")


@dataclass
class CacheStats:
    """What the first pass cost and what the cache saved (written to the run summary)."""

    slices: int = 0
    computed: int = 0
    reused: int = 0
    skipped: list = field(default_factory=list)
    teacher_encode_calls: int = 0
    teacher_decode_calls: int = 0
    teacher_seconds: float = 0.0
    bytes_on_disk: int = 0
    prompts_from_labels: int = 0
    prompts_from_teacher: int = 0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["skipped"] = list(self.skipped)[:50]
        d["skipped_count"] = len(self.skipped)
        return d


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def _slice_seed(key: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha1(f"{seed}:{key}".encode()).digest()[:4], "little")


def proposal_boxes(image: np.ndarray, n: int, min_side: float, max_side: float, seed: int) -> np.ndarray:
    """``(n, 4)`` random boxes centred on foreground pixels (original pixel frame).

    Centres are drawn from pixels brighter than the image mean: medical slices are mostly dark background,
    and a box in the air around a patient gives the teacher nothing to segment.
    """
    grey = image.mean(axis=-1) if image.ndim == 3 else image.astype(np.float32)
    h, w = grey.shape
    rng = np.random.default_rng(seed)
    ys, xs = np.nonzero(grey > grey.mean())
    if len(xs) == 0:
        ys, xs = np.nonzero(np.ones_like(grey, dtype=bool))
    pick = rng.integers(0, len(xs), size=n)
    cx, cy = xs[pick].astype(np.float32), ys[pick].astype(np.float32)
    bw = rng.uniform(min_side, max_side, size=n) * w
    bh = rng.uniform(min_side, max_side, size=n) * h
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w - 1)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h - 1)
    return boxes.astype(np.float32)


class TeacherCache:
    """Per-slice teacher targets under ``root/<settings hash>``; see the module docstring."""

    def __init__(self, root, settings: dict):
        self.settings = {"version": CACHE_VERSION, **settings}
        digest = hashlib.sha1(json.dumps(self.settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.dir = Path(root) / digest

    def path(self, item) -> Path:
        return self.dir / f"{item.cache_name}.pt"

    def has(self, item) -> bool:
        return self.path(item).is_file()

    def load(self, item) -> dict:
        return torch.load(self.path(item), map_location="cpu", weights_only=True)

    def save(self, item, entry: dict) -> int:
        """Write one entry atomically; returns its size in bytes."""
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path(item)
        tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
        torch.save(entry, tmp)
        os.replace(tmp, final)
        return final.stat().st_size

    def write_manifest(self, teacher_identity: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = self.dir / "manifest.json"
        tmp = manifest.with_name(f".manifest.json.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"teacher_identity": teacher_identity, **self.settings}, indent=1, default=str))
        os.replace(tmp, manifest)

    def manifest(self) -> dict | None:
        p = self.dir / "manifest.json"
        return json.loads(p.read_text()) if p.is_file() else None


class CountingTeacher:
    """Wraps a backend and counts encoder / decoder calls (tests assert the cache stops them)."""

    def __init__(self, backend):
        self.backend = backend
        self.encode_calls = 0
        self.decode_calls = 0

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def encode(self, pixels):
        self.encode_calls += 1
        return self.backend.encode(pixels)

    def decode(self, *args, **kwargs):
        self.decode_calls += 1
        return self.backend.decode(*args, **kwargs)


@torch.no_grad()
def teacher_targets(teacher, image: np.ndarray, masks: list, key: str, prompts: PromptSettings,
                    intensity: str = "minmax") -> dict:
    """Run the teacher once on a slice: its embedding, the chosen boxes and its logits for them.

    Raises:
        InputError: the slice is unusable (constant) or the teacher finds no object in it.
    """
    size = teacher.spec.image_size
    pixels, original_hw, input_hw = prepare_image(image, teacher.spec, intensity)
    emb = teacher.encode(pixels.to(teacher.device))
    boxes, origin = [], "labels"
    if masks and prompts.source in ("auto", "labels"):
        boxes = [tight_box(m) for m in masks][: prompts.per_image]
    if not boxes and prompts.source in ("auto", "teacher"):
        origin = "teacher"
        boxes = _boxes_from_teacher_masks(teacher, emb, image, key, prompts, original_hw, input_hw, size)
    if not boxes:
        raise InputError(f"no prompt for slice {key}: no label object and the teacher drew no object")
    boxes_np = np.stack(boxes).astype(np.float32)
    net_boxes = torch.from_numpy(scale_boxes(boxes_np, original_hw, size)).to(emb.device)
    logits, _ = teacher.decode(emb, boxes=net_boxes, multimask=False)
    return {
        "embedding": emb[0].to("cpu", torch.float16).contiguous(),
        "boxes": torch.from_numpy(boxes_np),          # original pixel frame: each model maps them itself
        "logits": logits.to("cpu", torch.float16).contiguous(),   # (P, 1, 4h, 4w) in the teacher's frame
        "original_hw": torch.tensor(original_hw),
        "teacher_input_hw": torch.tensor(input_hw),
        "prompt_origin": origin,
    }


def _boxes_from_teacher_masks(teacher, emb, image, key, prompts, original_hw, input_hw, size) -> list:
    props = proposal_boxes(image, prompts.proposals, prompts.min_side, prompts.max_side,
                           _slice_seed(key, prompts.seed))
    net = torch.from_numpy(scale_boxes(props, original_hw, size)).to(emb.device)
    low, _ = teacher.decode(emb, boxes=net, multimask=False)
    masks = (postprocess_logits(low[:, 0], input_hw, original_hw, size) > 0).cpu().numpy()
    total = masks.shape[-1] * masks.shape[-2]
    kept: list[np.ndarray] = []
    for m in masks:
        area = int(m.sum())
        if area < prompts.min_area or area > prompts.max_area_fraction * total:
            continue
        b = tight_box(m)
        if all(box_iou(b, k) < prompts.dedup_iou for k in kept):
            kept.append(b)
        if len(kept) >= prompts.per_image:
            break
    return kept


def fill_cache(items, cache: TeacherCache, reader, load_teacher, prompts: PromptSettings, *, intensity="minmax",
               accelerator=None, progress: bool = True) -> tuple[list, CacheStats]:
    """Make sure every slice has a cache entry; run the teacher only for the missing ones.

    The teacher is loaded (``load_teacher()``) only if something is missing, so a run on a warm cache never
    builds it. With several processes each fills its share (one writer per entry), then all wait for each
    other; the returned stats are those of all processes together.

    Returns:
        (usable items, stats): slices the teacher could not prompt on are dropped and listed in stats.
    """
    stats = CacheStats(slices=len(items))
    rank = accelerator.process_index if accelerator else 0
    world = accelerator.num_processes if accelerator else 1
    missing = [it for it in items if not cache.has(it)]
    if accelerator is not None and world > 1:
        # Every process must split the same list: none may start writing before all have looked.
        accelerator.wait_for_everyone()
    teacher = None
    mine = missing[rank::world]
    if mine:
        teacher = CountingTeacher(load_teacher())
        known = cache.manifest()
        if known and known.get("teacher_identity") != teacher.identity:
            raise ConfigError(f"teacher cache {cache.dir} was written by another teacher; delete it or set "
                              "cache.dir to a new folder.")
        if rank == 0:
            cache.write_manifest(teacher.identity)
        from tqdm.auto import tqdm

        bar = tqdm(mine, desc="teacher pass (once per image)", disable=not progress or rank != 0)
        for it in bar:
            try:
                image = reader.image(it)
                masks = reader.masks(it) if prompts.source != "teacher" else []
                start = time.perf_counter()
                entry = teacher_targets(teacher, image, masks, it.key, prompts, intensity)
                stats.teacher_seconds += time.perf_counter() - start
            except InputError as exc:
                stats.skipped.append(f"{it.key}: {exc}")
                cache.save(it, {"skip": str(exc)})  # remember, so the next run does not retry the teacher
                continue
            stats.bytes_on_disk += cache.save(it, entry)
            stats.computed += 1
            n = int(entry["boxes"].shape[0])
            if entry["prompt_origin"] == "labels":
                stats.prompts_from_labels += n
            else:
                stats.prompts_from_teacher += n
        stats.teacher_encode_calls = teacher.encode_calls
        stats.teacher_decode_calls = teacher.decode_calls
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if accelerator is not None and world > 1:
        stats = _merge_stats(stats, accelerator)
    usable = []
    for it in items:
        entry_path = cache.path(it)
        if not entry_path.is_file():
            raise RuntimeError(f"teacher cache entry {entry_path} is missing after the teacher pass")
        if entry_path.stat().st_size < 4096 and "skip" in torch.load(entry_path, weights_only=True):
            if it not in missing:
                stats.skipped.append(f"{it.key}: skipped on an earlier pass")
            continue
        usable.append(it)
    stats.reused = len(items) - len(missing)
    del teacher
    return usable, stats


def _merge_stats(stats: CacheStats, accelerator) -> CacheStats:
    """The counters of every process's share of the teacher pass, summed (collective)."""
    from accelerate.utils import gather_object

    merged = CacheStats(slices=stats.slices)
    for part in gather_object([stats]):
        for k, v in part.__dict__.items():
            if k == "skipped":
                merged.skipped.extend(v)
            elif k != "slices":
                setattr(merged, k, getattr(merged, k) + v)
    return merged
