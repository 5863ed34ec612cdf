"""The shipped MiniSAM student: loads offline from the package, segments real slices as its card says."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from napari_qlora_minisam import load_model
from napari_qlora_minisam.loading import minisam_dir
from napari_qlora_minisam.models.registry import RandomWeightsWarning

CARD = minisam_dir() / "minisam_card.json"


def test_minisam_loads_from_the_package_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        backend = load_model("minisam", device="cpu")
    assert backend.kind == "hf" and backend.source == "minisam" and backend.spec.image_size == 256
    card = json.loads(CARD.read_text())
    assert backend.identity == card["identity"]  # the weights the card's figures were measured on
    vision = backend.net.config.vision_config
    assert vision.hidden_size == card["architecture"]["hidden_size"]
    # the weights are stored in fp16 (a small wheel) and loaded into fp32
    assert next(backend.net.parameters()).dtype.is_floating_point
    assert (minisam_dir() / "model.safetensors").stat().st_size < 16 * 2**20


def test_minisam_takes_nf4_and_the_cards_figures_are_of_the_budget():
    card = json.loads(CARD.read_text())
    assert card["encoder_gmacs"] <= 10.0  # the architecture's budget (multiply-accumulates)
    backend = load_model("minisam", quantize="nf4", device="cpu")
    assert backend.quantization == "nf4"
    import torch

    with torch.inference_mode():
        emb = backend.encode(torch.rand(1, 3, 256, 256))
    assert emb.shape == (1, 256, 64, 64) and torch.isfinite(emb).all()


@pytest.mark.slow
def test_nf4_minisam_keeps_the_fp32_masks_on_a_real_slice(shared_data):
    """bitsandbytes' packed bf16 CPU kernel empties MiniSAM's decoder masks; the loader keeps it off them."""
    import imageio.v3 as iio

    from napari_qlora_minisam import MiniSamPredictor
    from napari_qlora_minisam.masks import dice, tight_box

    folder = shared_data / "cosmos_extra" / "data" / "test_data" / "90_LungTumour"
    name = sorted(p.name for p in (folder / "images").glob("*lung1*.png"))[0]
    image, label = iio.imread(folder / "images" / name), iio.imread(folder / "labels" / name) > 0
    masks = {}
    for quantize in (None, "nf4"):
        predictor = MiniSamPredictor(load_model("minisam", quantize=quantize, device="cpu"))
        predictor.set_image(image)
        masks[quantize] = predictor.predict(box=tight_box(label), multimask=False)[0][0]
    assert dice(masks[None], label) > 0.8
    assert dice(masks["nf4"], masks[None]) > 0.85


def test_a_missing_weights_folder_is_a_clear_error(monkeypatch, tmp_path):
    from napari_qlora_minisam import loading
    from napari_qlora_minisam.errors import ModelLoadError

    monkeypatch.setattr(loading, "minisam_dir", lambda: tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="MiniSAM weights are missing.*reinstall"):
        load_model("minisam", device="cpu")


@pytest.mark.slow
def test_box_dice_on_real_test_slices_matches_the_card(shared_data, tmp_path):
    """The COSMOS test split, box prompts: mean Dice per object within 0.02 of what the card records."""
    from minisam_train import cli
    from minisam_train.tasks.evaluate import run

    card = json.loads(CARD.read_text())
    cfg = cli.compose("eval", [
        f"data.roots=[{shared_data / 'cosmos_sample'},{shared_data / 'cosmos_extra'}]",
        f"data.split_file={shared_data / 'splits.json'}", "data.split_key=test",
        "models=[minisam]", "prompts=[box]", f"output_dir={tmp_path}", "device=cpu", "plots=false",
    ])
    result = run(cfg)
    dice = [r["dice"] for r in result.rows if r["prompt"] == "box" and r["selection"] == "deployable"]
    assert len(dice) == card["test"]["objects"]
    assert float(np.mean(dice)) == pytest.approx(card["test"]["box_dice_per_object"], abs=0.02)
