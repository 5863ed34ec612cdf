"""Image / label TIFF pairs, as a user saves them from napari: ``<name>.tif`` beside ``<name>_labels.tif``.

The label file is an integer image of the image's size (0 background, each id > 0 one object), 2D or a
3D stack for a 3D image; the plugin's labels writer produces exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_qlora_minisam.adapter_training.labelled_samples import spatial_shape

from .errors import DataError

LABELS_SUFFIX = "_labels"
TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class LabelPair:
    """One image and its label image, read."""

    name: str
    image_path: Path
    labels_path: Path
    image: np.ndarray
    labels: np.ndarray


def pairs_in_folder(folder) -> list[tuple[Path, Path]]:
    """``(image, labels)`` paths of every ``<name>.tif`` / ``<name>_labels.tif`` pair in ``folder``.

    Raises:
        DataError: the folder is missing or empty, or a file has no partner.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"data.pairs_dir={folder} is not a folder; it should hold <name>.tif and "
                        "<name>_labels.tif pairs.")
    tiffs = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in TIFF_SUFFIXES}
    labels = {stem[: -len(LABELS_SUFFIX)]: p for stem, p in tiffs.items() if stem.endswith(LABELS_SUFFIX)}
    images = {stem: p for stem, p in tiffs.items() if not stem.endswith(LABELS_SUFFIX)}
    orphans = sorted(str(p) for stem, p in labels.items() if stem not in images)
    if orphans:
        raise DataError(f"Label files without their image in {folder}: {orphans}; each <name>_labels.tif needs "
                        "<name>.tif beside it.")
    missing = sorted(str(p) for stem, p in images.items() if stem not in labels)
    if missing:
        raise DataError(f"Images without a label file in {folder}: {missing}; save each image's labels as "
                        "<name>_labels.tif beside it, or move the image out of the folder.")
    if not images:
        raise DataError(f"No <name>.tif / <name>_labels.tif pair in {folder}.")
    return [(images[stem], labels[stem]) for stem in sorted(images)]


def read_label_pairs(pairs=None, pairs_dir=None) -> list[LabelPair]:
    """Read the pairs listed in ``pairs`` (``[[image, labels], ...]``) and those found in ``pairs_dir``."""
    import tifffile

    listed = []
    for entry in list(pairs or []):
        if isinstance(entry, (str, Path)) or len(entry) != 2:
            raise DataError(f"data.pairs entry {entry!r} is not an [image, labels] pair of file paths.")
        listed.append((Path(entry[0]).expanduser(), Path(entry[1]).expanduser()))
    if pairs_dir:
        listed += pairs_in_folder(pairs_dir)
    if not listed:
        raise DataError("No image/label pairs given; set data.pairs=[[IMAGE.tif,LABELS.tif],...] or "
                        "data.pairs_dir=DIR.")
    out = []
    for image_path, labels_path in listed:
        for path, role in ((image_path, "image"), (labels_path, "label file")):
            if not path.is_file():
                partner = labels_path if role == "image" else image_path
                raise DataError(f"The {role} {path} of the pair with {partner} does not exist.")
        image, labels = tifffile.imread(image_path), tifffile.imread(labels_path)
        if spatial_shape(image.shape, labels.ndim) != labels.shape:
            raise DataError(f"{image_path} has shape {image.shape} but its label file {labels_path} has "
                            f"{labels.shape}; the labels must cover the image pixel for pixel.")
        out.append(LabelPair(image_path.name, image_path, labels_path, image, labels))
    return out
