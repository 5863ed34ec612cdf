"""The unlabelled-slice gatherer: real images with provenance, nothing reserved, nothing held out."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from minisam_train.data import DataError
from minisam_train.data.image_files import IMAGE_MODALITIES, Stack
from minisam_train.data.shipped_images import SOURCES, ShippedSource, excluded_reason, held_out_stems
from minisam_train.data.splits import VAL_SPLIT_FILE
from minisam_train.data.unlabelled_cache import (
    UnlabelledSlices,
    blank_reason,
    candidate_slices,
    gather_unlabelled,
)

PYDICOM = next(s for s in SOURCES if s.name == "pydicom")


def _pydicom_files() -> Path:
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.fixture(scope="module")
def pydicom_cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("unlabelled")
    doc = gather_unlabelled(out, (PYDICOM,), log=lambda *_: None)
    return out, doc


def test_pydicom_test_files_give_slices_with_provenance(pydicom_cache):
    out, doc = pydicom_cache
    from PIL import Image

    rows = doc["slices"]
    assert rows and doc["total"]["slices"] == len(rows)
    import pydicom

    for row in rows:
        assert row["package"] == "pydicom" and row["version"] == pydicom.__version__
        assert row["path"].startswith("pydicom/data/test_files/") and row["license"]
        assert row["modality"] in IMAGE_MODALITIES
        with Image.open(out / row["file"]) as im:
            pixels = np.asarray(im)
        # LiteMedSAM's frame without padding: longest side 256, min-max over the image.
        assert max(pixels.shape[:2]) == 256 and pixels.dtype == np.uint8
        assert pixels.min() == 0 and pixels.max() == 255
        assert (row["height"], row["width"]) == pixels.shape[:2]
    # The same rows in the CSV.
    assert (out / "provenance.csv").read_text().count("\n") == len(rows) + 1
    on_disk = json.loads((out / "provenance.json").read_text())
    assert on_disk["slices"] == rows


def test_pydicom_non_images_are_dropped_with_reasons(pydicom_cache):
    _, doc = pydicom_cache
    reasons = {Path(d["path"]).name: d["reason"] for d in doc["dropped"]}
    kept = {Path(r["path"]).name for r in doc["slices"]}
    assert "modality SEG" in reasons["liver_1frame.dcm"]  # a label map
    assert any(r.startswith("modality RTDOSE") for r in reasons.values())  # dose grids
    assert "no pixel data" in reasons["rtplan.dcm"]
    assert "smaller than 32 px" in reasons["6154"]  # 16x16 DICOMDIR stubs
    assert "colour test pattern" in reasons["ExplVR_BigEnd.dcm"]
    # MR_small ships in several encodings: exactly one is read.
    assert [n for n in kept if n.startswith("MR_small")] == ["MR_small_padded.dcm"]  # the largest file
    for n in ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        assert reasons[n].startswith("duplicate: another encoding of pydicom:"), reasons[n]
    assert "CT_small.dcm" in kept


def test_test_split_source_is_held_out(pydicom_cache):
    # examples_overlay.dcm is the COSMOS 93_LiverLesion test image.
    _, doc = pydicom_cache
    assert "examples_overlay" in held_out_stems(VAL_SPLIT_FILE)
    assert not any(Path(r["path"]).name == "examples_overlay.dcm" for r in doc["slices"])
    [why] = [d["reason"] for d in doc["dropped"] if Path(d["path"]).name == "examples_overlay.dcm"]
    assert why.startswith("held out")


def _folder_source(files, name="fake") -> ShippedSource:
    return ShippedSource(name, "fake-package", "folder", "", tuple((f, "") for f in files), "test", "tests")


def test_colin27_and_aal_files_are_never_read(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    ct = _pydicom_files() / "CT_small.dcm"
    reserved = ["Colin27_T1_seg.dcm", "AAL3v1.dcm", "ch2bet.dcm", "mni_colin27_1998.dcm"]
    for name in reserved:
        shutil.copy(ct, src / name)
    shutil.copy(ct, src / "abdomen_ct.dcm")
    doc = gather_unlabelled(tmp_path / "out", (_folder_source(["*.dcm"]),), volumes_dir=src, split_file=None,
                            log=lambda *_: None)
    assert [Path(r["path"]).name for r in doc["slices"]] == ["abdomen_ct.dcm"]
    reasons = {d["path"]: d["reason"] for d in doc["dropped"]}
    for name in reserved:
        assert "reserved for independent evaluation" in reasons[name]


@pytest.mark.parametrize("package, path, reserved", [
    ("mricron-data", "usr/share/mricron/templates/avg152T1.nii.gz", True),
    ("anything", "/usr/share/mricron/templates/x.nii.gz", True),
    ("nilearn", "nilearn/datasets/data/Colin27_T1_seg_MNI.nii.gz", True),
    ("x", "atlases/aal2.nii", True),
    ("x", "BrainWeb/brainweb165a10f17.mha", True),
    ("pydicom", "pydicom/data/test_files/examples_palette.dcm", False),
    ("nilearn", "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", False),
])
def test_excluded_reason(package, path, reserved):
    assert (excluded_reason(package, path) is not None) == reserved


def test_no_source_points_at_reserved_data():
    for s in SOURCES:
        assert excluded_reason(s.package, s.root) is None, s.name
        for pattern, _ in s.files:
            assert excluded_reason(s.package, pattern) is None, (s.name, pattern)


def test_a_held_out_study_is_held_out_under_any_name(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(_pydicom_files() / "examples_overlay.dcm", src / "examples_overlay.dcm")
    shutil.copy(_pydicom_files() / "examples_overlay.dcm", src / "renamed_copy.dcm")
    split = tmp_path / "splits.json"
    split.write_text(json.dumps({"93_Liver": {"adapt_train": [], "test": ["93_Liver_examples_overlay_0.png"]}}))
    doc = gather_unlabelled(tmp_path / "out", (_folder_source(["*.dcm"]),), volumes_dir=src, split_file=split,
                            log=lambda *_: None)
    assert doc["slices"] == []
    reasons = {d["path"]: d["reason"] for d in doc["dropped"]}
    assert reasons["renamed_copy.dcm"].startswith("held out: same study as examples_overlay.dcm")


def test_missing_packages_are_reported_not_fatal(tmp_path):
    ghost = dataclasses.replace(PYDICOM, name="ghost", package="no-such-package-xyz", install="pip install ghost")
    doc = gather_unlabelled(tmp_path / "out", (ghost,), split_file=None, log=lambda *_: None)
    assert doc["slices"] == [] and "pip install ghost" in doc["missing"]["ghost"]


def test_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a cache made by this tool"):
        gather_unlabelled(tmp_path, (PYDICOM,), log=lambda *_: None)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_volume_slices_skip_blank_ones_and_are_capped():
    rng = np.random.default_rng(0)
    vol = np.zeros((40, 64, 64), np.int16)
    vol[10:30, 16:48, 16:48] = rng.integers(200, 1000, size=(20, 32, 32))
    stack = Stack(vol, "CT", (1.0, 1.0, 1.0), is_volume=True)
    slices, blank = candidate_slices(stack, all_axes=False, max_per_axis=5, max_frames=8)
    assert sum(blank.values()) == 20  # the 20 empty slices
    assert len(slices) == 5 and all(10 <= i < 30 for i, _, _ in slices)
    # Near-isotropic volumes of an all-axes source are also cut along the other two axes.
    slices, _ = candidate_slices(stack, all_axes=True, max_per_axis=5, max_frames=8)
    assert sorted({axis for _, axis, _ in slices}) == [0, 1, 2]


def test_blank_reason():
    assert blank_reason(np.zeros((64, 64), np.float32)).startswith("blank")
    mask = np.zeros((64, 64), np.float32)
    mask[10:50, 10:50] = 1.0
    assert "grey levels" in blank_reason(mask)
    assert blank_reason(np.random.default_rng(0).random((64, 64)).astype(np.float32)) is None


def test_random_views_on_the_fly(pydicom_cache):
    out, doc = pydicom_cache
    data = UnlabelledSlices(out, views=("hflip", "rot90", "gamma0.7"), seed=3, identity_share=0.0)
    assert len(data) == len(doc["slices"])
    pixels, row, view = data[0]
    assert view in ("hflip", "rot90", "gamma0.7") and row == doc["slices"][0]
    views_epoch0 = [data.view_of(i) for i in range(len(data))]
    assert views_epoch0 == [data.view_of(i) for i in range(len(data))]  # reproducible
    data.set_epoch(1)
    many = [UnlabelledSlices(out, views=("hflip", "rot90"), seed=s).view_of(0) for s in range(40)]
    assert {"", "hflip", "rot90"} == set(many)  # the identity and every view occur
    plain = UnlabelledSlices(out, views=())
    assert plain[0][2] == "" and plain[0][0].shape == (doc["slices"][0]["height"], doc["slices"][0]["width"])


def test_command_line(tmp_path, capsys, monkeypatch):
    from minisam_train.data.unlabelled_cache import main

    monkeypatch.setenv("MINISAM_UNLABELLED_DIR", str(tmp_path / "cache"))  # the default folder
    main(["--sources", "pydicom", "--max-frames", "2"])
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "cache" / "provenance.json").read_text())
    assert list(doc["sources"]) == ["pydicom"] and doc["settings"]["max_frames"] == 2
    assert f"total: {doc['total']['slices']} slices" in out and str(tmp_path / "cache") in out
