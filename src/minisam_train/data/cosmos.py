"""Reader for the official COSMOS 1050K layout (see ``shared/design/COSMOS_PROTOCOL.md``).

::

    ROOT/data/<split>/<DATASET>/images/<name>.png
    ROOT/data/<split>/<DATASET>/labels/<name>.png
    ROOT/data_infor_json/<DATASET>.json      {"info": {"1": "LeftVentricle"}, "color": {"1": 85}}
    ROOT/modalities.json                     {"22_Heart": "mri"}   (ours; COSMOS has no modality field)

Listing is cheap (no pixels are read); pixels are read one slice at a time, so a real COSMOS copy with a
million slices is never held in memory.

Example:
    >>> ds = CosmosDataset("../shared/data/cosmos_sample", datasets=["22_Heart"])
    >>> for rec in ds:
    ...     rec.image, rec.objects["LeftVentricle"], rec.modality
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import DataError
from .records import SliceEntry, SliceReader, SliceRecord, objects_from_label

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MODALITIES_FILE = "modalities.json"
UNKNOWN_MODALITY = "unknown"


def read_dataset_classes(json_path) -> dict[str, int]:
    """Class name -> grey value from a COSMOS ``data_infor_json/<DATASET>.json``.

    Raises:
        DataError: the file is missing, not JSON, or ``info`` and ``color`` do not name the same keys.
    """
    json_path = Path(json_path)
    if not json_path.is_file():
        raise DataError(
            f"Missing class file {json_path}: every COSMOS dataset needs data_infor_json/<DATASET>.json "
            '({"info": {"1": "ClassName"}, "color": {"1": 255}}).'
        )
    try:
        raw = json.loads(json_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"Class file {json_path} is not valid JSON ({exc}).") from exc
    info = raw.get("info") if isinstance(raw, dict) else None
    color = raw.get("color") if isinstance(raw, dict) else None
    if not isinstance(info, dict) or not isinstance(color, dict):
        raise DataError(f"Class file {json_path} needs both an 'info' and a 'color' object.")
    missing = sorted(set(info) ^ set(color))
    if missing:
        raise DataError(f"Class file {json_path}: keys {missing} appear in only one of 'info' and 'color'.")
    classes = {}
    for key in sorted(info, key=lambda k: (len(k), k)):  # "1" < "2" < "10"
        classes[str(info[key])] = int(color[key])
    if len(set(classes.values())) != len(classes):
        raise DataError(f"Class file {json_path}: two classes share one grey value ({classes}).")
    return classes


def read_modalities(root) -> dict[str, str]:
    """Dataset -> modality from ``ROOT/modalities.json``; empty when the file is absent."""
    path = Path(root) / MODALITIES_FILE
    if not path.is_file():
        return {}
    try:
        found = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); it should map dataset names to modalities.") from exc
    if not isinstance(found, dict):
        raise DataError(f"{path} should map dataset names to modalities, e.g. {{\"22_Heart\": \"mri\"}}.")
    return {str(k): str(v).lower() for k, v in found.items()}


def read_grey_label(path) -> np.ndarray:
    """A label image as a 2D integer array (grey RGB(A) labels are accepted, coloured ones are not)."""
    label = read_image(path)
    if label.ndim == 3:
        channels = label[..., :3]
        if not (channels == channels[..., :1]).all():
            raise DataError(f"Label {path} is a colour image; COSMOS labels are grey values (one per class).")
        label = channels[..., 0]
    if label.ndim != 2:
        raise DataError(f"Label {path} has shape {label.shape}; expected a 2D grey image.")
    return label


def read_image(path) -> np.ndarray:
    """Pixels of one image file, or a :class:`DataError` saying it cannot be read."""
    import imageio.v3 as iio

    try:
        return np.asarray(iio.imread(path))
    except Exception as exc:  # imageio raises many types for truncated or foreign files
        raise DataError(f"Cannot read image {path} ({type(exc).__name__}: {exc}).") from exc


def check_label_values(label: np.ndarray, classes: Mapping[str, int], where) -> None:
    """Refuse a label whose grey values are neither background (0) nor a class in the JSON."""
    unknown = sorted(set(np.unique(label).tolist()) - {0} - set(classes.values()))
    if unknown:
        raise DataError(
            f"Label {where} has grey value(s) {unknown} that its dataset JSON does not define "
            f"(classes: {dict(classes)}); fix the JSON 'color' map or the label."
        )


class CosmosDataset(SliceReader):
    """Slices of one or several COSMOS-layout roots, with per-class object masks.

    Args:
        root: one root folder or a list of them.
        split: the folder under ``ROOT/data`` (``test_data``, ``train_data``, ``valid_data``).
        datasets: keep only these dataset names (``None`` or empty = all).
        modalities: dataset -> modality; overrides ``modalities.json`` found beside the data.
        include: dataset -> image names to keep (e.g. :func:`~.splits.split_images`); datasets missing from
            it are dropped. ``None`` keeps everything.
        min_object_pixels: classes with fewer pixels on a slice are not objects of that slice.

    Raises:
        DataError: a root or split folder is missing, a dataset has no class JSON, or nothing is left.
    """

    def __init__(self, root, split: str = "test_data", datasets: Sequence[str] | None = None,
                 modalities: Mapping[str, str] | None = None, include: Mapping[str, set] | None = None,
                 min_object_pixels: int = 50):
        roots = [root] if isinstance(root, (str, Path)) else list(root)
        if not roots:
            raise DataError("No data root given; pass data.root=DIR (the folder holding data/ and data_infor_json/).")
        self.roots = [Path(r) for r in roots]
        self.split = split
        self.min_object_pixels = int(min_object_pixels)
        self.classes: dict[str, dict[str, int]] = {}
        self.entries: list[SliceEntry] = []
        wanted = set(datasets or [])
        for r in self.roots:
            self._list_root(r, wanted, dict(modalities or {}), include)
        if wanted - set(self.classes):
            raise DataError(f"Dataset(s) {sorted(wanted - set(self.classes))} not found under "
                            f"{[str(r) for r in self.roots]} (split {split!r}).")
        if not self.entries:
            raise DataError(
                f"No images found under {[str(r) for r in self.roots]} (split {split!r}, datasets "
                f"{sorted(wanted) or 'all'}{', after the split file filter' if include is not None else ''})."
            )

    def _list_root(self, root: Path, wanted: set, modalities: dict, include) -> None:
        split_dir = root / "data" / self.split
        if not split_dir.is_dir():
            raise DataError(f"{split_dir} does not exist; data.root must hold data/{self.split}/<DATASET>/ "
                            "(the official COSMOS 1050K layout).")
        modality_of = {**read_modalities(root), **{k: str(v).lower() for k, v in modalities.items()}}
        for ds_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            ds = ds_dir.name
            if wanted and ds not in wanted:
                continue
            if include is not None and ds not in include:
                continue
            if ds in self.classes:
                raise DataError(f"Dataset {ds} appears under two roots; give each root distinct datasets.")
            classes = read_dataset_classes(root / "data_infor_json" / f"{ds}.json")
            self.classes[ds] = classes
            images_dir, labels_dir = ds_dir / "images", ds_dir / "labels"
            if not images_dir.is_dir():
                raise DataError(f"{images_dir} is missing; every dataset folder holds images/ and labels/.")
            for img in sorted(images_dir.iterdir()):
                if img.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if include is not None and img.name not in include[ds]:
                    continue
                self.entries.append(SliceEntry(ds, modality_of.get(ds, UNKNOWN_MODALITY), img.name, img,
                                               labels_dir / img.name, classes))

    # -- reading ------------------------------------------------------------------------------------
    def read(self, entry: SliceEntry) -> SliceRecord:
        """Read one slice; :class:`DataError` if a file is unreadable, sizes differ or a label value is unknown."""
        if not entry.label_path.is_file():
            raise DataError(f"Image {entry.image_path} has no label {entry.label_path}.")
        image = read_image(entry.image_path)
        label = read_grey_label(entry.label_path)
        if image.shape[:2] != label.shape:
            raise DataError(f"Image {entry.image_path} is {image.shape[:2]} but its label is {label.shape}; "
                            "an image and its label must have the same height and width.")
        check_label_values(label, entry.classes, entry.label_path)
        return SliceRecord(image, label, entry.dataset, entry.modality, entry.image_name,
                           objects_from_label(label, entry.classes, self.min_object_pixels), entry)

    def modality_of(self, dataset: str) -> str:
        for e in self.entries:
            if e.dataset == dataset:
                return e.modality
        raise KeyError(dataset)
