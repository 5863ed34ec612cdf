"""npe2 writers: a labels layer -> a TIFF (ids, voxel size in mm) or a NIfTI aligned with its source image."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_labels_tiff(path: str, data, meta: dict) -> list[str]:
    """Save one labels layer as TIFF with tifffile; returns the paths written, as npe2 expects.

    2D labels become one page, 3D stacks one page per slice. The smallest unsigned dtype that holds the
    ids is used; the layer's scale goes into the ImageJ metadata so Fiji shows the voxel size: x/y as the
    resolution, z as ``spacing``, all in ``unit: mm`` (napari scale is mm in this plugin). When the
    layer's ``features`` name its objects (the MiniSAM objects panel does), they are written beside the
    TIFF as ``<name>.objects.csv`` (the features table: ``index``, ``name``, ...).
    """
    import tifffile

    labels = np.asarray(data)
    if labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels hold negative ids; TIFF labels must be >= 0")
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32
    out = Path(path)
    if out.suffix.lower() not in (".tif", ".tiff"):
        out = out.with_suffix(".tif")
    out.parent.mkdir(parents=True, exist_ok=True)
    scale = list(meta.get("scale", [])) if meta else []
    kwargs = {}
    if dtype != np.uint32 and len(scale) >= 2:
        # ImageJ hyperstack metadata carries the pixel size (and the slice spacing for stacks).
        kwargs = {"imagej": True, "resolution": (1.0 / scale[-1], 1.0 / scale[-2]),
                  "metadata": {"axes": "ZYX" if labels.ndim == 3 else "YX", "unit": "mm",
                               **({"spacing": scale[-3]} if labels.ndim == 3 and len(scale) >= 3 else {})}}
    else:
        kwargs = {"compression": "zlib"}
    tifffile.imwrite(out, labels.astype(dtype, copy=False), **kwargs)
    written = [str(out)]
    features = (meta or {}).get("features")
    if features is not None and "index" in features and "name" in features and len(features):
        table = out.with_name(out.stem + ".objects.csv")
        _write_csv(table, features)
        written.append(str(table))
    return written


def write_labels_nifti(path: str, data, meta: dict) -> list[str]:
    """Save one labels layer as ``.nii.gz`` (or ``.nii``) that overlays its source image.

    The voxel -> RAS affine is the layer's ``metadata["affine"]``, which the NIfTI and DICOM readers put on
    the image layer and the MiniSAM widget copies to the objects layer it makes for that image. A labels
    layer without one (e.g. made with napari's "new labels" button) gets an affine built from its
    ``scale`` and ``translate`` (right voxel size and origin, RAS axes, no rotation), so it only lines up
    with images that were themselves axis-aligned. The object names go beside it as with the TIFF writer.
    """
    from .io import AFFINE_KEY
    from .io.nifti import affine_from_scale, write_nifti

    labels = np.asarray(data)
    meta = meta or {}
    affine = (meta.get("metadata") or {}).get(AFFINE_KEY)
    if affine is None:
        affine = affine_from_scale(meta.get("scale", [1.0] * labels.ndim), meta.get("translate"))
    out = write_nifti(path, labels, affine, labels=True)
    written = [out]
    features = meta.get("features")
    if features is not None and "index" in features and "name" in features and len(features):
        from .io.nifti import stem

        table = Path(out).with_name(stem(out) + ".objects.csv")
        _write_csv(table, features)
        written.append(str(table))
    return written


def _write_csv(path: Path, features) -> None:
    import csv

    columns = list(features.keys())
    rows = zip(*(list(features[c]) for c in columns))
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
