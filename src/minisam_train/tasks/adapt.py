"""``minisam-train adapt --modality X``: train a QLoRA modality adapter and write it where eval and the plugin look.

A front end over the core trainer (``napari_qlora_minisam.adapter_training``), which ``train_adapter`` in the
plugin runs too. Steps: read the training slices (a modality's COSMOS ``adapt_train`` slices, or image/label
TIFF pairs saved from napari: ``data.pairs`` / ``data.pairs_dir``) and hold out a validation share -> load
the base (any ``load_model`` source, NF4 + double quantization by default) -> attach peft LoRA
(``QLoRAMiniSAM``) -> ``fit_adapter`` (augmented views, embedded once when LoRA leaves the encoder alone,
mixed box / point prompts on ``MedSegLoss``) under an ``AccelerateRuntime`` (atomic checkpoints, exact
resume) -> write the adapter (peft format + ``minisam_adapter.json``) atomically, plus ``metrics.csv``,
``curves.png`` and ``summary.json`` in the run folder.

Several processes: ``accelerate launch --num_processes N -m minisam_train adapt ...`` on GPUs, or
``accelerate launch --multi_gpu --num_processes N -m minisam_train adapt ... train.device=cpu`` for CPU
processes. Each step then trains on ``train.batch_size x N`` views (gradients all-reduced) and only the
main process writes the checkpoints' shared files, the log, the summary and the adapter.
"""

from __future__ import annotations

import json
import logging
import resource
import signal
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def recipe_from_config(cfg):
    """The core :class:`AdapterRecipe` for this Hydra config (``train.*`` and ``data.*``)."""
    from omegaconf import OmegaConf

    from napari_qlora_minisam.adapter_training import AdapterRecipe, EarlyStopping, LoraSettings, LossWeights
    from napari_qlora_minisam.adapter_training.prompt_sampling import PromptSamplingConfig
    from napari_qlora_minisam.adapter_training.views import AugmentConfig

    tr, data = cfg.train, cfg.data
    lora, pc, es = tr.lora, tr.prompts, tr.early_stopping
    return AdapterRecipe(
        lora=LoraSettings(r=int(lora.r), alpha=int(lora.alpha), dropout=float(lora.dropout),
                          target_modules=tuple(lora.target_modules), parts=tuple(lora.parts)),
        prompts=PromptSamplingConfig(
            mix=dict(pc.mix), box_jitter=float(pc.box_jitter), max_pos_points=int(pc.max_pos_points),
            max_neg_points=int(pc.max_neg_points), neg_prob=float(pc.neg_prob),
            centroid_prob=float(pc.centroid_prob),
            point_multimask=bool(pc.get("point_multimask", True)),  # older configs: SAM's 3 masks
            neighbour=float(pc.get("neighbour", 0.0)),
            neighbour_prompt=str(pc.get("neighbour_prompt", "box+mask+point"))),
        augment=AugmentConfig(**OmegaConf.to_container(data.augment, resolve=True)),
        loss=LossWeights(float(tr.loss.bce_weight), float(tr.loss.dice_weight), float(tr.loss.iou_weight)),
        early_stopping=EarlyStopping(enabled=bool(es.enabled), patience=int(es.patience),
                                     min_delta=float(es.min_delta), restore_best=bool(es.restore_best)),
        optimizer=str(tr.optimizer), lr=float(tr.lr), weight_decay=float(tr.weight_decay),
        scheduler=str(tr.get("scheduler", "cosine")), warmup_steps=int(tr.get("warmup_steps", 0) or 0),
        max_grad_norm=float(tr.max_grad_norm) if tr.get("max_grad_norm") else None,
        batch_size=int(tr.batch_size), steps=int(tr.steps), epochs=tr.get("epochs"),
        cache_embeddings=tr.get("cache_embeddings", "auto"), val_every=int(tr.val_every),
        log_every=int(tr.log_every), val_fraction=float(data.val_fraction),
        min_object_pixels=int(data.min_object_pixels), max_views=None,
    )


def _training_slices(cfg, modality: str, seed: int):
    from ..training.adapt_data import load_modality_slices, load_neighbour_volume_slices, load_pair_slices

    data = cfg.data
    if data.get("pairs") or data.get("pairs_dir"):
        train, val, summary = load_pair_slices(data, modality, int(data.min_object_pixels), seed)
    else:
        train, val, summary = load_modality_slices(data, modality, seed)
    if data.get("neighbour_volumes"):  # slices of 3D volumes for neighbour prompts, on top of either
        extra, extra_summary = load_neighbour_volume_slices(data.neighbour_volumes, int(data.min_object_pixels),
                                                            data.get("split_file"))
        train, summary = train + extra, {**summary, **extra_summary}
    return train, val, summary


def _peak_memory_bytes(device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def run(cfg) -> dict:
    """Train (or resume) an adapter as ``cfg`` says; return the run summary (also in ``summary.json``)."""
    return train(cfg)[0]


def train(cfg):
    """:func:`run`, also returning the trained ``QLoRAMiniSAM`` (tests, notebooks)."""
    from accelerate.utils import set_seed
    from omegaconf import OmegaConf

    from napari_qlora_minisam import load_model
    from napari_qlora_minisam.adapter_training.fit import fit_adapter
    from napari_qlora_minisam.adapter_training.qlora import QLoRAMiniSAM
    from napari_qlora_minisam.loading import resolve_device

    from ..errors import TrainingInterrupted
    from ..training.accelerate_runtime import (AccelerateRuntime, describe_process, make_accelerator,
                                               shared_output_dir)
    from ..training.checkpointing import atomic_write_text
    from ..training.interrupts import StopOnSignal

    t_start = time.perf_counter()
    modality = str(cfg.modality).lower()
    tr = cfg.train
    device = resolve_device(tr.device)
    accelerator = make_accelerator(cpu=device.type == "cpu", mixed_precision=str(tr.mixed_precision))
    if accelerator.num_processes > 1:
        device = accelerator.device  # each process its own GPU (or the CPU)
    print(f"[adapt] {describe_process(accelerator)}", flush=True)
    main = accelerator.is_main_process
    run_dir = shared_output_dir(accelerator, cfg.output_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    seed = int(cfg.seed)
    progress = bool(cfg.logging.get("progress", True))
    recipe = recipe_from_config(cfg)

    # Data first: a wrong modality, split or pair should fail before minutes of model loading.
    train_slices, val_slices, data_summary = _training_slices(cfg, modality, seed)

    set_seed(seed)
    backend = load_model(cfg.base, quantize=cfg.quantize if tr.method == "qlora" else None, device=str(device))
    lora = recipe.lora
    model = QLoRAMiniSAM(backend, adapter_name=str(cfg.adapter.name), method=str(tr.method), r=lora.r,
                         alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules,
                         parts=lora.parts)
    report = model.parameter_report()
    if main:
        print(f"[adapt] base {backend.name} (identity {backend.identity}), method {tr.method}: trainable params "
              f"{report['trainable_params']:,} of {report['total_params']:,} "
              f"({100 * report['trainable_share']:.3f} %)")

    runtime = AccelerateRuntime(accelerator, run_dir, backend.identity, resume=bool(tr.resume),
                                checkpoint_every=tr.get("checkpoint_every"), keep=int(tr.get("keep_checkpoints", 2)))
    # Ctrl-C / SIGTERM end the loop like the plugin's Cancel: the step finishes and is checkpointed.
    with StopOnSignal() as stop:
        fit = fit_adapter(model, train_slices, val_slices, recipe, seed=seed, intensity=str(cfg.data.intensity),
                          max_minutes=None if tr.get("max_minutes") is None else float(tr.max_minutes),
                          runtime=runtime, show_progress=progress, stop_after=tr.get("stop_after"),
                          should_stop=stop)
    result = fit.loop
    # Only a signal cancels a command-line run (agreed by all processes, whichever of them it reached).
    signalled = result.stopped == "cancelled"
    if signalled:
        result.stopped = "interrupted"  # no adapter: the checkpoint is where the run goes on

    config = OmegaConf.to_container(cfg, resolve=True)
    median_step = float(np.median(result.step_seconds)) if result.step_seconds else None
    summary = {
        "modality": modality, "base": str(cfg.base), "base_identity": backend.identity,
        "quantize": backend.quantization, "method": str(tr.method), "device": str(device),
        **report, "lora": OmegaConf.to_container(tr.lora, resolve=True) if tr.method == "qlora" else None,
        "cache_embeddings": fit.cached_embeddings, "train_views": len(fit.train_views),
        "val_views": len(fit.val_views), "steps_planned": fit.steps_planned, "steps_done": result.steps_done,
        "stopped": result.stopped, "best_validation": result.best, "embed_seconds": round(fit.embed_seconds, 2),
        "train_seconds": round(result.train_seconds, 2),
        "total_seconds": round(time.perf_counter() - t_start, 2),
        "median_step_seconds": None if median_step is None else round(median_step, 4),
        "peak_memory_bytes": _peak_memory_bytes(device),
        "data": data_summary, "adapter_dir": None, "adapter_bytes": None,
        "processes": accelerator.num_processes,
        "global_batch_size": int(tr.batch_size) * accelerator.num_processes,
    }
    if result.stopped != "interrupted" and tr.method == "qlora" and main:
        last = result.rows[-1] if result.rows else {}
        metadata = {
            "name": str(cfg.adapter.name),  # the name it loads under, whatever its folder is called
            "modality": modality, "quantize": backend.quantization,
            # how clicks must be decoded for what this adapter learned (read by SamBackend.point_multimask)
            "point_multimask": recipe.prompts.point_multimask,
            "data": data_summary,
            "validation": {"best": result.best, "last": {k: last.get(k) for k in
                                                          ("step", "val_dice", "val_dice_box", "val_dice_point1")}},
            "training": {k: summary[k] for k in ("trainable_params", "total_params", "trainable_share",
                                                  "steps_done", "stopped", "train_seconds", "embed_seconds",
                                                  "median_step_seconds", "cache_embeddings", "device")},
            "config": config,
        }
        model = accelerator.unwrap_model(model)
        out = model.save_adapter(Path(cfg.adapter.out_dir), metadata)
        size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
        summary["adapter_dir"], summary["adapter_bytes"] = str(out), int(size)
        print(f"[adapt] adapter written to {out} ({size / 1e6:.2f} MB); best validation {result.best}")
    if main:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1, default=str))
        print(f"[adapt] {result.stopped} after {result.steps_done} steps, {result.train_seconds:.1f} s training; "
              f"log {run_dir / 'metrics.csv'}, curves {run_dir / 'curves.png'}")
    accelerator.wait_for_everyone()  # the other processes return once the adapter and summary are written
    if signalled:
        raise TrainingInterrupted(result.steps_done, runtime.last_checkpoint, run_dir, stop.signum or signal.SIGINT)
    return summary, accelerator.unwrap_model(model)
