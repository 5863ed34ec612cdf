"""``minisam-train adapt`` on image/label TIFF pairs (as saved from napari), tiny model, a few steps."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from minisam_train.cli import compose
from minisam_train.data import DataError
from minisam_train.data.pairs import read_label_pairs
from minisam_train.tasks import adapt
from napari_qlora_minisam import load_model
from napari_qlora_minisam.embedding_cache import image_digest

from tests.core.test_train_adapter import scene


def pairs_cfg(tmp_path, *overrides):
    return compose("adapt", [
        "--modality", "mri", "base=tiny_hf_sam", "quantize=null", "train.device=cpu", "train.batch_size=1",
        "train.steps=3", "train.val_every=3", "train.early_stopping.enabled=false", "data.augment.views_per_image=1",
        "logging.progress=false", f"output_dir={tmp_path / 'run'}", f"adapter.out_dir={tmp_path / 'adapter'}",
        *overrides,
    ])


@pytest.fixture()
def pairs_dir(tmp_path, shared_data):
    """A real 3D brain MRI with its tumour label (7 labelled slices) and a 2D scene with three objects."""
    import tifffile

    folder = tmp_path / "saved"
    folder.mkdir()
    volumes = shared_data / "volumes"
    shutil.copy(volumes / "brain1_image.tif", folder / "brain1.tif")
    shutil.copy(volumes / "brain1_label.tif", folder / "brain1_labels.tif")
    image, labels = scene(0)
    tifffile.imwrite(folder / "discs.tif", image)
    tifffile.imwrite(folder / "discs_labels.tif", labels)
    (folder / "discs_labels.objects.csv").write_text("index,name\n1,a\n")   # the writer's table: ignored
    return folder


def test_adapt_from_a_folder_of_pairs(pairs_dir, tmp_path):
    import tifffile

    summary = adapt.run(pairs_cfg(tmp_path, f"data.pairs_dir={pairs_dir}"))
    assert summary["steps_done"] == 3 and summary["adapter_dir"] == str(tmp_path / "adapter")
    data = json.loads((tmp_path / "adapter" / "minisam_adapter.json").read_text())["data"]
    assert data["source"] == "pairs" and data["modality"] == "mri"
    brain = tifffile.imread(pairs_dir / "brain1.tif")
    assert [(p["image"], p["labels"], p["digest"], p["labelled_slices"]) for p in data["pairs"]][0] == (
        str(pairs_dir / "brain1.tif"), str(pairs_dir / "brain1_labels.tif"), image_digest(brain), 7)
    assert data["objects"] == 4 and data["val_objects"] == 1          # brain tumour + 3 discs; 20 %, at least 1
    assert data["train_masks"] + data["val_masks"] == 7 + 3
    assert any(s.startswith("brain1.tif#z") for s in data["train_slices"] + data["val_slices"])
    assert summary["val_views"] == len(data["val_slices"]) >= 1       # held-back objects are validated
    # named by adapter.name (default: the modality), not by its folder
    assert load_model("tiny_hf_sam", adapters=tmp_path / "adapter", device="cpu").active_adapter == "mri"


def test_adapt_from_listed_pairs(tmp_path):
    import tifffile

    for k in range(2):
        image, labels = scene(k)
        tifffile.imwrite(tmp_path / f"s{k}.tif", image)
        tifffile.imwrite(tmp_path / f"s{k}_seg.tif", labels)
    listed = ",".join(f"['{tmp_path / f's{k}.tif'}','{tmp_path / f's{k}_seg.tif'}']" for k in range(2))
    summary = adapt.run(pairs_cfg(tmp_path, f"data.pairs=[{listed}]"))
    data = summary["data"]
    assert [p["labelled_slices"] for p in data["pairs"]] == [1, 1] and data["objects"] == 6
    assert data["val_objects"] == 1 and data["val_masks"] == 1 and summary["adapter_dir"]


def _write(path, array):
    import tifffile

    tifffile.imwrite(path, array)


@pytest.mark.parametrize("case, message", [
    ("image-without-labels", r"Images without a label file .*b\.tif"),
    ("labels-without-image", r"Label files without their image .*c_labels\.tif"),
    ("shape-mismatch", r"a\.tif has shape \(96, 96\) but its label file .*a_labels\.tif has \(96, 80\)"),
    ("listed-missing", r"The label file .*nope_labels\.tif of the pair with .*a\.tif does not exist"),
    ("empty-folder", "No <name>.tif / <name>_labels.tif pair"),
])
def test_pair_errors_are_clear_and_nothing_is_written(tmp_path, case, message):
    folder = tmp_path / "saved"
    folder.mkdir()
    image, labels = scene(0)
    if case != "empty-folder":
        _write(folder / "a.tif", image)
        _write(folder / "a_labels.tif", labels[:, :80] if case == "shape-mismatch" else labels)
    if case == "image-without-labels":
        _write(folder / "b.tif", image)
    if case == "labels-without-image":
        _write(folder / "c_labels.tif", labels)
    where = (f"data.pairs=[['{folder / 'a.tif'}','{folder / 'nope_labels.tif'}']]" if case == "listed-missing"
             else f"data.pairs_dir={folder}")
    with pytest.raises(DataError, match=message):
        adapt.run(pairs_cfg(tmp_path, where))
    assert not (tmp_path / "adapter").exists()


def test_labels_must_be_integers(tmp_path):
    image, labels = scene(0)
    _write(tmp_path / "a.tif", image)
    _write(tmp_path / "a_labels.tif", labels.astype(np.float32))
    pair = read_label_pairs(pairs_dir=tmp_path)[0]
    from napari_qlora_minisam import InputError

    with pytest.raises(InputError, match="a.tif have dtype float32; they must be an integer array"):
        adapt.run(pairs_cfg(tmp_path, f"data.pairs_dir={tmp_path}"))
    assert pair.labels.dtype == np.float32 and not (tmp_path / "adapter").exists()
