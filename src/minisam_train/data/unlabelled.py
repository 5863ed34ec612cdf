"""Any folder of images or volumes, labelled or not, as a flat list of 2D slices for distillation.

Distillation needs pixels, not labels: the teacher supplies the targets. So this reader takes whatever is on
disk — PNG/JPEG/BMP slices, 2D TIFF frames (ultrasound), 3D TIFF / ``.npy`` volumes — and lists one
:class:`DistillSlice` per 2D slice. COSMOS roots can be added too (:func:`cosmos_slices`); their labels give
prompts when the caller allows it, and a split file can drop whole images (the test split) so that neither
their labels nor their pixels reach training.

Listing reads no pixels (TIFF shapes come from the header), so a large folder is cheap to list and filter.
Volumes are min-max scaled to uint8 *per volume* before slicing, the COSMOS rule, so a CT slice keeps its
place in the volume's HU range and looks like the COSMOS PNGs the student is evaluated on.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
ARRAY_SUFFIXES = (".npy",)
# File or folder names that hold labels, not images: never fed to the model as pixels.
LABEL_MARKERS = ("label", "labels", "mask", "masks", "seg", "gt")

# Views: fixed augmented copies of every slice (``data.views``). With ~100 slices a student learns the
# slices rather than the teacher; each view is one more image for the teacher to label, cached like any
# other slice, so augmentation costs one teacher pass per view and nothing per epoch. Geometric views move
# label masks with the pixels; gamma views change intensities only.
GEOMETRIC_VIEWS = {
    "hflip": lambda a: a[:, ::-1],
    "vflip": lambda a: a[::-1],
    "rot90": lambda a: np.rot90(a, 1),
    "rot270": lambda a: np.rot90(a, 3),
    "transpose": lambda a: np.swapaxes(a, 0, 1),
}
GAMMA_VIEWS = {"gamma0.7": 0.7, "gamma1.5": 1.5}
VIEWS = tuple(GEOMETRIC_VIEWS) + tuple(GAMMA_VIEWS)
VIEWS_ON = ("all", "cosmos")  # which slices get the views: every one, or those of the COSMOS roots


def _check_view(view: str) -> str:
    if view not in VIEWS:
        raise DataError(f"Unknown view {view!r}; data.views takes any of: {', '.join(VIEWS)}.")
    return view


def apply_view(pixels: np.ndarray, view: str, *, is_mask: bool = False) -> np.ndarray:
    """``pixels`` (``(H, W)`` or ``(H, W, C)``) as seen in ``view``; masks only follow geometric views."""
    if not view:
        return pixels
    if _check_view(view) in GEOMETRIC_VIEWS:
        return np.ascontiguousarray(GEOMETRIC_VIEWS[view](pixels))
    if is_mask:  # a gamma view
        return pixels
    # Within the image's own range, so any dtype (uint16 ultrasound, float) keeps its dtype and range.
    x = pixels.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return pixels
    out = lo + (hi - lo) * ((x - lo) / (hi - lo)) ** GAMMA_VIEWS[view]
    return (np.round(out) if np.issubdtype(pixels.dtype, np.integer) else out).astype(pixels.dtype)


@dataclass(frozen=True)
class DistillSlice:
    """One 2D training slice, known before any pixel is read.

    Attributes:
        key: stable unique name (file path + slice index); the teacher cache is keyed on it.
        path: image file (for a volume, the 3D file).
        slice_index: z index inside a volume, ``None`` for a 2D file.
        dataset: folder / COSMOS dataset / volume name (for reports).
        label_path: COSMOS label PNG when labels may be used for prompts, else ``None``.
        classes: COSMOS class name -> grey value (only with ``label_path``).
        view: an entry of :data:`VIEWS` (augmented copy) or ``""`` for the slice as stored.
    """

    key: str
    path: Path
    slice_index: int | None = None
    dataset: str = ""
    label_path: Path | None = None
    classes: dict = field(default_factory=dict, compare=False, hash=False)
    view: str = ""

    def with_view(self, view: str) -> "DistillSlice":
        """This slice seen through ``view``: its own key, so its own teacher-cache entry."""
        return replace(self, key=f"{self.key}@{_check_view(view)}", view=view)

    @property
    def cache_name(self) -> str:
        """File-system safe, collision-free name for this slice's cache file."""
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(self.key).name)[:60]
        digest = hashlib.sha1(self.key.encode()).hexdigest()[:12]
        return f"{stem}-{digest}"


def _is_label_name(path: Path, root: Path) -> bool:
    parts = [p.lower() for p in path.relative_to(root).parts]
    stem = path.stem.lower()
    tokens = stem.replace("-", "_").split("_")
    return any(p in LABEL_MARKERS for p in parts[:-1]) or any(t in LABEL_MARKERS for t in tokens)


def _tiff_shape(path: Path) -> tuple:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tuple(tif.series[0].shape)
    except Exception as exc:
        raise DataError(f"Cannot read TIFF header of {path} ({type(exc).__name__}: {exc}).") from exc


def _volume_depth(shape: tuple) -> int | None:
    """Number of slices if ``shape`` is a volume, ``None`` for a 2D (grey or RGB) image."""
    if len(shape) == 2 or (len(shape) == 3 and shape[-1] in (3, 4)):
        return None
    if len(shape) == 3 or (len(shape) == 4 and shape[-1] in (3, 4)):
        return int(shape[0])
    raise DataError(f"Array of shape {shape} is neither a 2D image nor a 3D volume.")


def folder_slices(root, *, volume_stride: int = 1, exclude: Sequence[str] = (), recursive: bool = True,
                  ) -> list[DistillSlice]:
    """Every 2D slice of the images and volumes under ``root`` (labels skipped), sorted by path.

    Args:
        root: a folder (or one file).
        volume_stride: keep every k-th slice of a volume (neighbouring slices are near duplicates).
        exclude: drop files whose name contains any of these strings (e.g. test patients ``lung2``).
        recursive: also look into sub-folders.

    Raises:
        DataError: ``root`` does not exist or a TIFF header cannot be read.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"Data folder {root} does not exist; check data.folders.")
    files = [root] if root.is_file() else sorted((root.rglob if recursive else root.glob)("*"))
    base = root.parent if root.is_file() else root
    out: list[DistillSlice] = []
    stride = max(1, int(volume_stride))
    for f in files:
        suffix = f.suffix.lower()
        if not f.is_file() or suffix not in IMAGE_SUFFIXES + TIFF_SUFFIXES + ARRAY_SUFFIXES:
            continue
        if _is_label_name(f, base) or any(x in f.name for x in exclude):
            continue
        dataset = f.stem
        if suffix in IMAGE_SUFFIXES:
            out.append(DistillSlice(str(f), f, None, f.parent.name))
            continue
        shape = _tiff_shape(f) if suffix in TIFF_SUFFIXES else tuple(np.load(f, mmap_mode="r").shape)
        depth = _volume_depth(shape)
        if depth is None:
            out.append(DistillSlice(str(f), f, None, dataset))
        else:
            out.extend(DistillSlice(f"{f}#z{z}", f, z, dataset) for z in range(0, depth, stride))
    return out


def cosmos_slices(root, *, split: str = "test_data", exclude_split_file=None,
                  exclude_split_key: str | Sequence[str] = "test", use_labels: bool = True) -> list[DistillSlice]:
    """Slices of a COSMOS-layout root; images listed under ``exclude_split_key`` are dropped entirely.

    Args:
        root: COSMOS root (``data/<split>/<DATASET>/{images,labels}``).
        exclude_split_file: ``splits.json``; its ``exclude_split_key`` images (pixels and labels) are skipped.
        exclude_split_key: one key or several (``["test", "val"]``: choosing on ``val`` needs it unseen too).
        use_labels: keep the label path so prompts can come from the masks.
    """
    from .cosmos import CosmosDataset
    from .splits import split_images

    ds = CosmosDataset(root, split=split)
    keys = [exclude_split_key] if isinstance(exclude_split_key, str) else list(exclude_split_key)
    dropped: dict[str, set] = {}
    for key in keys if exclude_split_file else ():
        for name, images in split_images(exclude_split_file, key).items():
            dropped.setdefault(name, set()).update(images)
    out = []
    for e in ds.entries:
        if e.image_name in dropped.get(e.dataset, set()):
            continue
        out.append(DistillSlice(str(e.image_path), Path(e.image_path), None, e.dataset,
                                Path(e.label_path) if use_labels else None, dict(e.classes) if use_labels else {}))
    return out


class SliceReader:
    """Reads the pixels (and label masks) of :class:`DistillSlice` s.

    The last ``max_volumes`` volumes stay in memory (as uint8): training visits slices in random order, and
    re-decoding a 512² x 60 CT for every slice of it would cost more than the training step on a GPU.
    """

    def __init__(self, min_object_pixels: int = 50, max_volumes: int = 4):
        self.min_object_pixels = int(min_object_pixels)
        self.max_volumes = max(1, int(max_volumes))
        self._volumes: OrderedDict[Path, np.ndarray] = OrderedDict()
        self.volume_loads = 0

    def _volume_u8(self, path: Path) -> np.ndarray:
        if path in self._volumes:
            self._volumes.move_to_end(path)
            return self._volumes[path]
        if path.suffix.lower() in ARRAY_SUFFIXES:
            vol = np.load(path)
        else:
            import tifffile

            vol = np.asarray(tifffile.imread(path))
        v = vol.astype(np.float32)
        lo, hi = float(v.min()), float(v.max())
        if hi <= lo:
            raise DataError(f"Volume {path} is constant; there is nothing to learn from it.")
        self.volume_loads += 1
        self._volumes[path] = np.round((v - lo) / (hi - lo) * 255.0).astype(np.uint8)
        while len(self._volumes) > self.max_volumes:
            self._volumes.popitem(last=False)
        return self._volumes[path]

    def image(self, item: DistillSlice) -> np.ndarray:
        """``(H, W)`` or ``(H, W, 3)`` pixels of one slice (in its view)."""
        return apply_view(self._stored_image(item), item.view)

    def _stored_image(self, item: DistillSlice) -> np.ndarray:
        if item.slice_index is not None:
            return self._volume_u8(item.path)[item.slice_index]
        suffix = item.path.suffix.lower()
        if suffix in TIFF_SUFFIXES:
            import tifffile

            return np.asarray(tifffile.imread(item.path))
        if suffix in ARRAY_SUFFIXES:
            return np.load(item.path)
        from .cosmos import read_image

        return read_image(item.path)

    def masks(self, item: DistillSlice) -> list[np.ndarray]:
        """Object masks from the slice's label (empty when it has none or labels are not used)."""
        if item.label_path is None:
            return []
        from .cosmos import read_grey_label
        from .records import objects_from_label

        label = apply_view(read_grey_label(item.label_path), item.view, is_mask=True)
        return list(objects_from_label(label, item.classes, self.min_object_pixels).values())


def gather_slices(folders: Iterable = (), cosmos_roots: Iterable = (), *, volume_stride: int = 1,
                  exclude: Sequence[str] = (), exclude_split_file=None,
                  exclude_split_key: str | Sequence[str] = "test",
                  use_labels: bool = True, max_slices: int | None = None,
                  views: Sequence[str] = (), views_on: str = "all") -> list[DistillSlice]:
    """All slices of the configured folders and COSMOS roots, without duplicates, in a stable order.

    ``views`` adds one augmented copy of every (capped) slice per view, after the slices as stored;
    ``views_on="cosmos"`` adds them to the COSMOS slices only: those are the few images of the evaluated
    anatomy, and views of them cost a handful of teacher passes where views of every slice cost hundreds.
    """
    if views_on not in VIEWS_ON:
        raise DataError(f"data.views_on is {views_on!r}; choose one of: {', '.join(VIEWS_ON)}.")
    items: list[DistillSlice] = []
    for f in folders or ():
        items.extend(folder_slices(f, volume_stride=volume_stride, exclude=exclude))
    cosmos_keys = set()
    for r in cosmos_roots or ():
        listed = [s for s in cosmos_slices(r, exclude_split_file=exclude_split_file,
                                           exclude_split_key=exclude_split_key, use_labels=use_labels)
                  if not any(x in s.path.name for x in exclude)]
        cosmos_keys.update(s.key for s in listed)
        items.extend(listed)
    seen, unique = set(), []
    for it in items:
        if it.key not in seen:
            seen.add(it.key)
            unique.append(it)
    if not unique:
        raise DataError("No training slices found; set data.folders and/or data.cosmos_roots to folders that "
                        "hold images (.png/.jpg/.tif) or volumes (.tif/.npy).")
    if max_slices:
        # Spread a cap over the whole list rather than keeping the first folder only.
        idx = np.linspace(0, len(unique) - 1, num=min(int(max_slices), len(unique))).round().astype(int)
        unique = [unique[i] for i in sorted(set(idx.tolist()))]
    viewed = unique if views_on == "all" else [it for it in unique if it.key in cosmos_keys]
    return unique + [it.with_view(v) for v in dict.fromkeys(views) for it in viewed]
