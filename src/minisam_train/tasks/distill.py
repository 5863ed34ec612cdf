"""``minisam-train distill``: teach a small dense ``StudentSAM`` to reproduce a teacher SAM.

Steps: list the slices (any image/volume folders + COSMOS roots, test split excluded) -> teacher pass, once
per image, into an fp16 disk cache -> build the student (decoder from the teacher) -> Accelerate loop on
``alpha * feature MSE + (1 - alpha) * mask KL`` with atomic checkpoints -> ``save_pretrained`` into
``output_dir``, which ``load_model(output_dir)``, ``minisam-train eval`` and the napari plugin all load.
See ``docs/distillation.md``.

Several processes: ``accelerate launch --num_processes N -m minisam_train distill ...`` on GPUs, or
``accelerate launch --multi_gpu --num_processes N -m minisam_train distill ... train.device=cpu`` for CPU
processes. The teacher pass is split between them (one writer per cache entry), each step trains on
``train.batch_size x N x train.grad_accum`` slices (gradients all-reduced), and only the main process
writes the log, the checkpoints' shared files, the summary and the student.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import signal
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DECODER_FILE = "teacher_decoder.pt"
SUMMARY_FILE = "distill_summary.json"


def _flat(cfg) -> dict:
    """Hydra config -> flat {a.b.c: scalar} for trackers (TensorBoard hparams take scalars only)."""
    from omegaconf import OmegaConf

    out = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = node if isinstance(node, (int, float, str, bool)) or node is None else str(node)

    walk("", OmegaConf.to_container(cfg, resolve=True))
    return out


def _accelerator(cfg):
    """The run's ``Accelerator`` and output folder (the main process's, shared with the others)."""
    from accelerate import PartialState
    from accelerate.utils import ProjectConfiguration

    from ..training.accelerate_runtime import make_accelerator, shared_output_dir
    from ..training.distill_loop import CSVTracker

    device = str(cfg.train.device)
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    mixed = str(cfg.train.mixed_precision) if not cpu else "no"  # fp16/bf16 autocast is a GPU feature here
    state = PartialState(cpu=cpu)  # the processes of an `accelerate launch` find each other here
    out = shared_output_dir(state, cfg.output_dir)
    trackers = []
    if state.is_main_process:  # Accelerate logs from the main process only; the CSV file is written there
        out.mkdir(parents=True, exist_ok=True)
        if cfg.logging.csv:
            trackers.append(CSVTracker("distill", out / "logs", resume_step=_resume_step(out, bool(cfg.train.resume))))
        if cfg.logging.tensorboard:
            trackers.append("tensorboard")
        if cfg.logging.wandb.enabled:
            trackers.append("wandb")
    accelerator = make_accelerator(cpu=cpu, mixed_precision=mixed, log_with=trackers or None,
                                   project_config=ProjectConfiguration(project_dir=str(out),
                                                                       logging_dir=str(out / "logs")))
    return accelerator, out


def _resume_step(out: Path, resume: bool) -> int:
    from ..training.checkpointing import CheckpointManager

    if not resume:
        return 0
    # Only to trim the CSV log to the resumed step; the loop itself restores through the same manager.
    found = CheckpointManager(out / "checkpoints", accelerator=None).latest()
    return int(json.loads((found / "trainer_state.json").read_text())["step"]) if found else 0


def build_items(cfg):
    from ..data.unlabelled import gather_slices

    d = cfg.data
    key = d.exclude_split_key
    keys = str(key) if isinstance(key, str) else [str(k) for k in key]  # one key or a list ([test, val])
    return gather_slices(list(d.folders or []), list(d.cosmos_roots or []), volume_stride=int(d.volume_stride),
                         exclude=list(d.exclude or []), exclude_split_file=d.exclude_split_file,
                         exclude_split_key=keys, use_labels=bool(d.use_labels),
                         max_slices=d.max_slices, views=list(d.get("views") or []),
                         views_on=str(d.get("views_on") or "all"))


def prompt_settings(cfg):
    from ..training.teacher_cache import PromptSettings

    fields = {f.name for f in dataclasses.fields(PromptSettings)}
    return PromptSettings(**{k: v for k, v in dict(cfg.prompts).items() if k in fields})


def run(cfg) -> dict:
    """Run a distillation described by the composed ``distill`` config; returns the run summary."""
    from accelerate.utils import set_seed

    from napari_qlora_minisam import load_model
    from napari_qlora_minisam.models.hf_sam import HfSamBackend

    from ..data import DataError
    from ..data.unlabelled import SliceReader
    from ..errors import TrainingInterrupted
    from ..training.distill_loop import DistillSamples, LoopSettings, train_student
    from ..training.accelerate_runtime import describe_process
    from ..training.checkpointing import atomic_torch_save, atomic_write_text
    from ..training.interrupts import StopOnSignal
    from ..training.prompt_loop import PromptLoop
    from ..training.student import (StudentForDistillation, build_student_net, check_student_source,
                                    load_decoder_state, set_trainable, teacher_decoder_state, warm_start_encoder)
    from ..training.teacher_cache import TeacherCache, fill_cache

    t_run = time.perf_counter()
    accelerator, out = _accelerator(cfg)
    main = accelerator.is_main_process
    print(f"[distill] {describe_process(accelerator)}", flush=True)
    set_seed(int(cfg.seed))
    accelerator.init_trackers("distill", config=_flat(cfg))
    progress = bool(cfg.logging.progress)

    # 1. data and the teacher pass (once per image, into the fp16 cache)
    check_student_source(cfg.student.source, cfg.student.config)
    items = build_items(cfg)
    prompts = prompt_settings(cfg)
    intensity = str(cfg.data.intensity)
    cache = TeacherCache(cfg.cache.dir, {
        "teacher": str(Path(cfg.teacher.source).resolve()) if Path(cfg.teacher.source).exists()
        else str(cfg.teacher.source),
        "quantize": cfg.teacher.quantize, "prompts": dataclasses.asdict(prompts), "intensity": intensity,
        "use_labels": bool(cfg.data.use_labels), "min_object_pixels": int(cfg.data.min_object_pixels)})
    loaded = {}

    def load_teacher():
        if "teacher" not in loaded:
            log.info("loading teacher %s", cfg.teacher.source)
            loaded["teacher"] = load_model(str(cfg.teacher.source), quantize=cfg.teacher.quantize,
                                           device=accelerator.device)
        return loaded["teacher"]

    reader = SliceReader(int(cfg.data.min_object_pixels))
    t0 = time.perf_counter()
    usable, stats = fill_cache(items, cache, reader, load_teacher, prompts, intensity=intensity,
                               accelerator=accelerator, progress=progress)
    decoder_file = cache.dir / DECODER_FILE
    if main and not decoder_file.is_file():
        # Kept beside the targets, so a run on a warm cache never needs the teacher at all.
        atomic_torch_save(teacher_decoder_state(load_teacher()), decoder_file)
    accelerator.wait_for_everyone()
    teacher_pass_s = time.perf_counter() - t0
    cuda = accelerator.device.type == "cuda"
    teacher_peak = torch.cuda.max_memory_allocated(accelerator.device) if cuda else None
    loaded.clear()  # free the teacher before the student trains (ViT-H is 2.5 GB)
    gc.collect()
    if not usable:
        raise DataError("The teacher found no object to prompt on any slice; check data.* and prompts.*")

    # 2. the student
    student = build_student_net(cfg.student.source, dict(cfg.student.config) if cfg.student.config else None,
                                seed=int(cfg.seed))
    if str(cfg.student.init_decoder) == "teacher":
        load_decoder_state(student, torch.load(decoder_file, weights_only=True))
    warm = None
    if cfg.student.get("init_encoder"):  # after the decoder: the donor's trained embedding norm wins
        warm = warm_start_encoder(student, cfg.student.init_encoder)
        log.info("student encoder warm-started from %s: %d of %d tensors (%d resized, left fresh)",
                 cfg.student.init_encoder, warm["copied"], warm["of"], len(warm["skipped"]))
    set_trainable(student, bool(cfg.student.train_decoder))
    spec = HfSamBackend(student, "student").spec
    samples = DistillSamples(usable, cache, reader, spec, intensity)

    # 3. the loop
    t = cfg.train
    steps_per_epoch = max(1, len(samples) // (int(t.batch_size) * accelerator.num_processes * int(t.grad_accum)))
    steps = int(t.steps) if t.epochs is None else int(t.epochs) * steps_per_epoch
    settings = LoopSettings(
        steps=steps, batch_size=int(t.batch_size), grad_accum=int(t.grad_accum), lr=float(t.lr),
        weight_decay=float(t.weight_decay), warmup_fraction=float(t.warmup_fraction),
        max_grad_norm=float(t.max_grad_norm or 0), alpha=float(t.alpha), temperature=float(t.temperature),
        checkpoint_every=None if t.get("checkpoint_every") is None else int(t.checkpoint_every),
        keep_checkpoints=int(t.get("keep_checkpoints", 2)), log_every=int(t.log_every), seed=int(cfg.seed),
        resume=bool(t.resume), stop_after=t.stop_after, prompts_per_slice=t.get("prompts_per_slice"),
        num_workers=int(t.num_workers), progress=progress)
    rounds = int(t.get("loop_rounds") or 0)
    prompt_loop = PromptLoop(student, torch.load(decoder_file, weights_only=True), rounds) if rounds else None
    with StopOnSignal() as stop:  # Ctrl-C / SIGTERM: finish the step, checkpoint it, stop
        result = train_student(accelerator, StudentForDistillation(student), samples, settings, out / "checkpoints",
                               should_stop=stop, prompt_loop=prompt_loop)

    # 4. the output: a plain save_pretrained folder (config.json + model.safetensors)
    summary = {
        "teacher": str(cfg.teacher.source), "teacher_quantize": cfg.teacher.quantize,
        "student": str(cfg.student.source) if not cfg.student.config else dict(cfg.student.config),
        "student_init_encoder": None if warm is None else {"from": str(cfg.student.init_encoder), **warm},
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "student_encoder_parameters": sum(p.numel() for p in student.vision_encoder.parameters()),
        "slices_listed": len(items), "slices_used": len(usable), "cache_dir": str(cache.dir),
        "cache": stats.as_dict(), "teacher_pass_seconds": teacher_pass_s,
        "teacher_seconds_per_slice": stats.teacher_seconds / max(1, stats.computed),
        "cache_read_seconds_per_slice": result["cache_read_seconds"] / max(1, result["cache_reads"]),
        "cache_reads": result["cache_reads"], "peak_gpu_memory_bytes": result["peak_gpu_memory_bytes"],
        "teacher_pass_peak_gpu_memory_bytes": teacher_peak,
        "num_workers": settings.num_workers, "loop_rounds": rounds,
        "steps": result["step"], "steps_planned": steps, "steps_per_epoch": steps_per_epoch,
        "resumed_from_step": result["resumed_from"], "stopped_early": result["stopped_early"],
        "interrupted": result["interrupted"],
        "train_seconds": result["train_seconds"], "run_seconds": time.perf_counter() - t_run,
        "history": result["history"], "processes": accelerator.num_processes,
        "global_batch_size": settings.batch_size * accelerator.num_processes * settings.grad_accum,
        "mixed_precision": accelerator.mixed_precision, "device": str(accelerator.device),
    }
    if not result["stopped_early"] and main:
        net = accelerator.unwrap_model(result["model"]).student
        net.eval().save_pretrained(str(out))
        summary["output"] = str(out)
    if main:
        atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=1, default=str))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if result["interrupted"]:
        raise TrainingInterrupted(result["step"], result["checkpoint"], out, stop.signum or signal.SIGINT)
    return summary

