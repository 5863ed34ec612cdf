"""``minisam-train adapt --modality X``: train a QLoRA modality adapter and write it where eval and the plugin look.

Steps: load the base (any ``load_model`` source, NF4 + double quantization by default) -> attach peft LoRA
(``QLoRAMiniSAM``) -> read the modality's ``adapt_train`` slices (datasets picked by ``modalities.json``),
hold out a validation share, make augmented views -> embed every view once when LoRA leaves the encoder
alone -> train with mixed box / point prompts on ``MedSegLoss`` (Accelerate loop, atomic checkpoints) ->
write the adapter (peft format + ``minisam_adapter.json``) atomically, plus ``metrics.csv``, ``curves.png``
and ``summary.json`` in the run folder.
"""

from __future__ import annotations

import json
import logging
import math
import resource
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def _optimizer(cfg_train, params):
    name = str(cfg_train.optimizer).lower()
    lr, wd = float(cfg_train.lr), float(cfg_train.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)
    raise ValueError(f"train.optimizer={cfg_train.optimizer!r}; choose adamw, adam or sgd.")


def _scheduler(cfg_train, optimizer, steps: int):
    warmup = max(0, int(cfg_train.get("warmup_steps", 0) or 0))
    kind = str(cfg_train.get("scheduler", "cosine")).lower()
    if kind not in ("cosine", "constant"):
        raise ValueError(f"train.scheduler={kind!r}; choose cosine or constant.")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _total_steps(cfg_train, n_views: int) -> int:
    if cfg_train.get("epochs"):
        return max(1, math.ceil(float(cfg_train.epochs) * n_views / int(cfg_train.batch_size)))
    return int(cfg_train.steps)


def _use_cache(cfg_train, model) -> bool:
    choice = cfg_train.get("cache_embeddings", "auto")
    if str(choice).lower() == "auto":
        return not model.encoder_trains
    if bool(choice) and model.encoder_trains:
        raise ValueError("train.cache_embeddings=true but LoRA (or full fine-tuning) trains the encoder: "
                         "cached embeddings would be stale. Use cache_embeddings=auto.")
    return bool(choice)


@torch.no_grad()
def _embed_views(model, views, progress: bool) -> float:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    model.eval()
    for v in tqdm(views, desc="embedding views (frozen encoder)", disable=not progress, dynamic_ncols=True):
        v.embedding = model.encode(v.pixels).detach()
    model.train()
    return time.perf_counter() - t0


def _peak_memory_bytes(device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def run(cfg) -> dict:
    """Train (or resume) an adapter as ``cfg`` says; return the run summary (also in ``summary.json``)."""
    return train(cfg)[0]


def train(cfg):
    """:func:`run`, also returning the trained ``QLoRAMiniSAM`` (tests, notebooks)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from omegaconf import OmegaConf

    from napari_qlora_minisam import load_model
    from napari_qlora_minisam.loading import resolve_device

    from ..training.adapt_data import AugmentConfig, build_views, load_adapt_records
    from ..training.adapt_loop import AdaptLoopSettings, BestWeights, SamplingRng, train_adapter
    from ..training.checkpointing import atomic_write_text
    from ..training.losses import MedSegLoss
    from ..training.prompt_sampling import PromptSampler, PromptSamplingConfig
    from ..training.qlora import QLoRAMiniSAM

    t_start = time.perf_counter()
    modality = str(cfg.modality).lower()
    tr = cfg.train
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed = int(cfg.seed)
    progress = bool(cfg.logging.get("progress", True))

    # Data first: a wrong modality or split should fail before minutes of model loading.
    train_recs, val_recs, data_summary = load_adapt_records(cfg.data, modality, seed)

    device = resolve_device(tr.device)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=str(tr.mixed_precision))
    set_seed(seed)
    backend = load_model(cfg.base, quantize=cfg.quantize if tr.method == "qlora" else None, device=str(device))
    lora = tr.lora
    model = QLoRAMiniSAM(backend, adapter_name=str(cfg.adapter.name), method=str(tr.method), r=int(lora.r),
                         alpha=int(lora.alpha), dropout=float(lora.dropout),
                         target_modules=list(lora.target_modules), parts=list(lora.parts))
    report = model.parameter_report()
    print(f"[adapt] base {backend.name} (identity {backend.identity}), method {tr.method}: trainable params "
          f"{report['trainable_params']:,} of {report['total_params']:,} "
          f"({100 * report['trainable_share']:.3f} %)")

    aug = AugmentConfig(**OmegaConf.to_container(cfg.data.augment, resolve=True))
    view_rng = np.random.default_rng(seed)
    min_px = int(cfg.data.min_object_pixels)
    train_views = build_views(train_recs, backend.spec, str(cfg.data.intensity), aug, view_rng, min_px, True)
    val_views = build_views(val_recs, backend.spec, str(cfg.data.intensity), aug, view_rng, min_px, False)
    cache = _use_cache(tr, model)
    embed_s = _embed_views(model, train_views + val_views, progress) if cache else 0.0
    if not cache:  # the encoder learns: views travel as pixels and are encoded every step
        for v in train_views + val_views:
            v.embedding = None

    steps = _total_steps(tr, len(train_views))
    optimizer = _optimizer(tr, model.trainable_parameters())
    scheduler = _scheduler(tr, optimizer, steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    rng, best = SamplingRng(seed + 1), BestWeights()
    accelerator.register_for_checkpointing(rng)
    accelerator.register_for_checkpointing(best)

    pc = tr.prompts
    point_multimask = bool(pc.get("point_multimask", True))  # older configs without the key: SAM's 3 masks
    sampler = PromptSampler(PromptSamplingConfig(
        mix=dict(pc.mix), box_jitter=float(pc.box_jitter), max_pos_points=int(pc.max_pos_points),
        max_neg_points=int(pc.max_neg_points), neg_prob=float(pc.neg_prob), centroid_prob=float(pc.centroid_prob),
        point_multimask=point_multimask))
    loss_fn = MedSegLoss(float(tr.loss.bce_weight), float(tr.loss.dice_weight), float(tr.loss.iou_weight))
    es = tr.early_stopping
    settings = AdaptLoopSettings(
        steps=steps, batch_size=int(tr.batch_size), val_every=int(tr.val_every),
        checkpoint_every=int(tr.checkpoint_every), log_every=int(tr.log_every),
        max_minutes=None if tr.get("max_minutes") is None else float(tr.max_minutes),
        max_grad_norm=float(tr.max_grad_norm) if tr.get("max_grad_norm") else None,
        early_stopping=bool(es.enabled), patience=int(es.patience), min_delta=float(es.min_delta),
        restore_best=bool(es.restore_best), resume=bool(tr.resume), progress=progress,
        point_multimask=point_multimask,
        stop_after=tr.get("stop_after"))
    result = train_adapter(accelerator, model, optimizer, scheduler, train_views, val_views, sampler, loss_fn,
                           settings, run_dir, backend.identity, rng, best)

    config = OmegaConf.to_container(cfg, resolve=True)
    median_step = float(np.median(result.step_seconds)) if result.step_seconds else None
    summary = {
        "modality": modality, "base": str(cfg.base), "base_identity": backend.identity,
        "quantize": backend.quantization, "method": str(tr.method), "device": str(device),
        **report, "lora": OmegaConf.to_container(lora, resolve=True) if tr.method == "qlora" else None,
        "cache_embeddings": cache, "train_views": len(train_views), "val_views": len(val_views),
        "steps_planned": steps, "steps_done": result.steps_done, "stopped": result.stopped,
        "best_validation": result.best, "embed_seconds": round(embed_s, 2),
        "train_seconds": round(result.train_seconds, 2),
        "total_seconds": round(time.perf_counter() - t_start, 2),
        "median_step_seconds": None if median_step is None else round(median_step, 4),
        "peak_memory_bytes": _peak_memory_bytes(device),
        "data": data_summary, "adapter_dir": None, "adapter_bytes": None,
    }
    if result.stopped != "interrupted" and tr.method == "qlora":
        last = result.rows[-1] if result.rows else {}
        metadata = {
            "modality": modality, "quantize": backend.quantization,
            # how clicks must be decoded for what this adapter learned (read by SamBackend.point_multimask)
            "point_multimask": point_multimask,
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
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1, default=str))
    print(f"[adapt] {result.stopped} after {result.steps_done} steps, {result.train_seconds:.1f} s training; "
          f"log {run_dir / 'metrics.csv'}, curves {run_dir / 'curves.png'}")
    return summary, accelerator.unwrap_model(model)
