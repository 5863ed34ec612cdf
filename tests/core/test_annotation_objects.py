"""The objects panel's figures, read from the label image: ids, names, slices, mm² / mL / px."""

import numpy as np
import pytest

from napari_qlora_minisam.annotation.objects import (
    default_name,
    features_with_names,
    measure_objects,
    names_from_features,
    spacing_mm,
)


def test_spacing_from_scale_and_units():
    assert spacing_mm((1.0, 1.0)) is None  # plain pixels
    assert spacing_mm((0.78, 0.78)) == (0.78, 0.78)  # radiology scale without a unit: mm
    assert spacing_mm((2.0, 2.0), ("micrometer", "micrometer")) == pytest.approx((0.002, 0.002))
    assert spacing_mm((1.0, 1.0), ("millimeter", "millimeter")) == (1.0, 1.0)
    assert spacing_mm((1.0, 0.5), ("second", "millimeter")) is None


def test_measure_2d_and_3d():
    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 2:7] = 3
    labels[10:12, 10:11] = 8
    recs = measure_objects(labels, 0, (0.5, 0.5), {3: "LV"})
    assert [(r.id, r.name, r.pixels) for r in recs] == [(3, "LV", 20), (8, "object 8", 2)]
    assert recs[0].size == pytest.approx(5.0) and recs[0].size_text(0) == "5.0 mm²"
    assert measure_objects(labels, 0)[0].size_text(0) == "20 px"
    vol = np.zeros((5, 8, 8), np.int32)
    vol[1:4, 2:4, 2:4] = 2
    [rec] = measure_objects(vol, 1, (5.0, 1.0, 1.0))
    assert rec.slices == (1, 3) and rec.size == pytest.approx(12 * 5 / 1000) and rec.size_text(1) == "0.06 mL"
    assert measure_objects(np.zeros((3, 3), np.int32), 0) == []


def test_names_in_features_and_defaults():
    table = features_with_names({2: "Liver", 1: "Spleen"})
    assert table == {"index": [0, 1, 2], "name": ["background", "Spleen", "Liver"]}
    assert names_from_features(table) == {0: "background", 1: "Spleen", 2: "Liver"}
    assert names_from_features({"index": [1]}) == {}
    assert default_name(4, {"Liver"}, ["Liver", "Spleen"]) == "Spleen"
    assert default_name(4, {"Liver", "Spleen"}, ["Liver", "Spleen"]) == "object 4"
