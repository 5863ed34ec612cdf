"""The CT and MRI adapters shipped in the package: listed, documented, small, and made for the bundled base."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_qlora_minisam.adapters import list_adapters, pretrained_adapters_dir


@pytest.fixture(scope="module")
def minisam():
    from napari_qlora_minisam import load_model

    return load_model("minisam", device="cpu")


@pytest.mark.slow  # real LiteMedSAM / MiniSAM, through request.getfixturevalue
@pytest.mark.parametrize("folder_name, modality, base", [("ct", "ct", "litemedsam"), ("mri", "mri", "litemedsam"),
                                                         ("minisam-ct", "ct", "minisam"),
                                                         ("minisam-mri", "mri", "minisam")])
def test_shipped_adapter_is_complete(folder_name, modality, base, request):
    folder = pretrained_adapters_dir() / folder_name
    meta = json.loads((folder / "minisam_adapter.json").read_text())
    assert meta["modality"] == modality and meta["quantize"] == "nf4"
    assert meta["base_identity"] == request.getfixturevalue(base).identity  # loads onto its bundled base
    assert meta["base_source"] == base and meta["name"] == folder_name
    assert meta["data"]["split_key"] == "adapt_train" and meta["data"]["train_slices"]
    # the same LoRA is a larger share of MiniSAM's 5.7 M parameters than of LiteMedSAM's 9.8 M
    assert meta["training"]["trainable_share"] < (0.01 if base == "litemedsam" else 0.02)
    assert meta["training"]["trainable_params"] < 5e6
    assert "box/deployable" in meta["scores"]["dice"][modality]           # measured test scores recorded
    assert (folder / "adapter_model.safetensors").stat().st_size < 5e6
    assert folder_name in {a.name for a in list_adapters([pretrained_adapters_dir()])}


@pytest.fixture(scope="module")
def nf4_with_shipped_adapters():
    from napari_qlora_minisam import MiniSamPredictor, load_model

    model = load_model("litemedsam", quantize="nf4", device="cpu",
                       adapters=[pretrained_adapters_dir() / "ct", pretrained_adapters_dir() / "mri"])
    return model, MiniSamPredictor(model)


# Measured on 22_Heart_4_5 (held-out patient) when the adapters were shipped: one click, LV 0.004 -> 0.75 and
# RV 0.08 -> 0.54 with the MRI adapter; boxes LV 0.95 -> 0.91, RV 0.86 -> 0.90.
CLICK_MIN = 0.45


def _click(mask):
    """The COSMOS first click: the centroid, or the interior pixel farthest from the edge if it falls outside."""
    from scipy import ndimage as ndi

    from napari_qlora_minisam.masks import centroid

    cx, cy = (int(v) for v in centroid(mask))
    if not mask[cy, cx]:
        cy, cx = np.unravel_index(np.argmax(ndi.distance_transform_edt(mask)), mask.shape)
    return np.array([[cx, cy]], np.float32)


def _heart_scores(model, heart_slice, adapter_name):
    """(one-click Dice, box Dice) per ventricle of the held-out heart slice, adapter off and on."""
    from napari_qlora_minisam import MiniSamPredictor
    from napari_qlora_minisam.adapters import set_adapter
    from napari_qlora_minisam.masks import dice, tight_box

    predictor = MiniSamPredictor(model)
    image, label = heart_slice
    scores = {}
    for adapter in (None, adapter_name):
        set_adapter(model, adapter)
        predictor.set_image(image)
        for name, value in (("LV", 85), ("RV", 255)):
            gt = label == value
            masks, iou, _ = predictor.predict(points=_click(gt), point_labels=np.array([1]), multimask=True)
            box_mask = predictor.predict(box=tight_box(gt), multimask=False)[0][0]
            scores[adapter, name] = (dice(masks[int(np.argmax(iou))], gt), dice(box_mask, gt))
    set_adapter(model, None)
    return scores


def test_shipped_mri_adapter_makes_clicks_work_on_a_test_heart_slice(nf4_with_shipped_adapters, heart_slice):
    """Real LiteMedSAM (NF4) on a held-out cardiac slice: one click on a ventricle segments it with the MRI
    adapter (zero-shot LiteMedSAM, trained on boxes only, does not), and boxes stay as good."""
    model, _ = nf4_with_shipped_adapters
    scores = _heart_scores(model, heart_slice, "mri")
    for name in ("LV", "RV"):
        click_off, box_off = scores[None, name]
        click_on, box_on = scores["mri", name]
        assert click_on >= CLICK_MIN and click_on >= click_off + 0.3, (name, scores)
        assert box_on >= box_off - 0.06, (name, scores)
    assert np.mean([scores["mri", n][1] for n in ("LV", "RV")]) >= np.mean([scores[None, n][1] for n in ("LV", "RV")])


# Measured on 22_Heart_4_5 (held-out patient) when MiniSAM's adapters were shipped: one click, NF4 MiniSAM
# LV 0.00 -> 0.50, RV 0.00 -> 0.62 with minisam-mri.
@pytest.mark.slow
def test_minisam_mri_adapter_makes_clicks_work_on_a_test_heart_slice(heart_slice):
    from napari_qlora_minisam import load_model

    model = load_model("minisam", quantize="nf4", device="cpu", adapters=[pretrained_adapters_dir() / "minisam-mri"])
    scores = _heart_scores(model, heart_slice, "minisam-mri")
    for name in ("LV", "RV"):
        assert scores["minisam-mri", name][0] >= scores[None, name][0] + 0.3, scores
