"""ImageSeries (Qt-free): which files are cases, where objects go, saving only what changed, never emptying."""

from __future__ import annotations

import os

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_qlora_minisam.series import ImageSeries, SeriesError, find_cases, read_objects

RNG = np.random.default_rng(3)


def png(path, shape=(20, 24)):
    iio.imwrite(path, RNG.integers(0, 255, shape, dtype=np.uint8))
    return path


def objects(shape=(20, 24), value=1):
    labels = np.zeros(shape, np.int32)
    labels[3:9, 4:12] = value
    return labels


@pytest.fixture
def folder(tmp_path):
    """case_2, case_10 and a TIFF volume, beside label maps and a saved-objects file that are not cases."""
    root = tmp_path / "cases"
    root.mkdir()
    png(root / "case_10.png")
    png(root / "case_2.png")
    tifffile.imwrite(root / "vol.tif", RNG.integers(0, 255, (3, 20, 24), dtype=np.uint8))
    for name in ("case_2_seg.png", "case_10_label.png", "vol_mask.tif", "case_2_objects.tif", ".hidden.png"):
        png(root / name)
    (root / "notes.txt").write_text("not an image")
    return root


def test_a_folder_lists_its_images_in_natural_order_without_label_files(folder):
    assert [p.name for p in find_cases(folder)] == ["case_2.png", "case_10.png", "vol.tif"]


def test_dicom_series_folders_and_nifti_files_are_cases(tmp_path):
    from tests.core.test_io_dicom import make_series

    root = tmp_path / "study"
    make_series(root / "series_a", 3)
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(RNG.integers(0, 99, (6, 5, 4)).astype(np.int16), affine), str(root / "ct.nii.gz"))
    series = ImageSeries.from_folder(root)
    assert [p.name for p in series.cases] == ["ct.nii.gz", "series_a"]
    data, kwargs, kind = series.load(0).layer
    assert kind == "image" and data.shape == (4, 5, 6) and kwargs["name"] == "ct"
    np.testing.assert_allclose(kwargs["scale"], (2.5, 0.8, 0.7))
    assert series.objects_path(0).name == "ct_objects.tif"
    data, kwargs, _ = series.load(1).layer
    assert data.shape[0] == 3 and kwargs["name"] == "series_a" and "affine" in kwargs["metadata"]


def test_a_dicom_folder_itself_or_an_empty_folder_is_refused_with_the_fix(tmp_path):
    from tests.core.test_io_dicom import make_series

    make_series(tmp_path / "one", 2)
    with pytest.raises(SeriesError, match="one series: open the folder above"):
        ImageSeries.from_folder(tmp_path / "one")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SeriesError, match="no images"):
        ImageSeries.from_folder(tmp_path / "empty")
    with pytest.raises(SeriesError, match="not a folder"):
        ImageSeries.from_folder(tmp_path / "missing")


def test_moving_and_progress(folder, tmp_path):
    series = ImageSeries.from_folder(folder, output_dir=tmp_path / "out")
    assert series.progress_text() == "case 1 / 3, 0 done"
    assert series.next() == 1 and series.next() == 2
    with pytest.raises(SeriesError, match="outside the series"):
        series.next()
    assert series.previous() == 1 and series.go(0) == 0
    series.save_objects(1, objects())
    assert series.is_done(1) and not series.is_done(0)
    assert series.progress_text() == "case 1 / 3, 1 done" and series.first_not_done() == 0
    series.save_objects(0, objects())
    assert series.first_not_done() == 2


def test_objects_go_next_to_the_image_or_into_the_output_folder(folder, tmp_path):
    beside = ImageSeries.from_folder(folder)
    assert beside.objects_path(0) == folder / "case_2_objects.tif"
    assert beside.is_done(0)  # the file the fixture left there
    out = ImageSeries.from_folder(folder, output_dir=tmp_path / "out", fmt="nifti")
    assert out.objects_path(2) == tmp_path / "out" / "vol_objects.nii.gz" and not out.is_done(0)
    with pytest.raises(SeriesError, match="not one of"):
        ImageSeries([folder / "case_2.png"], fmt="png")


@pytest.mark.parametrize("fmt", ["tiff", "nifti"])
def test_saved_objects_and_names_come_back(folder, tmp_path, fmt):
    series = ImageSeries.from_folder(folder, output_dir=tmp_path / "out", fmt=fmt)
    case = series.load(2)
    assert case.objects is None and case.spatial_shape == (3, 20, 24)
    labels = np.zeros((3, 20, 24), np.int32)
    labels[1, 2:5, 2:6], labels[2, 8:12, 3:9] = 1, 2
    assert series.save_objects(2, labels, names={1: "liver", 2: "lesion"}, scale=(2.5, 0.5, 0.5)) == "written"
    again = ImageSeries.from_folder(folder, output_dir=tmp_path / "out", fmt=fmt).load(2)
    np.testing.assert_array_equal(again.objects, labels)
    assert again.names == {1: "liver", 2: "lesion"}
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no staging left


def test_only_changes_are_written_and_an_unread_file_is_never_emptied(folder, tmp_path):
    out = tmp_path / "out"
    series = ImageSeries.from_folder(folder, output_dir=out)
    series.load(0)
    assert series.save_objects(0, None) == "unchanged"
    assert series.save_objects(0, np.zeros((20, 24), np.int32)) == "unchanged" and not series.is_done(0)
    assert series.save_objects(0, objects()) == "written"
    stamp = os.stat(series.objects_path(0)).st_mtime_ns
    assert series.save_objects(0, objects().astype(np.uint8)) == "unchanged"  # same ids, other dtype
    assert os.stat(series.objects_path(0)).st_mtime_ns == stamp
    assert series.save_objects(0, objects(), names={1: "LV"}) == "written"  # a renamed object is a change

    fresh = ImageSeries.from_folder(folder, output_dir=out)  # has not read case 1's file
    assert fresh.save_objects(0, np.zeros((20, 24), np.int32)) == "unchanged"
    np.testing.assert_array_equal(read_objects(fresh.objects_path(0)), objects())
    fresh.load(0)  # read: erasing every object now means the user cleared the case
    assert fresh.save_objects(0, np.zeros((20, 24), np.int32)) == "removed"
    assert not fresh.is_done(0) and not fresh.names_path(0).exists()


def test_unwritable_output_is_an_error_and_the_old_file_stays(folder, tmp_path):
    out = tmp_path / "out"
    series = ImageSeries.from_folder(folder, output_dir=out)
    series.load(0)
    series.save_objects(0, objects())
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    series.output_dir = blocked
    with pytest.raises(SeriesError, match="pick an output folder you can write to"):
        series.save_objects(0, objects(value=2))
    np.testing.assert_array_equal(read_objects(out / "case_2_objects.tif"), objects())


def test_unreadable_image_and_objects_of_another_shape_are_errors_naming_the_file(folder, tmp_path):
    (folder / "case_3.png").write_bytes(b"not a png")
    series = ImageSeries.from_folder(folder, output_dir=tmp_path / "out")
    with pytest.raises(SeriesError, match="case_3.png: cannot be read as an image"):
        series.load(series.cases.index(folder / "case_3.png"))
    (tmp_path / "out").mkdir()
    tifffile.imwrite(tmp_path / "out" / "case_10_objects.tif", np.ones((5, 5), np.uint8))
    with pytest.raises(SeriesError, match=r"shape \(5, 5\) but case_10.png is \(20, 24\)"):
        series.load(series.cases.index(folder / "case_10.png"))
