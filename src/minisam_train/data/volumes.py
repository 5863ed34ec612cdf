"""3D label volumes (a TIFF image + a TIFF label per volume) read slice-wise, as COSMOS-like slices.

A volume folder holds ``volumes.json`` and ``<name>_image.tif`` / ``<name>_label.tif``::

    {"lung1": {"modality": "ct", "object": "LungTumour", "shape_zyx": [48, 512, 512], ...}}

``object`` names label value 1; a ``classes`` map (``{"Liver": 1, "Tumour": 2}``) names several. Volumes can
also be listed one by one (``{"image": ..., "label": ..., "modality": ..., "name": ..., "object": ...}``).

Like the COSMOS preprocessing, each image volume is min-max scaled to 0..255 *per volume* before slicing,
so a CT slice keeps its place in the volume's HU range instead of being stretched on its own.
Only slices where some class has at least ``min_object_pixels`` pixels are listed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .cosmos import UNKNOWN_MODALITY, check_label_values
from .errors import DataError
from .records import SliceEntry, SliceReader, SliceRecord, objects_from_label

VOLUMES_FILE = "volumes.json"


def _read_tiff(path) -> np.ndarray:
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise DataError(f"Volume file {path} does not exist.")
    try:
        return np.asarray(tifffile.imread(path))
    except Exception as exc:
        raise DataError(f"Cannot read volume {path} ({type(exc).__name__}: {exc}).") from exc


def scale_volume_uint8(volume: np.ndarray) -> np.ndarray:
    """Min-max scale a whole volume to uint8 0..255 (the COSMOS rule for 3D sources)."""
    v = volume.astype(np.float32)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        raise DataError("Volume is constant; there is nothing to segment.")
    return np.round((v - lo) / (hi - lo) * 255.0).astype(np.uint8)


def volume_specs_from_folder(root) -> list[dict]:
    """Volume specs from ``ROOT/volumes.json`` (file names ``<name>_image.tif`` / ``<name>_label.tif``)."""
    root = Path(root)
    path = root / VOLUMES_FILE
    if not path.is_file():
        raise DataError(f"Missing {path}: a volume folder needs volumes.json naming each volume's modality "
                        "and object.")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}).") from exc
    specs = []
    for name, info in meta.items():
        specs.append({"name": name, "image": root / f"{name}_image.tif", "label": root / f"{name}_label.tif",
                      **{k: v for k, v in info.items() if k in ("modality", "object", "classes")}})
    return specs


def _classes_of(spec: Mapping) -> dict[str, int]:
    if spec.get("classes"):
        return {str(k): int(v) for k, v in dict(spec["classes"]).items()}
    return {str(spec.get("object") or "object"): 1}


class VolumeDataset(SliceReader):
    """Slices of 3D volumes with per-class masks, the same records as :class:`~.cosmos.CosmosDataset`.

    Args:
        root: a folder with ``volumes.json`` (or ``None``).
        volumes: explicit specs ``{image, label, name, modality, object | classes}`` (added after ``root``'s).
        names: keep only these volume names.
        min_object_pixels: as in COSMOS.
        axis: slicing axis of the ``(z, y, x)`` arrays (0 = axial slices).
    """

    def __init__(self, root=None, volumes: Sequence[Mapping] | None = None, names: Sequence[str] | None = None,
                 min_object_pixels: int = 50, axis: int = 0):
        specs = (volume_specs_from_folder(root) if root else []) + [dict(v) for v in (volumes or [])]
        if names:
            specs = [s for s in specs if s.get("name") in set(names)]
        if not specs:
            raise DataError("No volumes to read; give a folder with volumes.json or a list of volumes.")
        self.min_object_pixels = int(min_object_pixels)
        self.axis = int(axis)
        self.classes: dict[str, dict[str, int]] = {}
        self.entries: list[SliceEntry] = []
        self._cached: tuple | None = None  # one volume at a time: slices come in order
        for spec in specs:
            self._list_volume(spec)
        if not self.entries:
            raise DataError(f"No slice of the volumes {[s.get('name') for s in specs]} has an object of at "
                            f"least {self.min_object_pixels} pixels.")

    def _list_volume(self, spec: Mapping) -> None:
        if "image" not in spec or "label" not in spec:
            raise DataError(f"Volume spec {dict(spec)} needs 'image' and 'label' paths.")
        image_path, label_path = Path(spec["image"]), Path(spec["label"])
        name = str(spec.get("name") or image_path.stem.removesuffix("_image"))
        classes = _classes_of(spec)
        label = _read_tiff(label_path)
        if label.ndim != 3:
            raise DataError(f"Label volume {label_path} has shape {label.shape}; expected (z, y, x).")
        check_label_values(label, classes, label_path)
        self.classes[name] = classes
        moved = np.moveaxis(label, self.axis, 0)
        for k in range(moved.shape[0]):
            if objects_from_label(moved[k], classes, self.min_object_pixels):
                self.entries.append(SliceEntry(name, str(spec.get("modality") or UNKNOWN_MODALITY).lower(),
                                               f"{name}_z{k}", image_path, label_path, classes, k))

    def _volume_pair(self, entry: SliceEntry) -> tuple[np.ndarray, np.ndarray]:
        key = (entry.image_path, entry.label_path)
        if self._cached is None or self._cached[0] != key:
            self._cached = None  # never keep a stale pair if this read fails
            image = np.moveaxis(scale_volume_uint8(_read_tiff(entry.image_path)), self.axis, 0)
            label = np.moveaxis(_read_tiff(entry.label_path), self.axis, 0)
            if image.shape != label.shape:
                raise DataError(f"Volume {entry.image_path} is {image.shape} but its label is {label.shape}; "
                                "they must have the same shape.")
            self._cached = (key, (image, label))
        return self._cached[1]

    def read(self, entry: SliceEntry) -> SliceRecord:
        """Read one slice (image scaled per volume to uint8, label as stored)."""
        image, label = self._volume_pair(entry)
        lab = label[entry.slice_index]
        return SliceRecord(image[entry.slice_index], lab, entry.dataset, entry.modality, entry.image_name,
                           objects_from_label(lab, entry.classes, self.min_object_pixels), entry)

