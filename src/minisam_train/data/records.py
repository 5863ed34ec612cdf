"""What every data reader yields: one 2D slice with its objects, whatever the source (PNG, TIFF volume)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class SliceEntry:
    """Where one slice lives, known before any pixel is read (cheap to list, filter and count).

    Attributes:
        dataset: COSMOS dataset folder name (``22_Heart``) or volume name.
        modality: ``ct``, ``mri``... (``unknown`` when no map names the dataset).
        image_name: file name (``22_Heart_4_5.png``) or ``<volume>_z<k>`` for a volume slice.
        image_path: the image file (for a volume: the 3D TIFF).
        label_path: the label file (for a volume: the 3D label TIFF).
        classes: class name -> grey value in the label, in the dataset JSON's order.
        slice_index: z index inside a volume, ``None`` for 2D files.
    """

    dataset: str
    modality: str
    image_name: str
    image_path: Path
    label_path: Path
    classes: dict
    slice_index: int | None = None


@dataclass
class SliceRecord:
    """One slice read from disk.

    Attributes:
        image: ``(H, W)`` or ``(H, W, 3)`` pixels as stored (uint8 for COSMOS PNGs).
        label: ``(H, W)`` integer label image.
        dataset, modality, image_name: as in :class:`SliceEntry`.
        objects: class name -> ``(H, W)`` bool mask, only classes with at least ``min_object_pixels``
            pixels on this slice (the COSMOS rule), in the dataset JSON's order.
    """

    image: np.ndarray
    label: np.ndarray
    dataset: str
    modality: str
    image_name: str
    objects: dict = field(default_factory=dict)
    entry: SliceEntry | None = None


def objects_from_label(label: np.ndarray, classes: dict, min_object_pixels: int = 50) -> dict:
    """Split a label image into per-class masks, dropping classes below ``min_object_pixels`` pixels."""
    objects = {}
    for name, value in classes.items():
        mask = label == value
        if int(mask.sum()) >= min_object_pixels:
            objects[name] = mask
    return objects


class SliceReader:
    """Sequence behaviour shared by the slice readers: subclasses set ``entries`` and ``classes`` and
    implement ``read(entry)``, which is the only place a slice's pixels are loaded."""

    entries: list
    classes: dict

    def read(self, entry: SliceEntry) -> SliceRecord:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> SliceRecord:
        return self.read(self.entries[index])

    def __iter__(self):
        for entry in self.entries:
            yield self.read(entry)

    @property
    def datasets(self) -> list[str]:
        return list(self.classes)
