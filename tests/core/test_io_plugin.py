"""The NIfTI/DICOM readers and writers as napari sees them (manifest, npe2, a Qt-free ViewerModel), and the
TIFF writer's spacing unit."""

import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_qlora_minisam._writer import write_labels_tiff

AFFINE = np.diag([0.7, 0.8, 2.5, 1.0])


@pytest.fixture(autouse=True, scope="module")
def _plugins_discovered():
    """napari discovers plugins at start-up; a test process has to ask."""
    from npe2 import PluginManager

    PluginManager.instance().discover()


def _nifti(path, dtype=np.int16):
    data = np.arange(4 * 5 * 6, dtype=dtype).reshape(6, 5, 4)  # (x, y, z)
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return data


def test_manifest_declares_the_readers_and_writers():
    from npe2 import PluginManifest

    mf = PluginManifest.from_distribution("napari-qlora-minisam")
    readers = {r.command: r for r in mf.contributions.readers}
    nifti, dicom = readers["napari-qlora-minisam.get_nifti_reader"], readers["napari-qlora-minisam.get_dicom_reader"]
    assert set(nifti.filename_patterns) == {"*.nii", "*.nii.gz"} and not nifti.accepts_directories
    assert dicom.accepts_directories and "*.dcm" in dicom.filename_patterns
    writers = {w.command: w for w in mf.contributions.writers}
    assert writers["napari-qlora-minisam.write_labels_nifti"].layer_types == ["labels"]
    assert ".nii.gz" in writers["napari-qlora-minisam.write_labels_nifti"].filename_extensions
    commands = {c.id for c in mf.contributions.commands}
    assert set(readers) | set(writers) <= commands


def test_napari_offers_our_reader_for_nii_gz_and_dicom_folders(tmp_path):
    """napari's builtin (imageio) reader also claims ``*.nii.gz`` / ``*.dcm`` but cannot read them: napari
    lists both and the user picks ours once ("remember"); npe2 reads with ours when named."""
    import npe2
    from napari.plugins import _npe2

    path = tmp_path / "ct.nii.gz"
    data = _nifti(path)
    assert "napari-qlora-minisam" in _npe2.get_readers(str(path))
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "IM0.dcm").write_bytes(b"\0" * 128 + b"DICM")
    assert "napari-qlora-minisam" in _npe2.get_readers(str(tmp_path / "series"))
    assert "napari-qlora-minisam" in _npe2.get_readers(str(tmp_path / "series" / "IM0.dcm"))
    [(array, kwargs, layer_type)] = npe2.read([str(path)], plugin_name="napari-qlora-minisam", stack=False)
    assert layer_type == "image"
    np.testing.assert_array_equal(array, data.T)


def test_napari_opens_nifti_and_writes_labels_back(tmp_path):
    from napari.components import ViewerModel

    _nifti(tmp_path / "ct.nii.gz")
    seg = _nifti(tmp_path / "ct_seg.nii.gz", np.uint8)
    viewer = ViewerModel()
    [image] = viewer.open(str(tmp_path / "ct.nii.gz"), plugin="napari-qlora-minisam")
    [labels] = viewer.open(str(tmp_path / "ct_seg.nii.gz"), plugin="napari-qlora-minisam")
    assert image._type_string == "image" and labels._type_string == "labels"
    np.testing.assert_allclose(image.scale, (2.5, 0.8, 0.7))
    assert [str(u) for u in image.units] == ["millimeter"] * 3  # the scale bar and object volumes read mm
    np.testing.assert_allclose(image.metadata["affine"], AFFINE)
    [out] = labels.save(str(tmp_path / "saved_seg.nii.gz"), plugin="napari-qlora-minisam")
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, AFFINE)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), seg)


@pytest.mark.parametrize("shape, scale", [((4, 30, 40), (5.0, 0.6, 0.7)), ((30, 40), (0.6, 0.7))])
def test_tiff_writer_stores_spacing_in_mm(tmp_path, shape, scale):
    labels = np.zeros(shape, np.uint8)
    labels[..., 3, 4] = 1
    [path] = write_labels_tiff(str(tmp_path / "out.tif"), labels, {"scale": scale})
    with tifffile.TiffFile(path) as tif:
        ij = tif.imagej_metadata
        page = tif.pages[0]
        x_res = page.tags["XResolution"].value
        y_res = page.tags["YResolution"].value
        np.testing.assert_array_equal(tif.asarray(), labels)
    assert ij["unit"] == "mm"
    assert x_res[1] / x_res[0] == pytest.approx(scale[-1], rel=1e-5)
    assert y_res[1] / y_res[0] == pytest.approx(scale[-2], rel=1e-5)
    if len(shape) == 3:
        assert ij["spacing"] == pytest.approx(scale[0])
