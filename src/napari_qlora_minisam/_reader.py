"""npe2 readers: NIfTI files and DICOM series -> ``[(data, kwargs, layer_type)]``.

The reading itself is Qt-free in :mod:`napari_qlora_minisam.io`; here it becomes layer data: ``scale`` is
the voxel spacing (z, y, x) with ``units`` mm (napari's scale bar reads mm), and ``metadata["affine"]`` keeps the voxel -> RAS affine so that the
labels writer can save a mask that overlays the source image in ITK-SNAP / 3D Slicer.
"""

from __future__ import annotations

from pathlib import Path

from .io import AFFINE_KEY
from .io.nifti import NIFTI_SUFFIXES, Volume


def _layer(volume: Volume, source: str) -> tuple:
    metadata = {AFFINE_KEY: volume.affine, "source_path": source, **volume.extra}
    kwargs = {"name": volume.name, "scale": tuple(volume.spacing), "units": ("mm",) * len(volume.spacing),
              "metadata": metadata}
    return (volume.data, kwargs, "labels" if volume.is_labels else "image")


def _single(path):
    if isinstance(path, (list, tuple)):
        return path[0] if len(path) == 1 else None
    return path


def get_nifti_reader(path):
    """npe2 reader hook: a reader for one ``.nii`` / ``.nii.gz`` file, else ``None``."""
    path = _single(path)
    if path is None or not str(path).lower().endswith(NIFTI_SUFFIXES):
        return None
    return read_nifti_layers


def read_nifti_layers(path) -> list[tuple]:
    from .annotation.objects import features_with_names
    from .io.nifti import read_nifti
    from .series import names_file, read_names

    path = _single(path)
    data, kwargs, kind = _layer(read_nifti(path), str(path))
    names = read_names(names_file(path)) if kind == "labels" else {}
    if names:  # the object names the writers put beside the file come back as the layer's features
        kwargs["features"] = features_with_names(names)
    return [(data, kwargs, kind)]


def get_dicom_reader(path):
    """npe2 reader hook: a reader for a folder holding DICOM files, or one ``.dcm`` file; else ``None``."""
    from .io.dicom import is_dicom_file, series_files

    path = _single(path)
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        return read_dicom_layers if series_files(p) else None
    return read_dicom_layers if is_dicom_file(p) else None


def read_dicom_layers(path) -> list[tuple]:
    from .io.dicom import read_dicom_series

    path = _single(path)
    return [_layer(read_dicom_series(path), str(path))]
