"""Hidden units of a segment-anything mask decoder's ReLU MLPs, and the decoder without the ones that never fire.

The decoder's MLPs run on the few prompt tokens only, so their width costs memory, not time: the two-way
transformer's two 256→2048→256 MLPs hold 8 MiB of LiteMedSAM's 15.5 MiB decoder. A ReLU unit whose input is
negative for every token it sees outputs zero, so removing its row of the first layer and its column of the
second leaves the decoder's output unchanged on those inputs. Which units fire is measured on real slices and
prompts (``experiments/prune_minisam_decoder.py``); the kept indices are stored with the model (MiniSAM's
``config.json``, key ``decoder_units``) and applied to the full decoder when it is built.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..errors import ModelLoadError


def hidden_layers(mask_decoder: nn.Module) -> Iterator[tuple[str, nn.Linear, nn.Linear]]:
    """``(name, layer into the hidden units, layer out of them)`` for each ReLU hidden layer of the decoder.

    Names: ``transformer.layers.<i>.mlp`` (the two-way blocks' ``MLPBlock``), ``<mlp>.<j>`` for the hidden
    layer after ``<mlp>.layers[j]`` of the hypernetwork MLPs and the IoU head (segment-anything's ``MLP``).
    """
    for i, block in enumerate(mask_decoder.transformer.layers):
        if isinstance(block.mlp.act, nn.ReLU):
            yield f"transformer.layers.{i}.mlp", block.mlp.lin1, block.mlp.lin2
    heads = [(f"output_hypernetworks_mlps.{k}", m) for k, m in enumerate(mask_decoder.output_hypernetworks_mlps)]
    for name, mlp in heads + [("iou_prediction_head", mask_decoder.iou_prediction_head)]:
        for j in range(len(mlp.layers) - 1):
            yield f"{name}.{j}", mlp.layers[j], mlp.layers[j + 1]


def units_to_hex(keep, width: int) -> str:
    """The kept indices of a ``width``-unit layer as a bit mask in hex (bit ``k`` set: unit ``k`` kept)."""
    bits = 0
    for k in keep:
        bits |= 1 << int(k)
    return format(bits, f"0{(width + 3) // 4}x")


def units_from_hex(mask: str) -> list[int]:
    """The indices a :func:`units_to_hex` mask keeps."""
    bits = int(mask, 16)
    return [k for k in range(bits.bit_length()) if bits >> k & 1]


def _set_linear(mask_decoder: nn.Module, layer: nn.Linear, new: nn.Linear) -> None:
    for parent in mask_decoder.modules():
        for child_name, child in parent.named_children():  # a ModuleList's children are named "0", "1", ...
            if child is layer:
                setattr(parent, child_name, new)
                return
    raise ValueError("layer not found in the decoder")


def _sliced(layer: nn.Linear, rows=None, cols=None) -> nn.Linear:
    weight = layer.weight.detach()
    weight = weight if rows is None else weight[rows]
    weight = weight if cols is None else weight[:, cols]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if layer.bias is not None:
            new.bias.copy_(layer.bias.detach() if rows is None else layer.bias.detach()[rows])
    return new.train(layer.training)


def keep_units(mask_decoder: nn.Module, units: dict[str, list[int] | str]) -> nn.Module:
    """``mask_decoder`` (changed in place and returned) keeping only ``units[name]`` of each named hidden layer
    (a list of indices, or a :func:`units_to_hex` mask).

    Raises:
        ModelLoadError: a name that is not a hidden layer of this decoder, or indices out of its range.
    """
    units = {name: units_from_hex(keep) if isinstance(keep, str) else list(keep) for name, keep in units.items()}
    unknown = sorted(set(units) - {name for name, _, _ in hidden_layers(mask_decoder)})
    if unknown:
        raise ModelLoadError(f"The decoder has no hidden layer named {', '.join(unknown)}; the model's "
                             "decoder_units do not belong to this decoder.")
    for name, keep in units.items():
        # Looked up again: pruning the layer before may have replaced this one's input layer.
        into, out = {n: (a, b) for n, a, b in hidden_layers(mask_decoder)}[name]
        index = torch.as_tensor(sorted(int(k) for k in keep), dtype=torch.long)
        if len(index) == 0 or index[0] < 0 or index[-1] >= into.out_features or len(set(keep)) != len(keep):
            raise ModelLoadError(f"decoder_units[{name!r}] must be distinct indices below {into.out_features}.")
        _set_linear(mask_decoder, into, _sliced(into, rows=index))
        _set_linear(mask_decoder, out, _sliced(out, cols=index))
    return mask_decoder
