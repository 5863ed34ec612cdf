"""The adapter training recipe: LoRA shape, optimiser, prompts, loss, augmentation, early stopping.

The defaults are those of ``minisam-train adapt`` (``conf/train/qlora.yaml``): LoRA r=8 on the mask decoder
only (on a CPU the encoder's backward costs ~10x a decoder step, and a frozen encoder lets every view be
embedded once), AdamW at 1e-3 with a cosine schedule, mixed box / click prompts with clicks answered by the
single mask output, BCE + Dice + IoU-head loss, 4 views per slice, early stopping on held-back Dice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..adapters import DEFAULT_TARGET_MODULES
from .prompt_sampling import PromptSamplingConfig
from .views import AugmentConfig


@dataclass(frozen=True)
class LoraSettings:
    """peft ``LoraConfig`` values and which parts of the network get LoRA (``encoder``, ``decoder``)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple = DEFAULT_TARGET_MODULES
    parts: tuple = ("decoder",)


@dataclass(frozen=True)
class EarlyStopping:
    """Stop after ``patience`` validations without a gain of ``min_delta``; keep the best weights."""

    enabled: bool = True
    patience: int = 4
    min_delta: float = 0.002
    restore_best: bool = True


@dataclass(frozen=True)
class LossWeights:
    """Weights of ``MedSegLoss``'s BCE, Dice and IoU-head terms."""

    bce: float = 1.0
    dice: float = 1.0
    iou: float = 1.0


def _default_prompts() -> PromptSamplingConfig:
    return PromptSamplingConfig(mix={"box": 0.35, "points": 0.45, "box_points": 0.2}, point_multimask=False)


@dataclass(frozen=True)
class AdapterRecipe:
    """Everything that decides how an adapter trains, apart from the data and the time budget.

    Attributes:
        steps: optimizer steps planned (the schedule's length); ``epochs``, if set, wins:
            ``ceil(epochs * training views / (batch_size * processes))``.
        batch_size: views per optimizer step and process (all objects of a view share one decoder call).
        cache_embeddings: ``"auto"`` embeds every view once when LoRA leaves the encoder alone.
        val_every, log_every: steps between validations (early-stopping checks) and log rows.
        val_fraction: share of the objects (slices, for COSMOS folders) held back for validation.
        min_object_pixels: smaller objects on a slice are not trained on (nor augmented copies that shrink
            below it).
        max_views: fewer augmented copies per slice when there would be more training views than this
            (every view is embedded before the first step); ``None``: no cap.
    """

    lora: LoraSettings = LoraSettings()
    prompts: PromptSamplingConfig = field(default_factory=_default_prompts)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossWeights = LossWeights()
    early_stopping: EarlyStopping = EarlyStopping()
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    scheduler: str = "cosine"
    warmup_steps: int = 10
    max_grad_norm: float | None = 1.0
    batch_size: int = 4
    steps: int = 200
    epochs: float | None = None
    cache_embeddings: str | bool = "auto"
    val_every: int = 20
    log_every: int = 5
    val_fraction: float = 0.2
    min_object_pixels: int = 20
    max_views: int | None = 48


def total_steps(recipe: AdapterRecipe, n_views: int, processes: int = 1) -> int:
    """``recipe.steps``, or for ``recipe.epochs`` the steps in which ``processes`` processes, each taking
    ``batch_size`` views per step, see every view that many times."""
    if recipe.epochs:
        return max(1, math.ceil(float(recipe.epochs) * n_views / (int(recipe.batch_size) * max(1, processes))))
    return int(recipe.steps)


def build_optimizer(recipe: AdapterRecipe, params) -> torch.optim.Optimizer:
    name = str(recipe.optimizer).lower()
    lr, wd = float(recipe.lr), float(recipe.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    raise ValueError(f"train.optimizer={recipe.optimizer!r}; choose adamw, adam or sgd.")


def build_scheduler(recipe: AdapterRecipe, optimizer, steps: int):
    """Linear warm-up over ``warmup_steps`` (from 0), then cosine decay to 0 at ``steps``, or constant.

    transformers' schedules (``LambdaLR``s): their state is the step count, which checkpoints restore.
    """
    kind = str(recipe.scheduler).lower()
    if kind not in ("cosine", "constant"):
        raise ValueError(f"train.scheduler={kind!r}; choose cosine or constant.")
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    warmup = max(0, int(recipe.warmup_steps or 0))
    if kind == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    return get_cosine_schedule_with_warmup(optimizer, warmup, int(steps))


def use_cached_embeddings(recipe: AdapterRecipe, model) -> bool:
    """Whether views are embedded once; refused when the encoder trains (the cache would be stale)."""
    choice = recipe.cache_embeddings
    if str(choice).lower() == "auto":
        return not model.encoder_trains
    if bool(choice) and model.encoder_trains:
        raise ValueError("train.cache_embeddings=true but LoRA (or full fine-tuning) trains the encoder: "
                         "cached embeddings would be stale. Use cache_embeddings=auto.")
    return bool(choice)
