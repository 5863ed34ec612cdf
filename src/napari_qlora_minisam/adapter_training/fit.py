"""Train a prepared ``QLoRAMiniSAM`` on labelled slices: views, cached embeddings, optimiser, the loop.

This is the one implementation behind both front ends: :func:`~.api.train_adapter` (arrays from the
plugin or a notebook) and ``minisam-train adapt`` (COSMOS folders or TIFF pairs, with Accelerate
checkpoints through its runtime).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .loop import AdaptLoopSettings, BestWeights, LoopResult, SamplingRng, run_adapt_loop, validate
from .losses import MedSegLoss
from .prompt_sampling import PromptSampler
from .recipe import AdapterRecipe, build_optimizer, build_scheduler, total_steps, use_cached_embeddings
from .runtime import TrainingRuntime
from .views import AdaptView, AugmentConfig, build_views, embed_views


@dataclass
class FitResult:
    """What :func:`fit_adapter` did; the model holds the trained (best) weights."""

    loop: LoopResult
    train_views: list[AdaptView]
    val_views: list[AdaptView]
    steps_planned: int
    embed_seconds: float
    cached_embeddings: bool


def augment_within(aug: AugmentConfig, n_slices: int, max_views: int | None) -> AugmentConfig:
    """``aug`` with fewer augmented copies per slice when ``n_slices`` would exceed ``max_views`` views.

    Every view is embedded before training, so on a CPU the view count is what a volume with many labelled
    slices costs before the first step; the originals are always kept.
    """
    if max_views is None or not aug.enabled or n_slices * aug.views_per_image <= max_views:
        return aug
    return dataclasses.replace(aug, views_per_image=max(1, int(max_views) // max(1, n_slices)))


def fit_adapter(model, train_slices, val_slices, recipe: AdapterRecipe, *, seed: int, intensity: str = "minmax",
                max_minutes: float | None = None, runtime: TrainingRuntime | None = None, progress=None,
                should_stop=None, show_progress: bool = False, stop_after: int | None = None) -> FitResult:
    """Train ``model`` (a ``QLoRAMiniSAM``) on ``train_slices``, validating on ``val_slices``.

    Args:
        train_slices, val_slices: :class:`~.views.AnnotatedSlice` lists; validation slices are not augmented.
        seed: views and the loop's prompt draws (the caller seeds torch for LoRA init and dropout).
        intensity: the intensity policy the adapter will be used with.
        max_minutes: wall-clock budget of the loop (embedding the views comes before it).
        runtime: plumbing (checkpoints, run log); plain PyTorch by default.
        progress, should_stop: see :func:`~.loop.run_adapt_loop`; ``should_stop`` also ends embedding early.
        stop_after: stop as if interrupted after this many steps (tests of resume).
    """
    spec = model.backend.spec
    view_rng = np.random.default_rng(seed)
    aug = augment_within(recipe.augment, len(train_slices), recipe.max_views)
    min_px = int(recipe.min_object_pixels)
    train_views = build_views(train_slices, spec, intensity, aug, view_rng, min_px, True)
    val_views = build_views(val_slices, spec, intensity, aug, view_rng, min_px, False)
    if not train_views:
        raise InputError("No training object is left after resizing to the model's input: the objects are "
                         f"too small for a {spec.image_size}-pixel network input; annotate larger objects.")
    cached = use_cached_embeddings(recipe, model)
    t0 = time.perf_counter()
    if cached:
        embed_views(model, train_views + val_views, show_progress, should_stop)
    embed_seconds = time.perf_counter() - t0

    runtime = runtime or TrainingRuntime()
    steps = total_steps(recipe, len(train_views), runtime.num_processes)
    optimizer = build_optimizer(recipe, model.trainable_parameters())
    scheduler = build_scheduler(recipe, optimizer, steps)
    model, optimizer, scheduler = runtime.prepare(model, optimizer, scheduler)
    rng, best = SamplingRng(seed + 1), BestWeights()
    runtime.register_for_checkpointing(rng)
    runtime.register_for_checkpointing(best)
    es = recipe.early_stopping
    settings = AdaptLoopSettings(
        steps=steps, batch_size=int(recipe.batch_size), val_every=int(recipe.val_every),
        log_every=int(recipe.log_every), max_minutes=max_minutes, max_grad_norm=recipe.max_grad_norm,
        early_stopping=es.enabled, patience=es.patience, min_delta=es.min_delta, restore_best=es.restore_best,
        show_progress=show_progress, stop_after=stop_after, point_multimask=recipe.prompts.point_multimask)
    loss_fn = MedSegLoss(recipe.loss.bce, recipe.loss.dice, recipe.loss.iou)
    result = run_adapt_loop(model, optimizer, scheduler, train_views, val_views, PromptSampler(recipe.prompts),
                            loss_fn, settings, runtime, rng, best, progress=progress, should_stop=should_stop)
    return FitResult(result, train_views, val_views, steps, embed_seconds, cached)


def held_back_scores(model, views: list[AdaptView], point_multimask: bool) -> dict:
    """Box and one-click Dice on held-back objects, with the adapter off (the base) and on.

    Each is decoded as it is deployed: the base answers a click with SAM's three candidates, the adapter
    as it was trained (``point_multimask``); the mask with the highest predicted IoU counts.
    """
    masks = sum(len(v.names) for v in views)
    if not masks:
        return {"held_back_masks": 0, "box": {"before": None, "after": None},
                "click": {"before": None, "after": None}}
    with model.backend.adapter_disabled():
        before = validate(model, views, point_multimask=True)
    after = validate(model, views, point_multimask=point_multimask)
    return {"held_back_masks": masks,
            "box": {"before": before["val_dice_box"], "after": after["val_dice_box"]},
            "click": {"before": before["val_dice_point1"], "after": after["val_dice_point1"]}}
