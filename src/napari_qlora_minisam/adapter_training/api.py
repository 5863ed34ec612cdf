"""``train_adapter``: a QLoRA adapter from a user's own annotations, in a couple of CPU minutes.

Everything is checked before anything is trained or written; the adapter folder appears only when it is
complete (``adapters.save_adapter``), and then the model carries it, active, exactly as written.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..adapters import detach_adapter, load_adapter, read_adapter_metadata, set_adapter
from ..embedding_cache import image_digest
from ..errors import AdapterError, InputError
from ..intensity import check_policy
from .fit import fit_adapter, held_back_scores
from .labelled_samples import slices_from_sample, split_held_back
from .loop import TrainProgress
from .qlora import QLoRAMiniSAM
from .recipe import AdapterRecipe

# Adapter names become folder names and peft module keys, which may not hold dots.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_TRAINING_SUFFIX = "__training"


def train_adapter(model, samples, out_dir, name: str, *, max_minutes: float | None = 2.0,
                  progress: Callable[[TrainProgress], None] | None = None,
                  cancel: threading.Event | Callable[[], bool] | None = None, init_adapter=None,
                  sample_names=None, seed: int = 0, intensity: str = "minmax", modality: str | None = None,
                  overwrite: bool = False, recipe: AdapterRecipe | None = None) -> Path:
    """Train a LoRA adapter on ``model`` from labelled images and attach it, active.

    The recipe is ``minisam-train adapt``'s (frozen base, LoRA on the mask decoder, mixed jittered box and
    click prompts, BCE + Dice, augmented views, early stopping on held-back objects), run by the same code.
    A share of the objects (``recipe.val_fraction``) is held back: never trained on, it drives early
    stopping and is scored with the base and with the adapter (box and one-click Dice).

    Example:
        >>> model = load_model("litemedsam", quantize="nf4")
        >>> path = train_adapter(model, [(image, labels)], user_adapters_dir(), "my-caudate")
        >>> model.adapter_info["my-caudate"]["scores"]["click"]   # {"before": ..., "after": ...}

    Args:
        model: a backend from ``load_model`` (``quantize="nf4"`` for QLoRA). It must not be used for
            predictions while it trains.
        samples: ``(image, labels)`` pairs. ``image``: 2D ``(H, W)`` or RGB ``(H, W, 3)``, any dtype;
            ``labels``: integer ``(H, W)``, 0 background and every id > 0 one object. A ``(Z, H, W)`` volume
            with ``(Z, H, W)`` labels is used slice by slice where a slice has labels.
        out_dir: the folder the adapter folder ``out_dir/name`` goes into (e.g. ``adapters.user_adapters_dir()``).
        name: the adapter's name and folder name: letters, digits, ``-`` and ``_``.
        max_minutes: wall-clock budget of the training loop: it stops before a step that would end later
            (preparing and embedding the views comes first); ``None``: ``recipe.steps`` decide.
        progress: called with a :class:`TrainProgress` at the start and after every step (in this thread).
        cancel: a ``threading.Event`` or a callable; once set / true, training stops before the next step
            and the best weights so far are written as a complete adapter.
        init_adapter: an adapter folder trained on this base to continue training (its LoRA shape is kept).
        sample_names: one name per sample (file or layer names) for the metadata; default ``sample<i>``.
        seed: makes the run repeatable (held-back split, views, prompts, LoRA init, dropout); the caller's
            torch RNG state is left as it was.
        intensity: the intensity policy the adapter will be used with (as ``MiniSamPredictor`` takes it).
        modality: recorded in the metadata (the adapters list shows it), e.g. ``"mri"``.
        overwrite: replace an existing ``out_dir/name`` (and an adapter of that name loaded from it).
        recipe: the training settings; :class:`AdapterRecipe` defaults suit a laptop CPU.

    Returns:
        The adapter folder (peft files + ``minisam_adapter.json``). Its metadata, scores included, is also
        ``model.adapter_info[name]``; see docs/adapters.md for the keys.

    Raises:
        InputError: no labelled object, image / labels shapes differ, labels not integer, a bad name, an
            unknown intensity policy.
        AdapterError: ``init_adapter`` is malformed or made for another base; ``out_dir/name`` exists and
            ``overwrite`` is false; another adapter called ``name`` is attached; the model has an adapter merged.
    """
    recipe = recipe or AdapterRecipe()
    target = _checked_target(model, out_dir, name, overwrite)
    policy = check_policy(intensity)
    should_stop = _stop_check(cancel)
    samples = _as_pairs(samples)
    names = _sample_names(sample_names, len(samples))
    per_sample = [slices_from_sample(image, labels, n, recipe.min_object_pixels)
                  for (image, labels), n in zip(samples, names)]
    if not any(per_sample):
        raise InputError(f"No labelled object: every label id > 0 with at least {recipe.min_object_pixels} "
                         "pixels on a slice is one object to learn; label at least one.")
    init_meta = _check_init_adapter(model, init_adapter)
    split = split_held_back(per_sample, recipe.val_fraction, seed)

    work_name = name if name not in _attached(model) else name + _TRAINING_SUFFIX
    previous = model.active_adapter
    dev = model.device
    trainer = None
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        try:
            trainer = QLoRAMiniSAM(model, work_name, r=recipe.lora.r, alpha=recipe.lora.alpha,
                                   dropout=recipe.lora.dropout, target_modules=recipe.lora.target_modules,
                                   parts=recipe.lora.parts, init_adapter=init_adapter)
            fit = fit_adapter(trainer, split.train, split.held_back, recipe, seed=seed, intensity=policy,
                              max_minutes=max_minutes, progress=progress, should_stop=should_stop)
            trainer.release()
            scores = {"held_back_objects": split.held_back_objects,
                      **held_back_scores(trainer, fit.val_views, recipe.prompts.point_multimask)}
            metadata = _metadata(trainer, samples, names, per_sample, split, fit, scores, recipe, policy,
                                 modality, seed, max_minutes, init_adapter, init_meta)
            path = trainer.save_adapter(target, metadata)
        except BaseException:
            if trainer is not None:
                trainer.release()
            if work_name in _attached(model):
                detach_adapter(model, work_name)
            set_adapter(model, previous if previous in _attached(model) else None)
            model.eval()
            raise
        detach_adapter(model, work_name)
        if name in _attached(model):  # the one loaded from the folder just replaced (overwrite=True)
            detach_adapter(model, name)
        load_adapter(model, path)  # attached exactly as written, with its metadata, and active
    return path


def _attached(model) -> list:
    return [] if model.peft_model is None else list(model.peft_model.peft_config)


def _checked_target(model, out_dir, name, overwrite: bool) -> Path:
    if not isinstance(name, str) or not name.strip():
        raise InputError("The adapter needs a name (it is also its folder name), e.g. name='my-caudate'.")
    if not _NAME.match(name) or name.endswith(_TRAINING_SUFFIX):
        raise InputError(f"Adapter name {name!r} is not usable as a folder and adapter name; use letters, "
                         "digits, '-' and '_' (e.g. 'liver-lesion_v2').")
    target = Path(out_dir).expanduser() / name
    if target.exists() and not overwrite:
        raise AdapterError(f"An adapter folder {target} exists already; pass overwrite=True to replace it "
                           "or choose another name.")
    if name in _attached(model):
        loaded_from = model.adapter_info.get(name, {}).get("_path")
        if loaded_from is None or Path(loaded_from) != target.resolve() or not overwrite:
            raise AdapterError(f"An adapter named {name!r} is attached to this model already (from "
                               f"{loaded_from or 'memory'}); choose another name, or detach it first.")
    if str(model.active_adapter or "").startswith("merged:"):
        raise AdapterError(f"{model.name} has adapter {model.active_adapter[7:]!r} merged into its weights; load "
                           "a fresh base to train an adapter on it.")
    return target


def _stop_check(cancel) -> Callable[[], bool] | None:
    if cancel is None:
        return None
    if hasattr(cancel, "is_set"):
        return cancel.is_set
    if callable(cancel):
        return cancel
    raise InputError("cancel must be a threading.Event or a callable that returns True to stop.")


def _as_pairs(samples) -> list:
    if isinstance(samples, tuple) and len(samples) == 2 and all(isinstance(s, np.ndarray) for s in samples):
        raise InputError("samples is one (image, labels) pair; pass a list of pairs: [(image, labels)].")
    pairs = list(samples)
    for k, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise InputError(f"Sample {k} is not an (image, labels) pair.")
    return pairs


def _sample_names(sample_names, n: int) -> list[str]:
    if sample_names is None:
        return [f"sample{i}" for i in range(n)]
    names = [str(s) for s in sample_names]
    if len(names) != n:
        raise InputError(f"{len(names)} sample names for {n} samples; give one name per sample.")
    return names


def _check_init_adapter(model, init_adapter) -> dict | None:
    if init_adapter is None:
        return None
    meta = read_adapter_metadata(init_adapter)
    if meta.get("base_identity") != model.identity:
        raise AdapterError(f"init_adapter {init_adapter} was trained on base {meta.get('base_source', '?')} "
                           f"[identity {meta.get('base_identity')}], not on {model.source} [identity "
                           f"{model.identity}]; continue an adapter of this base or train a new one.")
    return meta


def _metadata(trainer, samples, names, per_sample, split, fit, scores, recipe, policy, modality, seed,
              max_minutes, init_adapter, init_meta) -> dict:
    loop = fit.loop
    images = [{"name": n, "digest": image_digest(np.asarray(image)), "shape": list(np.shape(image)),
               "labelled_slices": len(sls), "objects": len({o for sl in sls for o in sl.objects})}
              for (image, _), n, sls in zip(samples, names, per_sample)]
    meta = {
        "trained_from": "annotations",
        "quantize": trainer.backend.quantization,
        # how clicks must be decoded for what this adapter learned (read by SamBackend.point_multimask)
        "point_multimask": recipe.prompts.point_multimask,
        "intensity": policy,
        "training_images": images,
        "objects": {"total": split.objects, "held_back": split.held_back_objects,
                    "train_masks": sum(len(sl.objects) for sl in split.train),
                    "held_back_masks": sum(len(sl.objects) for sl in split.held_back)},
        "scores": scores,
        "training": {"seed": seed, "max_minutes": max_minutes, "steps_planned": fit.steps_planned,
                     "steps_done": loop.steps_done, "stopped": loop.stopped,
                     "train_seconds": round(loop.train_seconds, 2), "embed_seconds": round(fit.embed_seconds, 2),
                     "train_views": len(fit.train_views), "best_validation": loop.best,
                     "init_adapter": None if init_adapter is None else str(Path(init_adapter).resolve()),
                     "init_adapter_name": None if init_meta is None else init_meta.get("name"),
                     **trainer.parameter_report()},
        "recipe": dataclasses.asdict(recipe),
    }
    if modality:
        meta["modality"] = str(modality)
    return meta
