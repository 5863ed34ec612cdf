"""NIfTI reading and writing (Qt-free): axis order, spacing, affine, label detection, mask overlay."""

import json

import nibabel as nib
import numpy as np
import pytest

from napari_qlora_minisam._reader import get_nifti_reader
from napari_qlora_minisam._writer import write_labels_nifti
from napari_qlora_minisam.io.nifti import affine_from_scale, read_nifti, write_nifti

from ..conftest import SHARED_DATA

# An oblique, flipped affine: x flipped, y/z rotated 10 degrees, voxel size 0.7 x 0.8 x 2.5 mm.
_c, _s = np.cos(np.radians(10)), np.sin(np.radians(10))
AFFINE = np.array([[-0.7, 0, 0, 90.0],
                   [0, 0.8 * _c, -2.5 * _s, -120.0],
                   [0, 0.8 * _s, 2.5 * _c, -40.0],
                   [0, 0, 0, 1]])


def _volume_xyz(shape=(7, 6, 5), dtype=np.int16):
    rng = np.random.default_rng(0)
    return rng.integers(-1000, 1500, size=shape).astype(dtype)


def _save(path, xyz, affine=AFFINE):
    nib.save(nib.Nifti1Image(xyz, affine), str(path))
    return path


def test_read_transposes_to_zyx_with_spacing_and_affine(tmp_path):
    xyz = _volume_xyz()
    vol = read_nifti(_save(tmp_path / "ct.nii.gz", xyz))
    assert vol.data.shape == (5, 6, 7) and vol.data.dtype == np.int16
    np.testing.assert_array_equal(vol.data, xyz.transpose(2, 1, 0))
    assert vol.data[4, 3, 2] == xyz[2, 3, 4]
    np.testing.assert_allclose(vol.spacing, (2.5, 0.8, 0.7), rtol=1e-6)
    np.testing.assert_allclose(vol.affine, AFFINE, atol=1e-6)
    assert vol.name == "ct" and not vol.is_labels


@pytest.mark.parametrize("name, dtype, labels", [
    ("liver_seg.nii.gz", np.uint8, True), ("liver_label.nii", np.int16, True),
    ("liver_labels.nii.gz", np.uint16, True), ("liver_MASK.nii.gz", np.int32, True),
    ("case_3_objects.nii.gz", np.uint16, True),  # what the plugin's image series writes
    ("liver_mask.nii.gz", np.float32, False),  # a float "mask" is a probability map: an image
    ("liver.nii.gz", np.uint8, False), ("seg_liver.nii.gz", np.uint8, False),
])
def test_integer_volumes_named_seg_label_mask_open_as_labels(tmp_path, name, dtype, labels):
    xyz = (_volume_xyz() % 4).astype(dtype)
    path = _save(tmp_path / name, xyz)
    [(data, kwargs, layer_type)] = get_nifti_reader(str(path))(str(path))
    assert layer_type == ("labels" if labels else "image")
    assert kwargs["name"] == name.split(".nii")[0]
    np.testing.assert_allclose(kwargs["scale"], (2.5, 0.8, 0.7), rtol=1e-6)
    np.testing.assert_allclose(kwargs["metadata"]["affine"], AFFINE, atol=1e-6)
    np.testing.assert_array_equal(data, xyz.T)


def test_reader_hook_declines_other_files(tmp_path):
    assert get_nifti_reader(str(tmp_path / "a.tif")) is None
    assert get_nifti_reader([str(tmp_path / "a.nii"), str(tmp_path / "b.nii")]) is None


def test_scaled_nifti_reads_as_floats(tmp_path):
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), AFFINE)
    img.header.set_slope_inter(0.5, -10)
    nib.save(img, str(tmp_path / "pet.nii.gz"))
    vol = read_nifti(tmp_path / "pet.nii.gz")
    np.testing.assert_allclose(vol.data, (np.arange(24).reshape(2, 3, 4) * 0.5 - 10).T)


def test_mask_written_from_a_nifti_image_overlays_it(tmp_path):
    """Paint on the image read from NIfTI, save the labels: same affine and shape, voxels where painted."""
    xyz = _volume_xyz()
    image_path = _save(tmp_path / "ct.nii.gz", xyz)
    [(image, ikw, _)] = get_nifti_reader(str(image_path))(str(image_path))
    labels = np.zeros(image.shape, np.int32)
    labels[1:3, 2:4, 3:6] = 2  # napari (z, y, x)
    labels[4, 0, 0] = 7
    meta = {"scale": ikw["scale"], "translate": (0.0, 0.0, 0.0), "metadata": dict(ikw["metadata"])}
    [out] = write_labels_nifti(str(tmp_path / "ct_seg.nii.gz"), labels, meta)

    mask, img = nib.load(out), nib.load(str(image_path))
    assert mask.shape == img.shape
    np.testing.assert_allclose(mask.affine, img.affine, atol=1e-5)
    raw = np.asanyarray(mask.dataobj)
    assert raw.dtype == np.uint8
    assert raw[0, 0, 4] == 7 and raw[3:6, 2:4, 1:3].min() == 2 and (raw > 0).sum() == 2 * 2 * 3 + 1
    # The painted voxel and the image voxel under it sit at the same RAS position.
    world_mask = mask.affine @ [0, 0, 4, 1]
    world_image = img.affine @ [0, 0, 4, 1]
    np.testing.assert_allclose(world_mask, world_image, atol=1e-5)
    # ... and our reader opens it as labels equal to what was painted, with the image's spacing.
    [(back, bkw, btype)] = get_nifti_reader(out)(out)
    assert btype == "labels"
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_allclose(bkw["scale"], ikw["scale"], rtol=1e-6)
    np.testing.assert_allclose(bkw["metadata"]["affine"], ikw["metadata"]["affine"], atol=1e-5)


def test_mask_without_source_affine_uses_scale_and_translate(tmp_path):
    labels = np.zeros((4, 5, 6), np.uint16)
    labels[1, 2, 3] = 300
    [out] = write_labels_nifti(str(tmp_path / "m"), labels, {"scale": (5.0, 0.6, 0.7), "translate": (10, 20, 30)})
    assert out.endswith("m.nii.gz")
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, [[0.7, 0, 0, 30], [0, 0.6, 0, 20], [0, 0, 5.0, 10], [0, 0, 0, 1]])
    assert np.asanyarray(img.dataobj).dtype == np.uint16 and img.get_fdata()[3, 2, 1] == 300
    np.testing.assert_allclose(affine_from_scale((0.5, 0.25)), np.diag([0.25, 0.5, 1, 1]))


def test_writer_puts_object_names_beside_the_nifti(tmp_path):
    labels = np.zeros((2, 4, 4), np.uint8)
    labels[0, 1, 1] = 1
    written = write_labels_nifti(str(tmp_path / "objs.nii.gz"), labels,
                                 {"scale": (1, 1, 1), "features": {"index": [1], "name": ["tumour"]}})
    assert written[1].endswith("objs.objects.csv")
    assert "tumour" in open(written[1]).read()


def test_saved_objects_reopen_as_labels_with_their_names(tmp_path):
    labels = np.zeros((2, 4, 4), np.uint8)
    labels[0, 1, 1], labels[1, 2, 2] = 1, 2
    [out, _] = write_labels_nifti(str(tmp_path / "case_objects.nii.gz"), labels, {
        "scale": (5.0, 0.5, 0.5), "features": {"index": [0, 1, 2], "name": ["background", "tumour", "node"]}})
    [(data, kwargs, layer_type)] = get_nifti_reader(out)(out)
    assert layer_type == "labels"
    np.testing.assert_array_equal(data, labels)
    assert dict(zip(kwargs["features"]["index"], kwargs["features"]["name"])) == {
        0: "background", 1: "tumour", 2: "node"}


@pytest.mark.parametrize("bad, message", [(np.full((2, 2, 2), 0.5), "integers"), (np.full((2, 2, 2), -1), "negative")])
def test_writer_refuses_non_label_data(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        write_labels_nifti(str(tmp_path / "bad.nii.gz"), bad, {"scale": (1, 1, 1)})


VOLUMES = SHARED_DATA / "volumes"


@pytest.mark.skipif(not (VOLUMES / "volumes.json").exists(), reason="shared pyradiomics volumes not present")
def test_pyradiomics_volumes_round_trip_through_nifti(tmp_path):
    """Every shared volume (image and label) written as NIfTI with its spacing reads back equal."""
    import tifffile

    info = json.loads((VOLUMES / "volumes.json").read_text())
    assert len(info) == 5
    for key, entry in info.items():
        spacing_zyx = tuple(entry["spacing_xyz_mm"][::-1])
        for part in ("image", "label"):
            data = tifffile.imread(VOLUMES / f"{key}_{part}.tif")
            assert list(data.shape) == entry["shape_zyx"]
            name = f"{key}_{part}.nii" + (".gz" if part == "label" else "")
            out = write_nifti(tmp_path / name, data, affine_from_scale(spacing_zyx), labels=part == "label")
            back = read_nifti(out)
            assert back.data.dtype == (np.int16 if part == "image" else np.uint8)
            np.testing.assert_array_equal(back.data, data)
            np.testing.assert_allclose(back.spacing, spacing_zyx, rtol=1e-6)
            assert back.is_labels == (part == "label")
