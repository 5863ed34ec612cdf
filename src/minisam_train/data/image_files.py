"""Read the image files that packages ship (DICOM, NIfTI, PNG/JPEG, ``.npy``, 3D TIFF, InVesalius ``.inv3``)
as stacks of 2D slices, or say in one line why a file holds no usable image (:class:`NotAnImage`).

DICOM files are checked the way a radiologist would sort them: only acquired anatomical images count
(:data:`IMAGE_MODALITIES`). pydicom's test files also hold secondary captures of colour test patterns,
RT dose grids, segmentations, structured reports and 16x16 stubs; those are refused here, with the reason,
so the gatherer can report what it dropped.
"""

from __future__ import annotations

import logging
import plistlib
import tarfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Acquired images of anatomy: CT, MR, ultrasound, projection radiography (CR, DX, mammography, XA, RF),
# nuclear medicine, ophthalmic and endoscopic photography.
IMAGE_MODALITIES = ("CT", "MR", "US", "CR", "DX", "MG", "XA", "RF", "NM", "PT", "OP", "ES", "XC", "IO", "PX")
MIN_SIDE = 32  # smaller stubs (pydicom's 16x16 DICOMDIR examples) hold no anatomy worth learning


class NotAnImage(Exception):
    """A file that holds no usable image; the message says why (it goes into the gather report)."""


@dataclass
class Stack:
    """Slices of one file: ``pixels`` is ``(n, H, W)`` or ``(n, H, W, 3)`` (``n == 1`` for a 2D image).

    ``spacing`` is (slice, row, column) in mm when the file says so; ``uid`` identifies the image across
    re-encodings of the same data (DICOM SOPInstanceUID), so duplicates are dropped before reading pixels.
    """

    pixels: np.ndarray
    modality: str
    spacing: tuple | None = None
    is_volume: bool = False
    uid: str = ""
    info: dict = field(default_factory=dict)


def read_stack(path, modality: str = "") -> Stack:
    """The slices of ``path``; ``modality`` names it when the file cannot (PNG, NIfTI...).

    Raises:
        NotAnImage: not an image of anatomy, too small, or pixels that cannot be decoded here.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        stack = _nifti(path, modality)
    elif name.endswith(".inv3"):
        stack = _inv3(path, modality)
    elif name.endswith((".png", ".jpg", ".jpeg", ".bmp")):
        stack = Stack(_picture(path)[None], modality)
    elif name.endswith(".npy"):
        arr = np.load(path)
        if arr.ndim != 2:
            raise NotAnImage(f"array of shape {arr.shape} is not a 2D image")
        stack = Stack(arr[None], modality)
    elif name.endswith((".tif", ".tiff")):
        import tifffile

        arr = np.asarray(tifffile.imread(path))
        stack = Stack(arr if arr.ndim == 3 else arr[None], modality, is_volume=arr.ndim == 3)
    else:
        stack = _dicom(path)
    h, w = stack.pixels.shape[1:3]
    if min(h, w) < MIN_SIDE:
        raise NotAnImage(f"{h}x{w} pixels: smaller than {MIN_SIDE} px")
    return stack


def _picture(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        # Palette and grey+alpha images: their colours, not their palette indices.
        if im.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr"):
            im = im.convert("RGB")
        arr = np.asarray(im)
    if arr.ndim == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        arr = arr[..., 0]  # grey stored as RGB
    return arr


def _nifti(path: Path, modality: str) -> Stack:
    from napari_qlora_minisam.io.nifti import read_nifti

    vol = read_nifti(path)
    data, spacing = vol.data, vol.spacing
    if data.ndim == 4:  # (t, z, y, x): the first volume (b0 of a diffusion series)
        data, spacing = data[0], spacing[1:]
    if data.ndim == 2:
        data, spacing = data[None], None
    if data.ndim != 3:
        raise NotAnImage(f"NIfTI of shape {vol.data.shape} is not a 2D image or a 3D volume")
    return Stack(data, modality, tuple(float(s) for s in spacing) if spacing else None, is_volume=True)


def _inv3(path: Path, modality: str) -> Stack:
    """An InVesalius project: a gzipped tar with ``main.plist`` (shape, dtype, spacing) and ``matrix.dat``."""
    with tarfile.open(path, "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        if "main.plist" not in members:
            raise NotAnImage("InVesalius file without main.plist")
        main = plistlib.loads(tar.extractfile(members["main.plist"]).read())
        matrix = main["matrix"]
        raw = tar.extractfile(members[matrix["filename"]]).read()
    shape = tuple(int(s) for s in matrix["shape"])
    data = np.frombuffer(raw, dtype=np.dtype(matrix["dtype"]), count=int(np.prod(shape))).reshape(shape)
    sx, sy, sz = (float(s) for s in main.get("spacing", (1.0, 1.0, 1.0)))
    return Stack(data.copy(), str(main.get("modality") or modality), (sz, sy, sx), is_volume=True,
                 info={"name": str(main.get("name", ""))})


def _dicom(path: Path) -> Stack:
    # Test files warn and log about their own oddities (padding, VR mix-ups, missing decoders); what
    # matters is checked in _dicom_checked and reported as the file's reason.
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _dicom_checked(path)
    finally:
        logger.setLevel(level)


def _dicom_checked(path: Path) -> Stack:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        # force: several of pydicom's test files have no preamble; modality and pixels are checked below.
        ds = pydicom.dcmread(path, force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise NotAnImage(f"not a readable DICOM file ({type(exc).__name__})") from None
    sop = getattr(ds.get("SOPClassUID"), "name", "") or "no SOP class"
    modality = str(ds.get("Modality", "") or "")
    if "PixelData" not in ds:
        raise NotAnImage(f"no pixel data ({modality or 'no modality'}, {sop})")
    if modality not in IMAGE_MODALITIES:
        raise NotAnImage(f"modality {modality or 'none'} ({sop}): not an acquired image of anatomy")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if min(rows, cols) < MIN_SIDE:
        raise NotAnImage(f"{rows}x{cols} pixels: smaller than {MIN_SIDE} px")
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises several types for missing decoders or corrupt data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise NotAnImage(f"pixels cannot be decoded here ({getattr(syntax, 'name', syntax)}: "
                         f"{type(exc).__name__})") from None
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    colour = arr.ndim == (4 if frames > 1 else 3)
    if frames == 1:
        arr = arr[None]
    if photometric == "MONOCHROME1":  # bright = low values: invert so bone is bright, as in MONOCHROME2
        arr = arr.max() - arr
    if colour and arr.dtype != np.uint8:
        arr = (arr.astype(np.float32) / max(float(arr.max()), 1.0) * 255).astype(np.uint8)
    spacing = None
    if "PixelSpacing" in ds:
        dy, dx = (float(v) for v in ds.PixelSpacing)
        dz = float(ds.get("SpacingBetweenSlices", 0) or ds.get("SliceThickness", 0) or 0) or None
        spacing = (dz, dy, dx) if dz else None
    return Stack(arr, modality, spacing, is_volume=frames > 1 and modality in ("CT", "MR", "NM", "PT"),
                 uid=str(ds.get("SOPInstanceUID", "")), info={"sop_class": sop, "photometric": photometric})
