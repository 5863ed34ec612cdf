"""segment-anything's module layout over a Hugging Face ``SamModel``'s prompt encoder and mask decoder.

``fast_decoder.FastSamDecoder`` is written against segment-anything's names (``norm1``, ``num_heads``,
``output_upscaling``, ``pe_layer`` ...). HF's ``SamModel`` computes the same thing under other names, so these
views give its modules segment-anything's names. A view reads the HF module on every attribute access and
holds no copy: peft's LoRA layers and bitsandbytes' 4-bit layers, which replace modules in place, are seen
as they are, and the fast decoder calls them as modules (see ``fast_decoder._is_plain``).
"""

from __future__ import annotations

import torch
from torch import nn


class _View:
    """Attributes by segment-anything name, read from a HF module at each access."""

    renamed: dict[str, str] = {}

    def __init__(self, hf: nn.Module):
        self._hf = hf

    def __getattr__(self, name):  # only called for names the view does not define itself
        if name.startswith("__") or name == "_hf":  # copy/pickle probe an instance made without __init__
            raise AttributeError(name)
        return getattr(self._hf, self.renamed.get(name, name))

    def modules(self):
        """The HF module's modules (``fast_decoder.module_state_signature`` reads their versions)."""
        return self._hf.modules()

    def __call__(self, *args, **kwargs):
        return self._hf(*args, **kwargs)


class _Attention(_View):
    renamed = {"num_heads": "num_attention_heads"}


class _Block(_View):
    renamed = {"norm1": "layer_norm1", "norm2": "layer_norm2", "norm3": "layer_norm3", "norm4": "layer_norm4"}

    @property
    def self_attn(self):
        return _Attention(self._hf.self_attn)

    @property
    def cross_attn_token_to_image(self):
        return _Attention(self._hf.cross_attn_token_to_image)

    @property
    def cross_attn_image_to_token(self):
        return _Attention(self._hf.cross_attn_image_to_token)


class _TwoWayTransformer(_View):
    renamed = {"norm_final_attn": "layer_norm_final_attn"}

    @property
    def layers(self):
        return [_Block(layer) for layer in self._hf.layers]

    @property
    def final_attn_token_to_image(self):
        return _Attention(self._hf.final_attn_token_to_image)


class MaskDecoderView(_View):
    """``SamMaskDecoder`` as segment-anything's ``MaskDecoder``."""

    @property
    def transformer(self):
        return _TwoWayTransformer(self._hf.transformer)

    @property
    def output_upscaling(self):
        md = self._hf
        return (md.upscale_conv1, md.upscale_layer_norm, md.activation, md.upscale_conv2, md.activation)


class PromptEncoderView:
    """A ``SamModel``'s prompt encoder and shared positional embedding as segment-anything's ``PromptEncoder``.

    Only what the fast decoder uses: sparse embeddings of points and boxes (segment-anything's rule: points
    get a padding point when no box is given, the pixel centre is shifted by 0.5), the mask embedding, the
    no-mask embedding and the dense positional encoding.
    """

    def __init__(self, model: nn.Module):
        self._model = model

    @property
    def _pe(self):
        return self._model.prompt_encoder

    @property
    def pe_layer(self) -> nn.Module:
        return self._model.shared_image_embedding

    @property
    def no_mask_embed(self) -> nn.Module:
        return self._pe.no_mask_embed

    @property
    def input_size(self) -> int:
        return int(self._model.config.prompt_encoder_config.image_size)

    @property
    def grid_size(self) -> int:
        return int(self._model.config.prompt_encoder_config.image_embedding_size)

    def get_dense_pe(self) -> torch.Tensor:
        """``(1, C, h, w)`` positional encoding of the embedding grid's cell centres."""
        n = self.grid_size
        ref = self.pe_layer.positional_embedding
        centres = (torch.arange(n, device=ref.device, dtype=ref.dtype) + 0.5) / n
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        return self.pe_layer(torch.stack([x, y], dim=-1)).permute(2, 0, 1).unsqueeze(0)

    def _encode_coords(self, coords: torch.Tensor) -> torch.Tensor:
        return self.pe_layer((coords + 0.5) / self.input_size)

    def __call__(self, points=None, boxes=None, masks=None):
        """``(sparse (P, N, C), dense or None)`` for points ``(coords (P, N, 2), labels (P, N))`` and boxes ``(P, 4)``."""
        pe = self._pe
        parts = []
        if points is not None:
            coords, labels = points
            if boxes is None:  # segment-anything pads a point-only prompt with a "not a point"
                coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 2)], dim=1)
                labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
            emb = self._encode_coords(coords.float())
            lab = labels[..., None]
            emb = torch.where(lab == -1, pe.not_a_point_embed.weight, emb)
            emb = emb + (lab == 0) * pe.point_embed[0].weight + (lab == 1) * pe.point_embed[1].weight
            parts.append(emb)
        if boxes is not None:
            corners = self._encode_coords(boxes.float().reshape(-1, 2, 2))
            parts.append(corners + torch.stack([pe.point_embed[2].weight[0], pe.point_embed[3].weight[0]]))
        if not parts:
            weight = pe.no_mask_embed.weight
            parts.append(weight.new_zeros(1, 0, weight.shape[-1]))
        dense = None if masks is None else self._embed_masks(masks)
        return torch.cat(parts, dim=1), dense

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        return self._pe.mask_embed(masks)
