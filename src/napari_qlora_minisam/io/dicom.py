"""A DICOM series (a folder of single-frame slices) -> one volume in napari order (z, y, x).

Slices are sorted by their position along the slice normal (``ImagePositionPatient`` projected on
``ImageOrientationPatient``'s normal; ``InstanceNumber`` when positions are missing), each slice's
``RescaleSlope``/``RescaleIntercept`` is applied (CT in HU), and the spacing comes from ``PixelSpacing``
and the distance between slice positions. Problems are one-line :class:`DicomError`\\ s naming the
file or series.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from .nifti import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class DicomError(ValueError):
    """A DICOM series that cannot be read as one volume (the message names the file or series)."""


def is_dicom_file(path) -> bool:
    """``.dcm`` files, and files with the ``DICM`` magic after the 128-byte preamble."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def series_files(folder) -> list[Path]:
    """The DICOM files directly inside ``folder`` (sorted by name; hidden files skipped)."""
    return sorted(p for p in Path(folder).iterdir() if not p.name.startswith(".") and is_dicom_file(p))


def _describe(uid: str, datasets: list) -> str:
    ds = datasets[0]
    modality, description = getattr(ds, "Modality", ""), getattr(ds, "SeriesDescription", "")
    what = "".join([f"{modality} " if modality else "", f"'{description}', " if description else ""])
    return f"{uid} ({what}{len(datasets)} files)"


def read_dicom_series(path) -> Volume:
    """Read the series in folder ``path``, or the series that the file ``path`` belongs to in its folder.

    A folder holding several series is an error that names them (pass one of its files to pick a series).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    files = series_files(folder)
    if not files:
        raise DicomError(f"{folder}: no DICOM files")
    by_series: dict[str, list] = defaultdict(list)
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except (InvalidDicomError, OSError) as exc:
            raise DicomError(f"{f}: not a readable DICOM file ({exc})") from None
        by_series[str(getattr(ds, "SeriesInstanceUID", "<no SeriesInstanceUID>"))].append((f, ds))
    if path.is_dir():
        if len(by_series) > 1:
            names = "; ".join(_describe(uid, [ds for _, ds in items]) for uid, items in by_series.items())
            raise DicomError(f"{folder}: {len(by_series)} DICOM series in one folder ({names}); "
                             "open one of their files to pick a series")
        [items] = by_series.values()
    else:
        items = next(v for v in by_series.values() if any(f == path for f, _ in v))
    return _stack(items, folder)


def _pixels(f: Path, ds) -> np.ndarray:
    if "PixelData" not in ds:
        raise DicomError(f"{f}: no pixel data (PixelData element missing)")
    syntax = ds.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else None
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises several types for undecodable / unsupported pixel data
        if syntax is not None and syntax.is_compressed:
            raise DicomError(f"{f}: compressed transfer syntax {syntax.name} ({syntax}) cannot be decoded "
                             f"here ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); a pydicom decoder "
                             "plugin (pylibjpeg, python-gdcm) may be missing, or the data is corrupt") from None
        raise DicomError(f"{f}: pixel data cannot be read ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:120]})") from None


def _floats(ds, keyword, default):
    value = getattr(ds, keyword, None)
    return np.asarray([float(v) for v in value], float) if value is not None else np.asarray(default, float)


def _stack(items: list, folder: Path) -> Volume:
    _, first = items[0]
    orientation = _floats(first, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0])
    row_dir, col_dir = orientation[:3], orientation[3:]  # along a row (x, columns) / down a column (y, rows)
    normal = np.cross(row_dir, col_dir)
    positions = [getattr(ds, "ImagePositionPatient", None) for _, ds in items]
    if all(p is not None for p in positions):
        items = sorted(items, key=lambda it: float(np.dot(_floats(it[1], "ImagePositionPatient", [0] * 3), normal)))
    else:
        items = sorted(items, key=lambda it: int(getattr(it[1], "InstanceNumber", 0) or 0))

    slices = []
    for f, ds in items:
        raw = _pixels(f, ds)
        if raw.ndim != 2:
            raise DicomError(f"{f}: {raw.ndim}D pixel data (multi-frame or colour); only single-frame "
                             "grey slices are supported")
        if slices and raw.shape != slices[0][1].shape:
            raise DicomError(f"{f}: slice shape {raw.shape} differs from {slices[0][1].shape} in {folder}")
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        slices.append(((slope, intercept), raw))
    data = _rescale(slices)

    dy, dx = (float(v) for v in getattr(first, "PixelSpacing", [1.0, 1.0]))
    origin = _floats(items[0][1], "ImagePositionPatient", [0, 0, 0])
    if len(items) > 1 and all(p is not None for p in positions):
        along = np.array([np.dot(_floats(ds, "ImagePositionPatient", [0] * 3), normal) for _, ds in items])
        gaps = np.diff(along)
        if np.any(np.isclose(gaps, 0.0, atol=1e-4)):
            raise DicomError(f"{folder}: two slices share a position; the series holds duplicates")
        dz = float(np.median(gaps))
        if np.ptp(gaps) > 0.01 * abs(dz):
            warnings.warn(f"{folder}: slice gaps vary from {gaps.min():.3g} to {gaps.max():.3g} mm (missing "
                          f"slices?); using the median {dz:.3g} mm as the z spacing", stacklevel=3)
        step = (_floats(items[-1][1], "ImagePositionPatient", [0] * 3) - origin) / (len(items) - 1)
    else:
        dz = float(getattr(first, "SpacingBetweenSlices", None) or getattr(first, "SliceThickness", None) or 1.0)
        step = normal * dz
    # voxel (column i, row j, slice k) -> LPS mm, then to RAS like NIfTI
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_dir * dx, col_dir * dy, step, origin
    name = str(getattr(first, "SeriesDescription", "") or folder.name)
    extra = {"SeriesInstanceUID": str(getattr(first, "SeriesInstanceUID", "")),
             "Modality": str(getattr(first, "Modality", "")), "files": [str(f) for f, _ in items]}
    return Volume(data=data, spacing=(abs(dz), dy, dx), affine=LPS_TO_RAS @ lps, name=name, extra=extra)


def _rescale(slices: list) -> np.ndarray:
    """Stack the slices with slope/intercept applied: integers stay integers (int16 when the range fits)."""
    integral = all(float(s).is_integer() and float(i).is_integer() for (s, i), _ in slices)
    if not integral:
        return np.stack([raw.astype(np.float32) * s + i for (s, i), raw in slices]).astype(np.float32)
    out = np.stack([raw.astype(np.int64) * int(s) + int(i) for (s, i), raw in slices])
    for dtype in (np.int16, np.int32):
        info = np.iinfo(dtype)
        if out.size == 0 or (out.min() >= info.min and out.max() <= info.max):
            return out.astype(dtype)
    return out
