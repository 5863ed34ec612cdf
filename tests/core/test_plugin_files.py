"""Manifest, shipped sample data and the labels writer (no viewer needed)."""

import numpy as np
import pytest
import tifffile

from napari_qlora_minisam import _sample_data
from napari_qlora_minisam._writer import write_labels_tiff


def test_manifest_validates():
    from npe2 import PluginManifest

    mf = PluginManifest.from_distribution("napari-qlora-minisam")
    ids = {c.id for c in mf.contributions.commands}
    assert all(i.startswith("napari-qlora-minisam.") for i in ids)
    # python_name points at submodules so napari's start-up import of the package stays cheap
    assert all(c.python_name.split(":")[0] != "napari_qlora_minisam" for c in mf.contributions.commands)
    assert {s.key for s in mf.contributions.sample_data} == {"heart_mri", "pancreas_ct", "brain_mri",
                                                             "lung_ct_volume"}


def test_sample_files_are_small():
    total = sum(f.stat().st_size for f in _sample_data.SAMPLE_DIR.glob("*.tif"))
    assert total < 2 * 1024 * 1024


@pytest.mark.parametrize("fn, ndim, ids", [
    (_sample_data.heart_mri, 2, {0, 1, 2, 3}),
    (_sample_data.pancreas_ct, 2, {0, 2}),
    (_sample_data.brain_mri, 2, {0, 1}),
    (_sample_data.lung_ct_volume, 3, {0, 1}),
])
def test_samples_are_real_images_with_labels(fn, ndim, ids):
    (image, ikw, itype), (labels, lkw, ltype) = fn()
    assert (itype, ltype) == ("image", "labels")
    assert image.ndim == labels.ndim == ndim and image.shape == labels.shape
    assert set(np.unique(labels).tolist()) == ids
    assert image.std() > 10  # real anatomy, not a blank
    assert lkw["name"].startswith(ikw["name"])
    classes = ikw["metadata"]["minisam_class_names"]  # the names new objects get
    structures = lkw["features"]["structure"]
    assert classes and set(classes) <= set(structures)
    assert {structures[i] for i in ids - {0}} == set(classes)  # named after the structures the slice holds


def test_spacing_of_the_samples_gives_areas_and_volumes():
    from napari_qlora_minisam.annotation.objects import spacing_mm

    assert spacing_mm(_sample_data.brain_mri()[0][1]["scale"]) == (0.7812, 0.7812)
    assert spacing_mm(_sample_data.lung_ct_volume()[0][1]["scale"]) == (5.0, 0.627, 0.627)
    assert "scale" not in _sample_data.heart_mri()[0][1]  # COSMOS PNGs lost their spacing: pixels


def test_lung_volume_is_hounsfield_and_holds_the_tumour():
    image, labels = _sample_data.read_sample("lung_ct")
    assert image.dtype == np.int16 and image.min() <= -1000  # air in HU
    zs = np.nonzero(labels.any(axis=(1, 2)))[0]
    assert zs.min() >= 2 and zs.max() <= len(labels) - 3  # a few tumour-free slices on both sides


@pytest.mark.parametrize("shape, top, dtype", [((30, 40), 3, np.uint8), ((4, 30, 40), 300, np.uint16),
                                               ((30, 40), 70000, np.uint32)])
def test_writer_round_trip(tmp_path, shape, top, dtype):
    labels = np.zeros(shape, np.int32)
    labels[..., 5:9, 6:10] = top
    labels[..., 0, 0] = 1
    [path] = write_labels_tiff(str(tmp_path / "out.tif"), labels, {"scale": (5.0, 0.6, 0.6)[-len(shape):]})
    back = tifffile.imread(path)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, labels)


def test_writer_puts_object_names_beside_the_tiff(tmp_path):
    import csv

    import pandas as pd

    labels = np.zeros((10, 10), np.uint8)
    labels[2:4, 2:4] = 1
    features = pd.DataFrame({"index": [0, 1], "name": ["background", "LeftVentricle"]})
    written = write_labels_tiff(str(tmp_path / "heart.tif"), labels, {"features": features})
    assert written == [str(tmp_path / "heart.tif"), str(tmp_path / "heart.objects.csv")]
    rows = list(csv.reader(open(written[1])))
    assert rows == [["index", "name"], ["0", "background"], ["1", "LeftVentricle"]]
    assert write_labels_tiff(str(tmp_path / "plain.tif"), labels, {}) == [str(tmp_path / "plain.tif")]


def test_writer_refuses_float_labels(tmp_path):
    with pytest.raises(ValueError, match="integers"):
        write_labels_tiff(str(tmp_path / "x.tif"), np.zeros((3, 3), float), {})
