"""DICOM series reading (Qt-free) on synthetic series written with pydicom in the test."""

import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from napari_qlora_minisam._reader import get_dicom_reader
from napari_qlora_minisam._writer import write_labels_nifti
from napari_qlora_minisam.io.dicom import DicomError, read_dicom_series

ROWS, COLS = 6, 5
ORIGIN = (-100.0, -120.0, 30.0)  # LPS mm of the first slice's first voxel
SPACING = (0.8, 0.7)  # PixelSpacing: between rows, between columns
DZ = 2.5


def _raw(k):
    return (np.arange(ROWS * COLS, dtype=np.uint16).reshape(ROWS, COLS) + 100 * k).astype(np.uint16)


def write_slice(path, k, *, series, description="CT chest", slope=1, intercept=-1024,
                syntax=ExplicitVRLittleEndian, pixels=True):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesDescription = "CT", series, description
    ds.InstanceNumber = k + 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * DZ]
    ds.PixelSpacing = list(SPACING)
    ds.SliceThickness = DZ
    ds.Rows, ds.Columns = ROWS, COLS
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if pixels and syntax.is_compressed:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 not a real codestream" * 4])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    elif pixels:
        ds.PixelData = _raw(k).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def make_series(folder, n=4, *, series=None, name="IM{k}.dcm", **kw):
    folder.mkdir(parents=True, exist_ok=True)
    series = series or generate_uid()
    # File names in the reverse order of the positions: the reader must sort by position, not by name.
    return [write_slice(folder / name.format(k=n - 1 - k), k, series=series, **kw) for k in range(n)]


def test_series_is_sorted_by_position_in_hu_with_spacing(tmp_path):
    make_series(tmp_path / "ct", 4)
    vol = read_dicom_series(tmp_path / "ct")
    assert vol.data.shape == (4, ROWS, COLS) and vol.data.dtype == np.int16
    for k in range(4):
        np.testing.assert_array_equal(vol.data[k], _raw(k).astype(int) - 1024)  # HU
    assert vol.data.min() == -1024
    np.testing.assert_allclose(vol.spacing, (DZ, *SPACING))
    assert vol.name == "CT chest" and vol.extra["Modality"] == "CT"
    # voxel (column i, row j, slice k) -> RAS: LPS with x and y negated
    i, j, k = 3, 2, 1
    expected_lps = np.array([ORIGIN[0] + i * SPACING[1], ORIGIN[1] + j * SPACING[0], ORIGIN[2] + k * DZ])
    np.testing.assert_allclose((vol.affine @ [i, j, k, 1])[:3], expected_lps * [-1, -1, 1])


def test_any_file_of_the_series_opens_the_series(tmp_path):
    files = make_series(tmp_path / "ct", 3)
    np.testing.assert_array_equal(read_dicom_series(files[1]).data, read_dicom_series(tmp_path / "ct").data)


def test_fractional_rescale_gives_floats(tmp_path):
    make_series(tmp_path / "pet", 2, slope=0.5, intercept=-10)
    vol = read_dicom_series(tmp_path / "pet")
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.data[1], _raw(1) * 0.5 - 10)


def test_mixed_series_folder_names_them(tmp_path):
    make_series(tmp_path / "mixed", 2, series="1.2.3.4", description="CT chest")
    make_series(tmp_path / "mixed", 2, series="1.2.3.5", description="CT abdomen", name="B{k}.dcm")
    with pytest.raises(DicomError) as err:
        read_dicom_series(tmp_path / "mixed")
    msg = str(err.value)
    assert "2 DICOM series" in msg and "1.2.3.4" in msg and "1.2.3.5" in msg
    assert "CT chest" in msg and "CT abdomen" in msg and "\n" not in msg
    # picking one file picks its series
    assert read_dicom_series(tmp_path / "mixed" / "B0.dcm").extra["SeriesInstanceUID"] == "1.2.3.5"


def test_missing_pixel_data_names_the_file(tmp_path):
    make_series(tmp_path / "ct", 2)
    write_slice(tmp_path / "ct" / "broken.dcm", 2, series=read_dicom_series(tmp_path / "ct").extra["SeriesInstanceUID"],
                pixels=False)
    with pytest.raises(DicomError, match=r"broken\.dcm: no pixel data"):
        read_dicom_series(tmp_path / "ct")


def test_undecodable_compressed_syntax_names_it(tmp_path):
    make_series(tmp_path / "j2k", 2, syntax=JPEG2000Lossless)
    with pytest.raises(DicomError) as err:
        read_dicom_series(tmp_path / "j2k")
    msg = str(err.value)
    assert "IM" in msg and ".dcm" in msg and "compressed transfer syntax" in msg
    assert "JPEG 2000" in msg and JPEG2000Lossless in msg and "\n" not in msg


def test_reader_hook_accepts_dicom_folders_and_files_only(tmp_path):
    files = make_series(tmp_path / "ct", 2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no dicom here")
    assert get_dicom_reader(str(tmp_path / "empty")) is None
    assert get_dicom_reader(str(tmp_path / "empty" / "notes.txt")) is None
    for path in (tmp_path / "ct", files[0]):
        [(data, kwargs, layer_type)] = get_dicom_reader(str(path))(str(path))
        assert layer_type == "image" and data.shape == (2, ROWS, COLS)
        np.testing.assert_allclose(kwargs["scale"], (DZ, *SPACING))
        assert kwargs["metadata"]["affine"].shape == (4, 4)


def test_mask_painted_on_a_dicom_series_lands_at_the_same_patient_position(tmp_path):
    import nibabel as nib

    make_series(tmp_path / "ct", 4)
    [(image, ikw, _)] = get_dicom_reader(str(tmp_path / "ct"))(str(tmp_path / "ct"))
    labels = np.zeros(image.shape, np.uint8)
    labels[2, 4, 1] = 1  # napari (slice k, row j, column i)
    [out] = write_labels_nifti(str(tmp_path / "ct_seg.nii.gz"), labels,
                               {"scale": ikw["scale"], "metadata": ikw["metadata"]})
    mask = nib.load(out)
    assert mask.shape == (COLS, ROWS, 4)
    [ijk] = np.argwhere(np.asanyarray(mask.dataobj))
    lps = np.array([ORIGIN[0] + 1 * SPACING[1], ORIGIN[1] + 4 * SPACING[0], ORIGIN[2] + 2 * DZ])
    np.testing.assert_allclose((mask.affine @ [*ijk, 1])[:3], lps * [-1, -1, 1], atol=1e-4)


def test_uneven_slice_gaps_warn(tmp_path):
    files = make_series(tmp_path / "gap", 4)
    files[2].unlink()  # a missing slice
    with pytest.warns(UserWarning, match="slice gaps vary"):
        vol = read_dicom_series(tmp_path / "gap")
    assert vol.data.shape[0] == 3
