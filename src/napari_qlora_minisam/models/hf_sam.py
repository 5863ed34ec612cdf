"""Hugging Face ``SamModel`` backend (SAM ViT-B/L/H, MedSAM, distilled students).

At inference the prompt encoder and mask decoder run through ``fast_decoder.py`` (the path LiteMedSAM's
decoder takes), over views that give HF's modules segment-anything's names (``hf_sam_layout.py``); with
gradients, in training mode, in half precision or with ``fast_paths=False`` HF's own modules run.
"""

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

    def _decoder_modules(self) -> tuple:
        return (self.net.prompt_encoder, self.net.mask_decoder, self.net.shared_image_embedding)

    def _sam_layout(self) -> tuple:
        from .hf_sam_layout import MaskDecoderView, PromptEncoderView

        return (PromptEncoderView(self.net), MaskDecoderView(self.net.mask_decoder))

    def encode(self, pixels):
        out = self.net.get_image_embeddings(pixels.to(self.compute_dtype))
        return out if isinstance(out, torch.Tensor) else out[0]

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.net.vision_encoder.patch_embed.projection.weight.dtype

    def decode(self, embeddings, points=None, labels=None, boxes=None, mask_input=None, multimask=True,
               window=None):
        dtype = self.compute_dtype
        if dtype == torch.float32:  # the fast decoder computes in the inputs' dtype
            fast = self.fast_decode(embeddings, points, labels, boxes, mask_input, multimask, window)
            if fast is not None:
                return fast
        # HF's modules: ``window`` is a speed hint only (see SamBackend.decode), they always do the whole grid.
        emb = embeddings[:1]
        if mask_input is None:
            # P prompts on one image: HF's "point batch" axis, so the embedding is not copied P times up front.
            pts = None if points is None else points[None]
            lbl = None if labels is None else labels[None]
            bxs = None if boxes is None else boxes[None]
        else:
            # HF adds the mask embedding per *image*, not per prompt: give each prompt its own image slot
            # so every prompt is paired with its own mask (as segment-anything does).
            n = mask_input.shape[0]
            emb = emb.expand(n, -1, -1, -1)
            pts = None if points is None else points[:, None]
            lbl = None if labels is None else labels[:, None]
            bxs = None if boxes is None else boxes[:, None]
        out = self.net(
            image_embeddings=emb.to(dtype),
            input_points=None if pts is None else pts.to(dtype),
            input_labels=None if lbl is None else lbl.long(),
            input_boxes=None if bxs is None else bxs.to(dtype),
            input_masks=None if mask_input is None else mask_input.to(dtype),
            multimask_output=multimask,
        )
        masks, iou = out.pred_masks, out.iou_scores  # (images, prompts, M, ...)
        return masks.flatten(0, 1).float(), iou.flatten(0, 1).float()
