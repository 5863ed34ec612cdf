"""Hugging Face ``SamModel`` backend (SAM ViT-B/L/H, MedSAM, distilled students)."""

from __future__ import annotations

import torch

from ..transforms import PreprocessSpec
from .base import SamBackend


class HfSamBackend(SamBackend):
    kind = "hf"

    def __init__(self, net, source, quantization=None):
        size = int(net.config.vision_config.image_size)
        super().__init__(net, source, PreprocessSpec(image_size=size, normalization="imagenet"), quantization)

    @property
    def image_encoder(self):
        return self.net.vision_encoder

    @property
    def mask_decoder(self):
        return self.net.mask_decoder

    def fingerprint_tensors(self):
        return [
            self.net.vision_encoder.patch_embed.projection.weight,
            self.net.shared_image_embedding.positional_embedding,
            self.net.mask_decoder.iou_token.weight,
        ]

    def encode(self, pixels):
        out = self.net.get_image_embeddings(pixels.to(self.compute_dtype))
        return out if isinstance(out, torch.Tensor) else out[0]

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.net.vision_encoder.patch_embed.projection.weight.dtype

    def decode(self, embeddings, points=None, labels=None, boxes=None, mask_input=None, multimask=True):
        # HF wants a leading image batch: (1, P, ...) = P prompts on one image.
        n = next(t.shape[0] for t in (points, boxes, mask_input) if t is not None)
        emb = embeddings[:1]
        dtype = self.compute_dtype
        out = self.net(
            image_embeddings=emb.to(dtype),
            input_points=None if points is None else points[None].to(dtype),
            input_labels=None if labels is None else labels[None].long(),
            input_boxes=None if boxes is None else boxes[None].to(dtype),
            input_masks=None if mask_input is None else mask_input[:1].to(dtype),
            multimask_output=multimask,
        )
        return out.pred_masks[0].float(), out.iou_scores[0].float()
