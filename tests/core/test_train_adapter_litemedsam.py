"""``train_adapter`` with the real LiteMedSAM on NF4 and two real brain-tumour MRI slices (a few steps)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_qlora_minisam import MiniSamPredictor, load_model, train_adapter
from napari_qlora_minisam.adapter_training import AdapterRecipe, EarlyStopping
from napari_qlora_minisam.adapters import set_adapter

from napari_qlora_minisam.masks import tight_box

SLICES = ("91_BrainTumour_brain1_13.png", "91_BrainTumour_brain1_15.png")  # adapt_train: never test slices


def box_logits(model, image, box):
    predictor = MiniSamPredictor(model)
    predictor.set_image(image)
    return predictor.predict(box=box, multimask=False)[2]


@pytest.mark.slow
def test_nf4_litemedsam_adapter_from_two_real_slices(shared_data, tmp_path):
    import imageio.v3 as iio

    folder = shared_data / "cosmos_extra" / "data" / "test_data" / "91_BrainTumour"
    samples = [(iio.imread(folder / "images" / n), iio.imread(folder / "labels" / n)) for n in SLICES]
    model = load_model("litemedsam", quantize="nf4", device="cpu")
    # The last weights are written (no early stopping), so the adapter is sure to differ from the base.
    recipe = AdapterRecipe(steps=8, val_every=4, early_stopping=EarlyStopping(enabled=False))
    steps = []
    path = train_adapter(model, samples, tmp_path, "brain-tumour", recipe=recipe, max_minutes=1.0,
                         sample_names=list(SLICES), modality="mri", progress=lambda p: steps.append(p.step))

    meta = json.loads((path / "minisam_adapter.json").read_text())
    assert meta["quantize"] == "nf4" and meta["training"]["steps_done"] == 8 and steps[-1] == 8
    assert meta["objects"] == {"total": 2, "held_back": 1, "train_masks": 1, "held_back_masks": 1}
    scores = meta["scores"]
    assert scores["held_back_objects"] == 1
    assert scores["box"]["before"] > 0.7      # LiteMedSAM boxes brain tumours well (README reference: 0.83)
    assert all(0.0 <= scores[p][k] <= 1.0 for p in ("box", "click") for k in ("before", "after"))

    image, labels = samples[0]
    box = tight_box(labels > 0)
    attached = box_logits(model, image, box)
    reloaded = load_model("litemedsam", quantize="nf4", adapters=[path], device="cpu")
    assert reloaded.active_adapter == "brain-tumour" and not reloaded.point_multimask
    with_adapter = box_logits(reloaded, image, box)
    np.testing.assert_array_equal(with_adapter, attached)           # attached exactly as written
    set_adapter(reloaded, None)
    assert np.abs(box_logits(reloaded, image, box) - with_adapter).max() > 1e-2   # the adapter changes predictions
