"""COSMOS-layout, split-file and volume readers, on tiny folders built here and on the real sample."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from minisam_train.data import CosmosDataset, DataError, VolumeDataset, read_dataset_classes, split_images


def make_cosmos_root(root, datasets=None, size=(64, 64), modalities=True):
    """A COSMOS-layout root: per dataset, slices with a bright square (value 255) and a bar (value 128).

    ``datasets``: name -> number of slices (default ``{"1_Toy": 2, "2_Other": 1}``).
    """
    datasets = datasets or {"1_Toy": 2, "2_Other": 1}
    rng = np.random.default_rng(0)
    (root / "data_infor_json").mkdir(parents=True, exist_ok=True)
    for ds, n in datasets.items():
        (root / "data_infor_json" / f"{ds}.json").write_text(json.dumps(
            {"info": {"1": "Square", "2": "Bar"}, "color": {"1": 255, "2": 128}}))
        for sub in ("images", "labels"):
            (root / "data" / "test_data" / ds / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = np.zeros(size, np.uint8)
            label[10 + i:30 + i, 12:32] = 255          # 400 px square
            label[40:44, 5:50] = 128                   # 180 px bar
            image = (rng.random(size) * 60).astype(np.uint8)
            image[label == 255] += 150
            image[label == 128] += 90
            iio.imwrite(root / "data" / "test_data" / ds / "images" / f"{ds}_{i}.png", image)
            iio.imwrite(root / "data" / "test_data" / ds / "labels" / f"{ds}_{i}.png", label)
    if modalities:
        (root / "modalities.json").write_text(json.dumps({ds: "ct" for ds in datasets}))
    return root


def test_reads_images_labels_objects_and_modality(tmp_path):
    ds = CosmosDataset(make_cosmos_root(tmp_path))
    assert len(ds) == 3 and ds.datasets == ["1_Toy", "2_Other"]
    rec = ds[0]
    assert (rec.dataset, rec.modality, rec.image_name) == ("1_Toy", "ct", "1_Toy_0.png")
    assert list(rec.objects) == ["Square", "Bar"]
    assert rec.objects["Square"].sum() == 400 and rec.objects["Bar"].sum() == 180
    assert rec.image.shape == rec.label.shape == (64, 64)


def test_min_object_pixels_drops_small_objects(tmp_path):
    ds = CosmosDataset(make_cosmos_root(tmp_path), min_object_pixels=200)
    assert list(ds[0].objects) == ["Square"]


def test_dataset_filter_modality_override_and_several_roots(tmp_path):
    a = make_cosmos_root(tmp_path / "a", {"1_Toy": 1})
    b = make_cosmos_root(tmp_path / "b", {"2_Other": 2}, modalities=False)
    ds = CosmosDataset([a, b], modalities={"2_Other": "MRI"})
    assert [e.modality for e in ds.entries] == ["ct", "mri", "mri"]
    assert CosmosDataset([a, b]).entries[-1].modality == "unknown"
    assert len(CosmosDataset([a, b], datasets=["2_Other"])) == 2
    with pytest.raises(DataError, match="9_Missing"):
        CosmosDataset([a, b], datasets=["9_Missing"])


def test_split_file_keeps_only_listed_images(tmp_path):
    root = make_cosmos_root(tmp_path / "r")
    split = tmp_path / "splits.json"
    split.write_text(json.dumps({"1_Toy": {"root": "r", "adapt_train": ["1_Toy_0.png"], "test": ["1_Toy_1.png"]}}))
    test = CosmosDataset(root, include=split_images(split, "test"))
    assert [e.image_name for e in test.entries] == ["1_Toy_1.png"]  # 2_Other is not in the split file
    with pytest.raises(DataError, match="no_such_key"):
        split_images(split, "no_such_key")
    with pytest.raises(DataError, match="does not exist"):
        split_images(tmp_path / "nope.json")


def test_real_split_file_selects_test_images(shared_data):
    test = CosmosDataset(shared_data / "cosmos_sample", include=split_images(shared_data / "splits.json", "test"))
    names = {e.image_name for e in test.entries}
    assert len(names) == 18 and "22_Heart_4_5.png" in names and "22_Heart_2_10.png" not in names


def test_missing_json_is_a_clear_error(tmp_path):
    root = make_cosmos_root(tmp_path)
    (root / "data_infor_json" / "2_Other.json").unlink()
    with pytest.raises(DataError, match=r"Missing class file .*2_Other\.json"):
        CosmosDataset(root)


def test_label_value_not_in_json_is_a_clear_error(tmp_path):
    root = make_cosmos_root(tmp_path)
    path = root / "data" / "test_data" / "1_Toy" / "labels" / "1_Toy_0.png"
    label = iio.imread(path)
    label[0:3, 0:3] = 77
    iio.imwrite(path, label)
    ds = CosmosDataset(root)
    with pytest.raises(DataError, match=r"grey value\(s\) \[77\]"):
        ds[0]


def test_image_label_size_mismatch_is_a_clear_error(tmp_path):
    root = make_cosmos_root(tmp_path)
    iio.imwrite(root / "data" / "test_data" / "1_Toy" / "images" / "1_Toy_0.png", np.zeros((32, 64), np.uint8))
    with pytest.raises(DataError, match=r"\(32, 64\) but its label is \(64, 64\)"):
        CosmosDataset(root)[0]


def test_empty_dataset_and_missing_split_are_clear_errors(tmp_path):
    root = make_cosmos_root(tmp_path, {"1_Toy": 0})
    with pytest.raises(DataError, match="No images found"):
        CosmosDataset(root)
    with pytest.raises(DataError, match="valid_data"):
        CosmosDataset(root, split="valid_data")


def test_malformed_class_json(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"info": {"1": "A", "2": "B"}, "color": {"1": 3}}')
    with pytest.raises(DataError, match="only one of"):
        read_dataset_classes(bad)
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_dataset_classes(bad)


def test_unreadable_image_raises_data_error(tmp_path):
    root = make_cosmos_root(tmp_path)
    (root / "data" / "test_data" / "1_Toy" / "images" / "1_Toy_1.png").write_bytes(b"not a png")
    ds = CosmosDataset(root)
    with pytest.raises(DataError, match="Cannot read image"):
        ds[1]


def test_volumes_are_read_slice_wise(tmp_path):
    image = np.random.default_rng(0).integers(-1000, 1000, (4, 32, 32)).astype(np.int16)
    label = np.zeros((4, 32, 32), np.uint8)
    label[1, 5:15, 5:15] = 1      # 100 px: evaluated
    label[2, 5:10, 5:10] = 1      # 25 px: below the 50-pixel rule
    tifffile.imwrite(tmp_path / "v_image.tif", image)
    tifffile.imwrite(tmp_path / "v_label.tif", label)
    (tmp_path / "volumes.json").write_text(json.dumps({"v": {"modality": "CT", "object": "Tumour"}}))
    vols = VolumeDataset(tmp_path)
    assert [e.image_name for e in vols.entries] == ["v_z1"]
    rec = vols[0]
    assert rec.modality == "ct" and rec.image.dtype == np.uint8 and rec.objects["Tumour"].sum() == 100
    # Scaled per volume: the volume's minimum maps to 0 and its maximum to 255, whatever the slice holds.
    assert rec.image.min() >= 0 and rec.image.max() <= 255
    tifffile.imwrite(tmp_path / "v_label.tif", label * 3)
    with pytest.raises(DataError, match=r"grey value\(s\) \[3\]"):
        VolumeDataset(tmp_path)
    (tmp_path / "volumes.json").unlink()
    with pytest.raises(DataError, match="volumes.json"):
        VolumeDataset(tmp_path)


def test_real_volumes_folder(shared_data):
    vols = VolumeDataset(shared_data / "volumes", names=["breast1"])
    # Slices 8-10 hold the lesion, only slice 9 with >= 50 px (as in cosmos_extra).
    assert [e.image_name for e in vols.entries] == ["breast1_z9"]
    assert vols[0].modality == "mri" and list(vols[0].objects) == ["BreastLesion"]


def test_volumes_listed_one_by_one_with_a_class_map_and_no_cosmos_root(tmp_path):
    from minisam_train import cli
    from minisam_train.tasks.evaluate import build_sources

    label = np.zeros((2, 30, 30), np.uint8)
    label[0, 2:12, 2:12] = 1    # Liver, 100 px
    label[0, 20:28, 20:28] = 2  # Tumour, 64 px
    label[1, 2:12, 2:12] = 2
    image = np.arange(label.size, dtype=np.float32).reshape(label.shape)
    tifffile.imwrite(tmp_path / "a.tif", image)
    tifffile.imwrite(tmp_path / "a_seg.tif", label)
    spec = f"{{image: {tmp_path / 'a.tif'}, label: {tmp_path / 'a_seg.tif'}, modality: mri, name: a, " \
           "classes: {Liver: 1, Tumour: 2}}"
    cfg = cli.compose("eval", ["data.root=null", f"data.volumes=[{spec}]"])
    sources = build_sources(cfg.data)
    assert [e.image_name for e in sources.entries] == ["a_z0", "a_z1"]
    first, second = list(sources)
    assert list(first.objects) == ["Liver", "Tumour"] and list(second.objects) == ["Tumour"]
    # Per-volume scaling: slice 0 holds the volume minimum (0), slice 1 its maximum (255).
    assert first.image.min() == 0 and second.image.max() == 255
