"""Original segment-anything / MedSAM ``.pth`` checkpoints -> Hugging Face ``SamModel``.

Meta's checkpoints (``sam_vit_b_01ec64.pth``, ``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``) and MedSAM's
``medsam_vit_b.pth`` are plain ``state_dict``s of segment-anything's ``Sam`` module. The HF port holds the same
tensors under other names, and splits some ``nn.Sequential``s into named layers (the neck, the mask
downscaling, the output upscaling, the three-layer MLP heads). This module renames every key, reads the
encoder shape off the tensors themselves (so a checkpoint names its own variant), and loads strictly:
a tensor that has no place in the HF model, or an HF tensor the checkpoint does not fill, is an error.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelLoadError

PATCH_KEY = "image_encoder.patch_embed.proj.weight"
# Encoder widths of the published variants; a checkpoint with another width is converted all the same
# (the shape is read off the tensors) and called "custom".
VARIANT_BY_WIDTH = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}

# Renames inside one key, applied in order. Sequential indices are those of segment-anything's modules.
_RENAMES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^image_encoder\."), "vision_encoder."),
    (re.compile(r"^vision_encoder\.patch_embed\.proj\."), "vision_encoder.patch_embed.projection."),
    (re.compile(r"^vision_encoder\.blocks\.(\d+)\.norm(\d)\."), r"vision_encoder.layers.\1.layer_norm\2."),
    (re.compile(r"^vision_encoder\.blocks\."), "vision_encoder.layers."),
    # neck = Sequential(conv 1x1, LayerNorm2d, conv 3x3, LayerNorm2d)
    (re.compile(r"^vision_encoder\.neck\.0\."), "vision_encoder.neck.conv1."),
    (re.compile(r"^vision_encoder\.neck\.1\."), "vision_encoder.neck.layer_norm1."),
    (re.compile(r"^vision_encoder\.neck\.2\."), "vision_encoder.neck.conv2."),
    (re.compile(r"^vision_encoder\.neck\.3\."), "vision_encoder.neck.layer_norm2."),
    (re.compile(r"^prompt_encoder\.point_embeddings\."), "prompt_encoder.point_embed."),
    # mask_downscaling = Sequential(conv, LN, GELU, conv, LN, GELU, conv)
    (re.compile(r"^prompt_encoder\.mask_downscaling\.0\."), "prompt_encoder.mask_embed.conv1."),
    (re.compile(r"^prompt_encoder\.mask_downscaling\.1\."), "prompt_encoder.mask_embed.layer_norm1."),
    (re.compile(r"^prompt_encoder\.mask_downscaling\.3\."), "prompt_encoder.mask_embed.conv2."),
    (re.compile(r"^prompt_encoder\.mask_downscaling\.4\."), "prompt_encoder.mask_embed.layer_norm2."),
    (re.compile(r"^prompt_encoder\.mask_downscaling\.6\."), "prompt_encoder.mask_embed.conv3."),
    (re.compile(r"^mask_decoder\.transformer\.layers\.(\d+)\.norm(\d)\."),
     r"mask_decoder.transformer.layers.\1.layer_norm\2."),
    (re.compile(r"^mask_decoder\.transformer\.norm_final_attn\."), "mask_decoder.transformer.layer_norm_final_attn."),
    # output_upscaling = Sequential(convT, LayerNorm2d, GELU, convT, GELU)
    (re.compile(r"^mask_decoder\.output_upscaling\.0\."), "mask_decoder.upscale_conv1."),
    (re.compile(r"^mask_decoder\.output_upscaling\.1\."), "mask_decoder.upscale_layer_norm."),
    (re.compile(r"^mask_decoder\.output_upscaling\.3\."), "mask_decoder.upscale_conv2."),
]
_MLP_HEAD = re.compile(r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.layers\.(\d+)\.(.+)$")
# The Fourier features for prompts and for the image grid are one tensor in SAM and two tied keys in HF.
_GAUSSIAN = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_HF_GAUSSIANS = ("shared_image_embedding.positional_embedding", "prompt_encoder.shared_embedding.positional_embedding")


@dataclass(frozen=True)
class SamCheckpointShape:
    """Encoder shape read off a segment-anything state dict."""

    variant: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    global_attn_indexes: tuple
    window_size: int
    image_size: int
    patch_size: int
    mlp_dim: int
    output_channels: int

    def config(self):
        """The matching ``transformers.SamConfig``."""
        from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

        vision = SamVisionConfig(
            hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, global_attn_indexes=list(self.global_attn_indexes),
            window_size=self.window_size, image_size=self.image_size, patch_size=self.patch_size,
            mlp_dim=self.mlp_dim, output_channels=self.output_channels,
        )
        prompt = SamPromptEncoderConfig(image_size=self.image_size, patch_size=self.patch_size,
                                        hidden_size=self.output_channels)
        return SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                         mask_decoder_config=SamMaskDecoderConfig(hidden_size=self.output_channels).to_dict())


def read_checkpoint(path) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` safely (``weights_only=True``) and return its flat tensor dict.

    Accepts a bare state dict, ``{"model": state_dict}`` / ``{"state_dict": ...}`` wrappers and keys with
    the ``module.`` prefix that ``DistributedDataParallel`` training leaves behind.

    Raises:
        ModelLoadError: missing, unreadable, unsafe or not a dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"Checkpoint {str(path)!r} does not exist or is not a file; check the path.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError,
            AttributeError, TypeError, ImportError) as exc:
        raise ModelLoadError(
            f"Checkpoint {str(path)!r} could not be read as a PyTorch state dict "
            f"({type(exc).__name__}: {_first_line(exc)}). The file is corrupt, truncated or not a torch.save "
            "file; download it again (e.g. sam_vit_b_01ec64.pth from the segment-anything releases)."
        ) from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(
            f"Checkpoint {str(path)!r} holds {type(obj).__name__}, not a state dict of tensors; pass an "
            "original segment-anything or MedSAM checkpoint (sam_vit_b_01ec64.pth, medsam_vit_b.pth)."
        )
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def detect_shape(state: dict[str, torch.Tensor], source: str = "checkpoint") -> SamCheckpointShape:
    """Read the encoder shape (variant, depth, heads, global-attention blocks...) off the tensors.

    Raises:
        ModelLoadError: the dict is not a segment-anything ``Sam`` state dict.
    """
    if PATCH_KEY not in state:
        hint = _wrong_kind_hint(state)
        raise ModelLoadError(
            f"{source!r} is not an original segment-anything checkpoint (no {PATCH_KEY!r}). {hint}"
        )
    try:
        hidden, _, patch, _ = state[PATCH_KEY].shape
        depth = 1 + max(int(m.group(1)) for k in state
                        if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k)))
        grid = state["image_encoder.pos_embed"].shape[1]
        head_dim = state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
        # Windowed blocks have 2*window-1 relative positions, global blocks 2*grid-1: the shapes name them.
        rel_lengths = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0] for i in range(depth)]
        global_idx = tuple(i for i, n in enumerate(rel_lengths) if n == 2 * grid - 1)
        windowed = [n for n in rel_lengths if n != 2 * grid - 1]
        window = (windowed[0] + 1) // 2 if windowed else 14
        mlp_dim = state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0]
        out_ch = state["image_encoder.neck.0.weight"].shape[0]
    except (KeyError, IndexError, ValueError) as exc:
        raise ModelLoadError(
            f"{source!r} looks like a segment-anything checkpoint but its image encoder is incomplete or has "
            f"an unexpected shape ({type(exc).__name__}: {exc}); use an unmodified SAM ViT-B/L/H or MedSAM "
            "checkpoint."
        ) from exc
    if hidden % head_dim:
        raise ModelLoadError(f"{source!r}: encoder width {hidden} is not a multiple of the head size {head_dim}; "
                             "the checkpoint is not a SAM image encoder.")
    return SamCheckpointShape(
        variant=VARIANT_BY_WIDTH.get(int(hidden), "custom"), hidden_size=int(hidden), num_hidden_layers=depth,
        num_attention_heads=int(hidden // head_dim), global_attn_indexes=global_idx, window_size=int(window),
        image_size=int(grid * patch), patch_size=int(patch), mlp_dim=int(mlp_dim), output_channels=int(out_ch),
    )


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a segment-anything ``Sam`` state dict into HF ``SamModel`` keys (tensors are not copied)."""
    heads = _mlp_depths(state)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key == _GAUSSIAN:
            for hf_key in _HF_GAUSSIANS:
                out[hf_key] = tensor
            continue
        new = key
        for pattern, repl in _RENAMES:
            new = pattern.sub(repl, new)
        m = _MLP_HEAD.match(new)
        if m:
            # SAM's MLP is layers[0..n-1]; HF names the first proj_in, the last proj_out, the rest layers[i-1].
            prefix, i, rest = m.group(1), int(m.group(2)), m.group(3)
            last = heads[prefix] - 1
            name = "proj_in" if i == 0 else "proj_out" if i == last else f"layers.{i - 1}"
            new = f"{prefix}.{name}.{rest}"
        out[new] = tensor
    return out


def load_sam_checkpoint(path, source: str | None = None):
    """Build an HF ``SamModel`` from an original segment-anything or MedSAM checkpoint.

    Args:
        path: the ``.pth`` file.
        source: how the user named it, for error messages (defaults to ``path``).

    Returns:
        A ``transformers.SamModel`` in eval mode holding the checkpoint's weights (fp32, CPU).

    Raises:
        ModelLoadError: missing or corrupt file, a checkpoint of another kind (LiteMedSAM, a classifier...),
            or tensors that do not fit the detected SAM shape.
    """
    from transformers import SamModel

    source = str(source or path)
    state = read_checkpoint(path)
    shape = detect_shape(state, source)
    converted = convert_state_dict(state)
    with torch.device("meta"):
        model = SamModel(shape.config())
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    wrong = [k for k in expected if k in converted and tuple(converted[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys
        )
        raise ModelLoadError(
            f"{source!r} looks like a SAM {shape.variant} checkpoint but does not fit the model ({detail}); "
            "use an unmodified segment-anything / MedSAM checkpoint."
        )
    # assign=True adopts the checkpoint's tensors instead of copying into meta storage.
    model.load_state_dict({k: v.float().contiguous() for k, v in converted.items()}, strict=True, assign=True)
    # The two Fourier-feature keys are one module in HF; re-tie after assign replaced the parameter.
    model.prompt_encoder.shared_embedding = model.shared_image_embedding
    return model.eval()


def _mlp_depths(state) -> dict[str, int]:
    depths: dict[str, int] = {}
    for key in state:
        m = re.match(r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.(\d+)\.", key)
        if m:
            prefix = f"mask_decoder.{m.group(1)}"
            depths[prefix] = max(depths.get(prefix, 0), int(m.group(2)) + 1)
    return depths


def _wrong_kind_hint(state) -> str:
    keys = list(state)
    if any(k.startswith("image_encoder.patch_embed.seq") or ".layers.0.blocks." in k for k in keys):
        return "It looks like a LiteMedSAM (TinyViT) checkpoint: load it with source='litemedsam'."
    if any(k.startswith("vision_encoder.") for k in keys):
        return ("It looks like a Hugging Face SamModel state dict: save it with SamModel.save_pretrained and "
                "pass that folder instead.")
    return ("Pass sam_vit_b/l/h or medsam_vit_b .pth, a folder written by SamModel.save_pretrained, or "
            "source='litemedsam'.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
