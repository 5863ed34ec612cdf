"""NIfTI volumes <-> napari-ordered arrays.

NIfTI stores voxels as (x, y, z[, t]) and an affine from those indices to RAS+ mm; napari wants
(z, y, x). :func:`read_nifti` reverses the axes (``data.T``) and reverses the voxel sizes the same way;
:func:`write_nifti` reverses them back, so the affine read is the affine written and a mask painted on the
image overlays it in ITK-SNAP or 3D Slicer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NIFTI_SUFFIXES = (".nii.gz", ".nii")
LABEL_NAME = re.compile(r"(_seg|_labels?|_mask|_objects)$", re.IGNORECASE)  # _objects: the plugin's own output


@dataclass
class Volume:
    """An array in napari order (z, y, x) with its spacing (mm, same order) and voxel -> RAS affine."""

    data: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray  # 4x4, maps data.T indices (x, y, z) to RAS+ mm
    name: str
    is_labels: bool = False
    extra: dict = field(default_factory=dict)


def stem(path) -> str:
    """The file name without ``.nii`` / ``.nii.gz``."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def looks_like_labels(name: str, data: np.ndarray) -> bool:
    """Integer volumes named ``*_seg``, ``*_label``, ``*_labels``, ``*_mask`` or ``*_objects`` are label maps."""
    return data.dtype.kind in "iub" and LABEL_NAME.search(name) is not None


def read_nifti(path) -> Volume:
    """Read a ``.nii`` / ``.nii.gz`` file; the scaled data (``scl_slope``/``scl_inter`` applied) in (z, y, x)."""
    import nibabel as nib

    img = nib.load(str(path))
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ValueError(f"{path}: not a NIfTI image ({type(img).__name__})")
    data = np.asanyarray(img.dataobj)  # keeps the stored integer dtype when no scaling is set
    zooms = tuple(float(z) for z in img.header.get_zooms()[: data.ndim])
    name = stem(path)
    return Volume(data=np.ascontiguousarray(data.T), spacing=zooms[::-1], affine=np.asarray(img.affine, float),
                  name=name, is_labels=looks_like_labels(name, data))


def affine_from_scale(scale, translate=None) -> np.ndarray:
    """A diagonal voxel (x, y, z) -> mm affine from napari's (z, y, x) ``scale`` and ``translate``.

    Used when a layer carries no source affine: the result has the right voxel size and origin but no
    orientation (RAS axes assumed).
    """
    scale = [float(s) for s in scale][::-1][:3]
    translate = [float(t) for t in (translate if translate is not None else [0.0] * len(scale))][::-1][:3]
    affine = np.eye(4)
    affine[: len(scale), : len(scale)] = np.diag(scale)
    affine[: len(translate), 3] = translate
    return affine


def labels_dtype(labels: np.ndarray):
    """The smallest unsigned dtype holding the ids (labels must be integers >= 0)."""
    if labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels hold negative ids; label files must be >= 0")
    top = int(labels.max()) if labels.size else 0
    return np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32


def write_nifti(path, data: np.ndarray, affine, *, labels: bool = False) -> str:
    """Write napari-ordered ``data`` (z, y, x) as NIfTI with ``affine`` (voxel x, y, z -> RAS mm).

    ``labels=True`` stores the smallest unsigned integer type and marks the intent as a label map.
    Returns the path written (``.nii.gz`` added when the name has no NIfTI suffix).
    """
    import nibabel as nib

    out = Path(path)
    if not out.name.lower().endswith(NIFTI_SUFFIXES):
        out = out.with_name(out.name + ".nii.gz")
    array = np.asarray(data)
    if labels:
        array = array.astype(labels_dtype(array), copy=False)
    img = nib.Nifti1Image(np.ascontiguousarray(array.T), np.asarray(affine, float))
    img.header.set_data_dtype(array.dtype)
    img.set_qform(img.affine, code=1)  # scanner-based
    img.set_sform(img.affine, code=1)
    if labels:
        img.header.set_intent("label", ())
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(out))
    return str(out)
