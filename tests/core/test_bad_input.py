"""Every kind of bad input named in issue 2 gets an InputError / ModelLoadError that names the fix."""

from __future__ import annotations

import numpy as np
import pytest

from napari_qlora_minisam import InputError, MiniSamPredictor, ModelLoadError, load_model


@pytest.fixture(scope="module")
def predictor(tiny_hf):
    """A predictor with a 40x60 image set (tiny model: the checks run before and after the network)."""
    p = MiniSamPredictor(tiny_hf)
    image = np.arange(40 * 60, dtype=np.uint8).reshape(40, 60)
    p.set_image(image)
    return p


# -- images -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 0), np.uint8), "too small"),
        (np.zeros((0, 10), np.uint8), "too small"),
        (np.ones((1, 1), np.uint8), "too small"),
        (np.random.default_rng(0).random((2, 3, 8, 8)), r"shape \(2, 3, 8, 8\).*one slice at a time"),
        (np.random.default_rng(0).random((8, 8, 5)), r"expected a 2D grey \(H, W\) or RGB \(H, W, 3\)"),
        (np.full((16, 16), 7, np.uint16), "constant"),
        (np.array([["a", "b"], ["c", "d"]]), "not numeric"),
        (None, "No image given"),
    ],
    ids=["empty", "empty-rows", "1x1", "4d", "5-channel", "constant", "strings", "none"],
)
def test_bad_images(predictor, image, message):
    with pytest.raises(InputError, match=message):
        predictor.set_image(image)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_image(predictor, bad):
    image = np.random.default_rng(1).random((16, 16)).astype(np.float32)
    image[3, 4] = bad
    with pytest.raises(InputError, match=r"NaN or infinite.*np.nan_to_num"):
        predictor.set_image(image)


def test_unknown_intensity_policy(predictor):
    with pytest.raises(InputError, match=r"Unknown intensity policy 'ct_brain'.*ct_soft_tissue"):
        predictor.set_image(np.eye(8), intensity="ct_brain")


def test_predict_before_set_image(tiny_hf):
    with pytest.raises(InputError, match=r"No image is set; call set_image"):
        MiniSamPredictor(tiny_hf).predict(box=[1, 1, 5, 5])


# -- prompts ----------------------------------------------------------------------------------------------

def test_no_prompt(predictor):
    with pytest.raises(InputError, match="No prompt given"):
        predictor.predict()


@pytest.mark.parametrize("point", [(-1, 5), (60, 5), (5, 40), (5, -0.5), (1e6, 1e6)])
def test_points_outside_the_image(predictor, point):
    with pytest.raises(InputError, match=r"outside the 60x40 image \(x in 0\.\.59, y in 0\.\.39\)"):
        predictor.predict(points=[[10, 10], point], point_labels=[1, 1])


def test_points_on_the_border_are_fine(predictor):
    masks, scores, _ = predictor.predict(points=[[0, 0], [59, 39]], point_labels=[1, 0])
    assert masks.shape == (3, 40, 60) and np.isfinite(scores).all()


@pytest.mark.parametrize(
    "points, labels, message",
    [
        ([[1, 2], [3, 4], [5, 6]], [1, 0], "3 points but 2 labels"),
        ([[1, 2]], [1, 1, 0], "1 points but 3 labels"),
        ([[1, 2]], None, "Points need labels"),
        (None, [1], "Points need labels"),
        ([], [], "Empty point prompt"),
        ([[1, np.nan]], [1], "NaN or infinity"),
        ([[1, 2]], [2], "labels must be 1 .* or 0"),
    ],
    ids=["more-points", "more-labels", "no-labels", "no-points", "empty", "nan", "bad-label"],
)
def test_bad_points(predictor, points, labels, message):
    with pytest.raises(InputError, match=message):
        predictor.predict(points=points, point_labels=labels)


@pytest.mark.parametrize(
    "box, message",
    [
        ([30, 5, 10, 20], r"x1 < x0 or y1 < y0"),
        ([5, 30, 10, 20], r"x1 < x0 or y1 < y0"),
        ([np.nan, 1, 5, 5], "NaN or infinity"),
        ([100, 100, 120, 120], "entirely outside the 60x40 image"),
        ([1, 2, 3, 4, 5, 6, 7, 8], "takes one box, got 2; use predict_batch"),
    ],
    ids=["x1<x0", "y1<y0", "nan", "outside", "two-boxes"],
)
def test_bad_boxes(predictor, box, message):
    with pytest.raises(InputError, match=message):
        predictor.predict(box=box)


def test_loose_box_is_clipped_not_refused(predictor):
    inside, _, _ = predictor.predict(box=[0, 0, 59, 39], multimask=False)
    loose, _, _ = predictor.predict(box=[-10, -5, 80, 50], multimask=False)
    np.testing.assert_array_equal(inside, loose)


def test_bad_mask_input(predictor):
    # The tiny model's grid is 16x16, so its low-res logits are 64x64 (LiteMedSAM / SAM: 256x256).
    with pytest.raises(InputError, match=r"mask_input must be low-res logits of shape \(1, 64, 64\)"):
        predictor.predict(box=[1, 1, 20, 20], mask_input=np.zeros((256, 256)))


def test_predict_batch_mismatch(predictor):
    with pytest.raises(InputError, match="2 boxes but 1 point sets"):
        predictor.predict_batch(boxes=[[1, 1, 9, 9], [2, 2, 8, 8]], points=[[[3, 3]]], point_labels=[[1]])
    with pytest.raises(InputError, match=r"must be \(B, N, 2\)"):
        predictor.predict_batch(points=[[3, 3]], point_labels=[1])


# -- load_model -------------------------------------------------------------------------------------------

def test_unknown_source():
    with pytest.raises(ModelLoadError, match=r"Unknown model source 'sam_vit_z'.*litemedsam.*save_pretrained"):
        load_model("sam_vit_z", device="cpu")


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(ModelLoadError, match=r"does not exist; check the path"):
        load_model(str(tmp_path / "medsam_vit_b.pth"), device="cpu")


def test_corrupt_checkpoint_file(tmp_path):
    path = tmp_path / "medsam_vit_b.pth"
    path.write_bytes(b"\x80\x04garbage" * 10)
    with pytest.raises(ModelLoadError, match=r"medsam_vit_b\.pth.*could not be read"):
        load_model(str(path), device="cpu")


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match=r"no config\.json.*save_pretrained"):
        load_model(str(tmp_path), device="cpu")


def test_directory_with_broken_weights(tmp_path):
    from napari_qlora_minisam.models.registry import HF_SPECS

    HF_SPECS["tiny_hf_sam"].config().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match=str(tmp_path.name)):
        load_model(str(tmp_path), device="cpu")


@pytest.mark.parametrize("quantize", ["int8", "nf3", 4])
def test_unsupported_quantization(quantize):
    with pytest.raises(ModelLoadError, match=r"not supported; use quantize=None or quantize='nf4'"):
        load_model("tiny_hf_sam", quantize=quantize, device="cpu")


def test_cuda_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match=r"CUDA is not available; use device='cpu'"):
        load_model("tiny_hf_sam", device="cuda")
