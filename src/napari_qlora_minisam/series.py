"""An image series: a folder (or list) of images and volumes annotated one case at a time. Qt-free.

:class:`ImageSeries` knows the cases, the one open (``index``), where each case's objects are saved and
which cases are done. The napari widget's *Image series* panel drives it; scripts can too::

    series = ImageSeries.from_folder("/data/cases", output_dir="/data/objects", fmt="nifti")
    case = series.load(series.first_not_done())       # image layer data and the objects saved before
    ...                                                # annotate case.objects (or a new label image)
    series.save_objects(case.index, labels, names={1: "liver"})
    series.go(case.index + 1)

Saving follows two rules so that work is never lost:

- a case's objects are written only when they differ from what was read from (or last written to) its
  file, through a temporary file renamed over the old one (a crash leaves the old file or the new one,
  never half of one);
- an objects file always holds at least one object: erasing every object of a case that had a file removes
  the file, and a case whose file was never read is never emptied.

A case is **done** when its objects file exists (in the chosen format, under ``output_dir`` or next to the
image). Nothing else is stored: a folder of objects files is the whole state of a series.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import MiniSamError

# Files a series opens as cases; a sub-folder holding DICOM files is a case too (one series).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".nii", ".nii.gz")
# Label maps that sit beside images in most data sets (``*_seg``, ``*_label(s)``, ``*_mask``), and the
# files this module writes (``*_objects``): never cases.
NOT_A_CASE = re.compile(r"_(seg|label|mask)|_objects$", re.IGNORECASE)
OBJECTS_SUFFIX = "_objects"
FORMATS = {"tiff": ".tif", "nifti": ".nii.gz"}


class SeriesError(MiniSamError):
    """A series that cannot be opened, a case that cannot be read, objects that cannot be saved."""


def case_name(path) -> str:
    """A case's name: the file name without its image extension (``.nii.gz`` included), or the folder name."""
    name = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _natural(path: Path) -> list:
    """Sort key: ``case_2`` before ``case_10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def find_cases(folder, exclude=None) -> list[Path]:
    """The images and DICOM series folders directly inside ``folder``, in natural order.

    Hidden entries, label maps (see :data:`NOT_A_CASE`) and the folder ``exclude`` (the output folder,
    when it lies inside) are skipped.
    """
    from .io.dicom import series_files

    folder = Path(folder)
    if not folder.is_dir():
        raise SeriesError(f"{folder}: not a folder; pick the folder that holds the images")
    if series_files(folder):
        raise SeriesError(f"{folder} holds DICOM slices, so it is one series: open the folder above it (one "
                          "sub-folder per series), or open this one with File → Open Folder")
    skip = None if exclude is None else Path(exclude).resolve()
    cases = []
    for path in folder.iterdir():
        if path.name.startswith(".") or path.resolve() == skip:
            continue
        if path.is_dir():
            if series_files(path):
                cases.append(path)
        elif path.name.lower().endswith(IMAGE_SUFFIXES) and not NOT_A_CASE.search(case_name(path)):
            cases.append(path)
    if not cases:
        raise SeriesError(f"{folder}: no images in it ({', '.join(IMAGE_SUFFIXES)} files or DICOM series "
                          "folders; label files named *_seg*, *_label*, *_mask* are skipped)")
    return sorted(cases, key=_natural)


def read_case_image(path) -> tuple:
    """A case's image as napari layer data ``(data, kwargs, "image")``, named after the case.

    NIfTI and DICOM keep the readers' ``scale`` (mm) and ``metadata["affine"]``; TIFF, PNG and JPEG files
    carry no spacing here (scale 1). Colour 2D images open as RGB (an alpha channel is dropped).
    """
    from ._reader import read_dicom_layers, read_nifti_layers

    path = Path(path)
    try:
        if path.is_dir():
            [(data, kwargs, _)] = read_dicom_layers(str(path))
        elif path.name.lower().endswith((".nii", ".nii.gz")):
            [(data, kwargs, _)] = read_nifti_layers(str(path))
        elif path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            data, kwargs = np.asarray(tifffile.imread(path)), {"metadata": {"source_path": str(path)}}
        else:
            import imageio.v3 as iio

            data, kwargs = np.asarray(iio.imread(path)), {"metadata": {"source_path": str(path)}}
            if data.ndim == 3 and data.shape[-1] in (3, 4):
                data, kwargs["rgb"] = data[..., :3], True
    except Exception as exc:  # each reader raises its own types for missing, truncated or foreign files
        raise SeriesError(f"{path}: cannot be read as an image ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); fix the file or move it "
                          "out of the series folder") from None
    if data.ndim < 2:
        raise SeriesError(f"{path}: holds a {data.ndim}D array, not an image; move it out of the series folder")
    return data, {**kwargs, "name": case_name(path)}, "image"


def read_objects(path) -> np.ndarray:
    """A saved objects file (TIFF or NIfTI) as a label array in napari's axis order."""
    path = Path(path)
    try:
        if path.name.lower().endswith((".nii", ".nii.gz")):
            from .io.nifti import read_nifti

            return np.asarray(read_nifti(path).data)
        import tifffile

        return np.asarray(tifffile.imread(path))
    except Exception as exc:
        raise SeriesError(f"{path}: the saved objects cannot be read ({type(exc).__name__}: {exc}); move the "
                          "file away to start this case afresh") from None


def names_file(objects_path) -> Path:
    """The object names beside an objects file, as the writers name it: ``<case>_objects.objects.csv``."""
    path = Path(objects_path)
    return path.with_name(case_name(path) + ".objects.csv")


def read_names(path) -> dict[int, str]:
    """Object names from the ``<objects file>.objects.csv`` the writers put beside it (``{}`` if none)."""
    import csv

    if not Path(path).exists():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {int(r["index"]): r["name"] for r in rows if r.get("index", "").isdigit() and int(r["index"]) > 0}


def _digest(labels: np.ndarray, names: dict) -> str:
    """What a save compares: the label values (whatever their dtype) and the object names."""
    from .io.nifti import labels_dtype

    compact = np.ascontiguousarray(labels, dtype=labels_dtype(labels))
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((compact.shape, sorted(names.items()))).encode())
    h.update(compact.data)
    return h.hexdigest()


@dataclass
class LoadedCase:
    """A case read from disk: its image as layer data and the objects saved for it (``None``: none)."""

    index: int
    layer: tuple  # (data, kwargs, "image")
    objects: np.ndarray | None
    names: dict[int, str] = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple:
        data, kwargs, _ = self.layer
        return tuple(data.shape[:-1]) if kwargs.get("rgb") else tuple(data.shape)


class ImageSeries:
    """Cases (image files or DICOM series folders), the one open, and where their objects go.

    Args:
        cases: image files or DICOM series folders, in the order they are annotated.
        output_dir: where the objects files go (made when first written); ``None``: next to each image.
        fmt: ``"tiff"`` (``<case>_objects.tif``, ImageJ, voxel size in mm) or ``"nifti"``
            (``<case>_objects.nii.gz`` with the image's affine, so it overlays it in ITK-SNAP or 3D Slicer).
    """

    def __init__(self, cases, *, output_dir=None, fmt: str = "tiff"):
        self.cases = [Path(c) for c in cases]
        if not self.cases:
            raise SeriesError("a series needs at least one image")
        self.output_dir = None if output_dir in (None, "") else Path(output_dir)
        self.fmt = fmt
        self.index = 0
        self._on_disk: dict[Path, str | None] = {}  # objects file -> digest of what it holds (None: no file)

    @classmethod
    def from_folder(cls, folder, *, output_dir=None, fmt: str = "tiff") -> "ImageSeries":
        return cls(find_cases(folder, exclude=output_dir), output_dir=output_dir, fmt=fmt)

    @property
    def fmt(self) -> str:
        return self._fmt

    @fmt.setter
    def fmt(self, value: str) -> None:
        if value not in FORMATS:
            raise SeriesError(f"objects format {value!r} is not one of {', '.join(FORMATS)}")
        self._fmt = value

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def current(self) -> Path:
        return self.cases[self.index]

    def name(self, i: int | None = None) -> str:
        return case_name(self.cases[self.index if i is None else i])

    # -- moving -----------------------------------------------------------------------------------------
    def go(self, i: int) -> int:
        if not 0 <= i < len(self):
            raise SeriesError(f"case {i + 1} is outside the series (1 to {len(self)})")
        self.index = i
        return i

    def next(self) -> int:
        return self.go(self.index + 1)

    def previous(self) -> int:
        return self.go(self.index - 1)

    # -- progress ---------------------------------------------------------------------------------------
    def objects_path(self, i: int | None = None) -> Path:
        """Where case ``i``'s objects are saved: ``<output_dir or its folder>/<case>_objects.tif|.nii.gz``."""
        case = self.cases[self.index if i is None else i]
        folder = self.output_dir if self.output_dir is not None else case.parent
        return folder / f"{case_name(case)}{OBJECTS_SUFFIX}{FORMATS[self.fmt]}"

    def names_path(self, i: int | None = None) -> Path:
        return names_file(self.objects_path(i))

    def is_done(self, i: int) -> bool:
        return self.objects_path(i).exists()

    def done_count(self) -> int:
        return sum(self.is_done(i) for i in range(len(self)))

    def first_not_done(self) -> int:
        """The first case without objects (where an interrupted series resumes); the first case if all are done."""
        return next((i for i in range(len(self)) if not self.is_done(i)), 0)

    def progress_text(self) -> str:
        return f"case {self.index + 1} / {len(self)}, {self.done_count()} done"

    # -- reading and writing ----------------------------------------------------------------------------
    def load(self, i: int) -> LoadedCase:
        """Read case ``i``'s image and the objects saved for it (does not move ``index``)."""
        layer = read_case_image(self.cases[i])
        path = self.objects_path(i)
        objects, names = None, {}
        if path.exists():
            objects, names = read_objects(path), read_names(self.names_path(i))
        case = LoadedCase(i, layer, objects, names)
        if objects is not None and tuple(objects.shape) != case.spatial_shape:
            raise SeriesError(f"{path} holds objects of shape {tuple(objects.shape)} but {self.cases[i].name} "
                              f"is {case.spatial_shape}: move the file away, or pick another output folder")
        self._on_disk[path] = None if objects is None else _digest(objects, names)
        return case

    def save_objects(self, i: int, labels, *, names: dict | None = None, scale=None, translate=None,
                     affine=None) -> str:
        """Save case ``i``'s objects if they changed since they were read or last written.

        Args:
            labels: the case's label image (``None``: it has none, e.g. nothing was committed).
            names: object id -> name, written beside the file as ``*.objects.csv``.
            scale, translate: the image's voxel size (mm) and origin, in napari's axis order.
            affine: the image's voxel -> RAS affine (NIfTI/DICOM), used by the NIfTI format.

        Returns:
            ``"written"``, ``"removed"`` (every object was erased: the file went, the case is not done),
            or ``"unchanged"``.

        Raises:
            SeriesError: the file cannot be written; the previous file, if any, is untouched.
        """
        path = self.objects_path(i)
        if labels is None:
            return "unchanged"
        labels = np.asarray(labels)
        names = {int(k): str(v) for k, v in (names or {}).items() if int(k) > 0}
        if not labels.any():
            if path in self._on_disk and self._on_disk[path] is not None and path.exists():
                self._remove(path, self.names_path(i))
                self._on_disk[path] = None
                return "removed"
            return "unchanged"  # never empties a file it has not read
        digest = _digest(labels, names)
        if self._on_disk.get(path) == digest and path.exists():
            return "unchanged"
        self._write(path, labels, names, scale, translate, affine)
        self._on_disk[path] = digest
        return "written"

    def _write(self, path: Path, labels, names, scale, translate, affine) -> None:
        from ._writer import write_labels_nifti, write_labels_tiff
        from .annotation.objects import features_with_names

        folder = path.parent
        meta = {"scale": list(scale) if scale is not None else [1.0] * labels.ndim,
                "translate": list(translate) if translate is not None else [0.0] * labels.ndim,
                "metadata": {} if affine is None else {"affine": np.asarray(affine)},
                "features": features_with_names(names) if names else None}
        try:
            folder.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".minisam-saving-", dir=folder))
        except OSError as exc:
            raise SeriesError(f"cannot write the objects into {folder} ({exc.strerror or exc}): pick an output "
                              "folder you can write to") from None
        try:
            writer = write_labels_nifti if self.fmt == "nifti" else write_labels_tiff
            written = [Path(p) for p in writer(str(staging / path.name), labels, meta)]
            # the names first, the label image last: an objects file that exists is complete
            for f in sorted(written, key=lambda p: p.name == path.name):
                os.replace(f, folder / f.name)
            if not names:
                names_file(path).unlink(missing_ok=True)  # names of an earlier save no longer hold
        except OSError as exc:
            raise SeriesError(f"cannot write {path} ({exc.strerror or exc}): pick an output folder you can "
                              "write to; the objects stay in the viewer") from None
        except ValueError as exc:  # the writers refuse labels that are not integers >= 0
            raise SeriesError(f"cannot write {path}: {exc}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _remove(*paths: Path) -> None:
        try:
            for p in paths:
                p.unlink(missing_ok=True)
        except OSError as exc:
            raise SeriesError(f"cannot remove {exc.filename} ({exc.strerror}): check the folder's "
                              "permissions") from None
