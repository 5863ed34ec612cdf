"""Named model specs: random-weight HF SAM shapes for tests (tiny) and benchmarks (full size).

Random full-size shapes cost what the real models cost, so speed and memory can be measured without hub
weights. Random weights are seeded, so a spec always builds the same network (and the same identity).
Every spec here is named ``random_*`` or ``tiny_*`` (a test pins it), so no name can pass for a trained
model: a random network segments nothing (box Dice ~0.02), and ``load_model`` warns when it builds one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

RANDOM_PREFIXES = ("random_", "tiny_")
# Specs that once had a name a trained model could have: loading the old name says where it went.
RENAMED_SPECS = {
    "minisam_student_256": "random_student_256",
    "minisam_student_256_global": "random_student_256_global",
}


class RandomWeightsWarning(UserWarning):
    """A model was built with random weights: it runs, but its masks mean nothing."""


@dataclass(frozen=True)
class HfSamSpec:
    """Shape of an HF ``SamModel`` vision encoder (prompt encoder and decoder are SAM's standard ones)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    global_attn_indexes: tuple
    image_size: int = 1024
    patch_size: int = 16
    mlp_dim: int | None = None
    window_size: int = 14
    output_channels: int = 256
    description: str = ""
    extra: dict = field(default_factory=dict)

    def config(self):
        from transformers import SamConfig, SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig

        vision = SamVisionConfig(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            global_attn_indexes=list(self.global_attn_indexes),
            image_size=self.image_size,
            patch_size=self.patch_size,
            mlp_dim=self.mlp_dim or 4 * self.hidden_size,
            window_size=self.window_size,
            output_channels=self.output_channels,
            # HF's default (1e-10) leaves a random encoder's weights ~0, so every image would embed to ~0
            # and tests could not tell images, adapters or quantization apart. 0.02 is BERT/ViT's default.
            initializer_range=0.02,
            **self.extra,
        )
        # The prompt encoder's grid must match the encoder's output grid, or the decoder fails.
        prompt = SamPromptEncoderConfig(image_size=self.image_size, patch_size=self.patch_size)
        return SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                         mask_decoder_config=SamMaskDecoderConfig().to_dict())


HF_SPECS: dict[str, HfSamSpec] = {
    # Tiny: CI runs the real code path in well under a second per image.
    "tiny_hf_sam": HfSamSpec(96, 2, 2, (1,), image_size=256, window_size=4, mlp_dim=192,
                             description="tiny random HF SAM for tests (256² input)"),
    "tiny_hf_sam_small": HfSamSpec(64, 2, 2, (1,), image_size=256, window_size=4, mlp_dim=128,
                                   description="smaller tiny random HF SAM (distillation student in tests)"),
    # Distillation (minisam-train distill). The CPU student: 256² input like LiteMedSAM, patch 4 so the
    # embedding grid is LiteMedSAM's 64x64 (its decoder is reused as is), windowed attention only.
    "random_student_256": HfSamSpec(128, 6, 4, (), image_size=256, patch_size=4, window_size=8, mlp_dim=512,
                                    description="distillation student for LiteMedSAM (256², 64x64 grid, 2.4 M)"),
    # The same student with global attention in blocks 3 and 6. Relative position biases are off: with them,
    # SDPA needs a dense 4096x4096 bias per head and a global block costs 4x more to train on the CPU;
    # without, it runs PyTorch's fused attention kernel, and the absolute position embedding still gives the position.
    "random_student_256_global": HfSamSpec(128, 6, 4, (2, 5), image_size=256, patch_size=4, window_size=8,
                                           mlp_dim=512, extra={"use_rel_pos": False},
                                           description="distillation student with 2 global-attention blocks "
                                                       "(256², 64x64 grid)"),
    # The MiniSAM shape: within 10 G multiply-accumulates per 256² forward. Two global blocks at width 128
    # cost ~16 G (each global block is ~4.3 G of attention over 4,096 tokens); width 96 with one global
    # block, as the last block, is 8.7 G (benchmarks/model_flops.py).
    "random_student_256_g1": HfSamSpec(96, 6, 3, (5,), image_size=256, patch_size=4, window_size=8,
                                       mlp_dim=384, extra={"use_rel_pos": False},
                                       description="distillation student with 1 global-attention block, "
                                                   "width 96 (256², 64x64 grid, <= 10 GMACs)"),
    # Tiny random models with the input size, grid and window layout of ViT-H / ViT-B (1024², 64x64, window
    # 14): the ViT-H -> ViT-B distillation recipe runs end to end on them in tests.
    "tiny_vit_h_shape": HfSamSpec(64, 4, 2, (1, 3), window_size=14, mlp_dim=128,
                                  description="tiny random HF SAM shaped like ViT-H (1024², tests)"),
    "tiny_vit_b_shape": HfSamSpec(32, 2, 2, (1,), window_size=14, mlp_dim=64,
                                  description="tiny random HF SAM shaped like ViT-B (1024², tests)"),
    # Full-size shapes of the published SAM encoders, random weights: for speed/memory benchmarks.
    "random_vit_b": HfSamSpec(768, 12, 12, (2, 5, 8, 11), description="SAM ViT-B shape, random weights"),
    "random_vit_l": HfSamSpec(1024, 24, 16, (5, 11, 17, 23), description="SAM ViT-L shape, random weights"),
    "random_vit_h": HfSamSpec(1280, 32, 16, (7, 15, 23, 31), description="SAM ViT-H shape, random weights"),
}

# Hub ids users load with weights (not reachable offline: tests use local directories instead).
HUB_IDS = ("facebook/sam-vit-base", "facebook/sam-vit-large", "facebook/sam-vit-huge")


def renamed_spec_message(name: str) -> str | None:
    """Why an old spec name no longer loads, naming the new one; ``None`` for any other name."""
    new = RENAMED_SPECS.get(str(name).strip())
    if new is None:
        return None
    return (f"Model spec {name!r} was renamed {new}; it holds random weights (a shape for distillation and "
            f"benchmarks, not a trained model). Use {new!r} for the shape, or a trained student's folder.")


def random_weights_message(name: str) -> str:
    return (f"{name!r} holds random weights: a network shape for tests, benchmarks or as a distillation "
            "student to train, not for segmentation (its masks mean nothing). Use 'litemedsam' or a "
            "trained model's folder to segment.")


def build_random_hf_sam(name: str, seed: int = 0):
    """Build the named spec with seeded random weights."""
    return build_hf_sam(HF_SPECS[name], seed)


def build_hf_sam(spec: HfSamSpec, seed: int = 0):
    """Build any spec with seeded random weights, leaving the global RNG as it was."""
    from transformers import SamModel

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = SamModel(spec.config())
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


# Trained models that load by name, without a path (each name -> the aliases load_model accepts for it).
NAMED_MODELS = {"litemedsam": ("litemedsam", "lite_medsam", "lite-medsam"), "minisam": ("minisam",)}


def named_model(source: str) -> str | None:
    """The trained model a source string names (``litemedsam``, ``minisam``), or ``None``."""
    low = str(source).strip().lower()
    return next((name for name, aliases in NAMED_MODELS.items() if low in aliases), None)


def available_sources() -> list[str]:
    """Every named source ``load_model`` knows without a path."""
    return [*NAMED_MODELS, *HF_SPECS, *HUB_IDS]
