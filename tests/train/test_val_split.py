"""The project's validation split: patient-level, disjoint from test, derived by a fixed rule."""

from __future__ import annotations

import json

import pytest

from minisam_train.data import DataError, read_splits, split_images
from minisam_train.data.splits import VAL_SPLIT_FILE, derive_val_split, patient_id
from tests.conftest import SHARED_DATA


@pytest.mark.parametrize("dataset, name, patient", [
    ("22_Heart", "22_Heart_2_10.png", "2"),
    ("6_Pancreas", "6_Pancreas_10_43_0.png", "10"),
    ("90_LungTumour", "90_LungTumour_lung1_32.png", "lung1"),
    ("93_LiverLesion", "93_LiverLesion_examples_overlay_0.png", "examples_overlay"),
])
def test_patient_id(dataset, name, patient):
    assert patient_id(dataset, name) == patient


def _patients(split: dict, key: str) -> dict[str, set[str]]:
    return {ds: {patient_id(ds, n) for n in parts.get(key, [])} for ds, parts in split.items()}


def test_shipped_val_split_is_disjoint_from_test_and_train_at_patient_level():
    split = read_splits(VAL_SPLIT_FILE)
    val, test, train = (_patients(split, k) for k in ("val", "test", "adapt_train"))
    assert any(val.values()), "the shipped split has no val images at all"
    for ds in split:
        assert not val[ds] & test[ds], f"{ds}: val and test share patients {val[ds] & test[ds]}"
        assert not val[ds] & train[ds], f"{ds}: val and adapt_train share patients {val[ds] & train[ds]}"
    # split_images, the reader every task uses, sees the new key.
    assert split_images(VAL_SPLIT_FILE, "val") == {ds: set(p["val"]) for ds, p in split.items()}


def test_shipped_val_split_is_the_derivation_of_the_shared_split():
    shared = SHARED_DATA / "splits.json"
    if not shared.is_file():
        pytest.skip("shared data not present")
    source = read_splits(shared)
    shipped = read_splits(VAL_SPLIT_FILE)
    assert shipped == derive_val_split(source)
    for ds, parts in source.items():
        # test is untouched; adapt_train and val together are the old adapt_train.
        assert shipped[ds]["test"] == parts["test"]
        assert sorted(shipped[ds]["adapt_train"] + shipped[ds]["val"]) == sorted(parts["adapt_train"])


def test_derive_val_rule():
    split = {"A": {"root": "r", "adapt_train": ["A_1_0.png", "A_1_1.png", "A_2_0.png", "A_3_0.png", "A_3_1.png",
                                                  "A_4_0.png", "A_4_1.png", "A_5_0.png", "A_5_1.png"],
                   "test": ["A_9_0.png"]},
             "B": {"adapt_train": ["B_x1_3.png"], "test": ["B_x2_1.png"]}}
    out = derive_val_split(split)
    # 5 patients -> ceil(5/4) = 2 to val: the fewest slices first (patient 2), then the lowest id (1).
    assert out["A"]["val"] == ["A_1_0.png", "A_1_1.png", "A_2_0.png"]
    assert out["A"]["adapt_train"] == ["A_3_0.png", "A_3_1.png", "A_4_0.png", "A_4_1.png", "A_5_0.png", "A_5_1.png"]
    assert out["A"]["root"] == "r" and out["A"]["test"] == ["A_9_0.png"]
    assert out["B"]["val"] == [] and out["B"]["adapt_train"] == ["B_x1_3.png"]  # one patient: kept for training
    assert derive_val_split(split) == out  # deterministic


def test_patient_in_train_and_test_is_an_error(tmp_path):
    bad = {"A": {"adapt_train": ["A_1_0.png"], "test": ["A_1_5.png"]}}
    with pytest.raises(DataError, match=r"A: patient\(s\) \['1'\] are in both adapt_train and test"):
        derive_val_split(bad)


def test_write_val_split(tmp_path, capsys):
    from minisam_train.data.splits import main

    src = tmp_path / "splits.json"
    src.write_text(json.dumps({"A": {"adapt_train": ["A_1_0.png", "A_2_0.png"], "test": ["A_3_0.png"]}}))
    main([str(src), str(tmp_path / "out.json")])
    assert split_images(tmp_path / "out.json", "val") == {"A": {"A_1_0.png"}}
    assert "A: 1 adapt_train, 1 val, 1 test" in capsys.readouterr().out


def test_distillation_can_leave_out_test_and_val():
    root = SHARED_DATA / "cosmos_sample"
    if not root.is_dir():
        pytest.skip("shared data not present")
    from minisam_train.data.unlabelled import cosmos_slices

    names = {s.path.name for s in cosmos_slices(root, exclude_split_file=VAL_SPLIT_FILE,
                                                exclude_split_key=["test", "val"])}
    held = {n for key in ("test", "val") for images in split_images(VAL_SPLIT_FILE, key).values() for n in images}
    assert names and not names & held
    # One key leaves the other split in: val images come back when only test is excluded.
    only_test = {s.path.name for s in cosmos_slices(root, exclude_split_file=VAL_SPLIT_FILE, exclude_split_key="test")}
    assert only_test - names == {n for n in held if n in only_test} != set()


def test_distill_config_takes_a_list_of_keys():
    root = SHARED_DATA / "cosmos_sample"
    if not root.is_dir():
        pytest.skip("shared data not present")
    from omegaconf import OmegaConf

    from minisam_train.tasks.distill import build_items

    data = {"folders": [], "cosmos_roots": [str(root)], "volume_stride": 1, "exclude": [], "use_labels": True,
            "exclude_split_file": str(VAL_SPLIT_FILE), "max_slices": None, "views": []}
    both = build_items(OmegaConf.create({"data": {**data, "exclude_split_key": ["test", "val"]}}))
    only_test = build_items(OmegaConf.create({"data": {**data, "exclude_split_key": "test"}}))
    val = {n for images in split_images(VAL_SPLIT_FILE, "val").values() for n in images}
    assert not {s.path.name for s in both} & val
    assert {s.path.name for s in only_test} & val
