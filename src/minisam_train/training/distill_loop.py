"""The distillation training loop on HF Accelerate: one code path for 1 CPU, 1 GPU or many processes.

Exact resume: the data order of epoch ``e`` is a permutation seeded by ``seed + e`` and the position inside
it follows from the optimizer step, so a run restarted from a checkpoint (model, optimizer, scheduler and
RNG states restored by :class:`~.checkpointing.CheckpointManager`) sees the same batches in the same order
as an uninterrupted one. Gradient accumulation is done by hand (``no_sync`` on all but the last
micro-batch) so that checkpoints always fall on optimizer-step boundaries.

Several processes: micro-batch ``m`` of process ``r`` holds the slices the plan puts at position
``m * N + r`` of the epoch, so N processes together read what one process with an N times larger batch
reads, and one optimizer step trains on ``batch_size x N x grad_accum`` slices (DDP averages the
gradients). The logged losses are averaged over the processes; only the main process writes.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate.tracking import GeneralTracker

from napari_qlora_minisam.transforms import PreprocessSpec, prepare_image, scale_boxes

from .distill_losses import distillation_loss
from .prompt_loop import LoopInputs
from .run_log import write_csv


@dataclass
class LoopSettings:
    steps: int
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    max_grad_norm: float = 1.0
    alpha: float = 0.5
    temperature: float = 2.0
    checkpoint_every: int | None = None  # None: a quarter of the run, at most 50 (checkpoint_interval)
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    resume: bool = True
    stop_after: int | None = None
    prompts_per_slice: int | None = None
    num_workers: int = 0
    progress: bool = True


class DistillSamples(torch.utils.data.Dataset):
    """Student inputs + cached teacher targets; never touches the teacher."""

    def __init__(self, items, cache, reader, student_spec: PreprocessSpec, intensity: str = "minmax"):
        self.items, self.cache, self.reader = list(items), cache, reader
        self.spec, self.intensity = student_spec, intensity

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        item = self.items[i]
        start = time.perf_counter()
        entry = self.cache.load(item)
        read_s = time.perf_counter() - start  # reported per batch: a loader worker's own counters stay there
        pixels, original_hw, _ = prepare_image(self.reader.image(item), self.spec, self.intensity)
        boxes = scale_boxes(entry["boxes"].numpy(), original_hw, self.spec.image_size)
        return {"pixels": pixels[0], "boxes": torch.from_numpy(boxes), "teacher_embedding": entry["embedding"],
                "teacher_logits": entry["logits"][:, 0], "read_seconds": read_s}


def _collate(batch):
    # Cache-read time travels with the batch: with loader workers, their own counters never reach the loop.
    return {"pixels": torch.stack([b["pixels"] for b in batch]),
            "boxes": [b["boxes"] for b in batch],
            "teacher_embedding": torch.stack([b["teacher_embedding"] for b in batch]),
            "teacher_logits": [b["teacher_logits"] for b in batch],
            "read_seconds": sum(b["read_seconds"] for b in batch), "reads": len(batch)}


def epoch_order(n: int, epoch: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    return torch.randperm(n, generator=g).tolist()


class PlannedBatches(torch.utils.data.Sampler):
    """The slice indices of every micro-batch from ``first_micro`` on, in the order the loop consumes them.

    The plan depends only on the micro-batch number (epoch permutation + position), so a resumed run and
    a run with loader workers read exactly the batches an uninterrupted single-process run reads.
    Endless: the loop stops taking batches when it is done.
    """

    def __init__(self, n: int, per_epoch: int, batch_size: int, seed: int, first_micro: int, rank: int = 0,
                 world: int = 1):
        self.n, self.per_epoch, self.batch_size, self.seed = n, per_epoch, batch_size, seed
        self.first_micro, self.rank, self.world = first_micro, rank, world

    def __iter__(self):
        micro, cached = self.first_micro, (None, None)
        while True:
            epoch, pos = divmod(micro, self.per_epoch)
            if cached[0] != epoch:
                cached = (epoch, epoch_order(self.n, epoch, self.seed))
            order = cached[1]
            first = (pos * self.world + self.rank) * self.batch_size
            yield [order[(first + j) % len(order)] for j in range(self.batch_size)]
            micro += 1


class CSVTracker(GeneralTracker):
    """Accelerate tracker writing ``metrics.csv`` (one row per logged step; columns grow as keys appear).

    On resume the rows after the checkpoint's step are dropped, so the file reads like one uninterrupted run.
    """

    name = "csv"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir, resume_step: int = 0):
        super().__init__()
        self.path = Path(logging_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        if self.path.is_file() and resume_step > 0:
            with open(self.path, newline="") as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(float(r["step"])) <= resume_step]
        self._write()

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values: dict):
        (self.path.parent / "hparams.json").write_text(json.dumps(values, indent=1, default=str))

    def log(self, values: dict, step: int | None = None, **kwargs):
        self.rows.append({"step": step, **values})
        self._write()

    def _write(self):
        write_csv(self.rows, self.path, columns=None)

    def finish(self):
        self._write()


def make_scheduler(optimizer, steps: int, warmup_fraction: float):
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to 0 (transformers' schedule)."""
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, int(round(steps * warmup_fraction)), int(steps))


def _to(batch, device):
    return {k: ([t.to(device, non_blocking=True) for t in v] if isinstance(v, list)
                else v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _batches(samples, plan: PlannedBatches, num_workers: int, pin: bool):
    """Collated micro-batches in plan order; ``num_workers`` processes prepare the next ones meanwhile."""
    if num_workers <= 0:
        return (_collate([samples[i] for i in picks]) for picks in plan)
    loader = torch.utils.data.DataLoader(samples, batch_sampler=plan, num_workers=num_workers,
                                         collate_fn=_collate, pin_memory=pin, prefetch_factor=4,
                                         persistent_workers=False, worker_init_fn=_ignore_sigint)
    return iter(loader)


def _ignore_sigint(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: loader workers must live on until the main process has
    # finished its step and written the checkpoint (it ends them afterwards).
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop_requested(accelerator, should_stop) -> bool:
    """``should_stop()`` of any process, agreed by all of them (so they all stop at the same step)."""
    local = should_stop is not None and bool(should_stop())
    if accelerator.num_processes == 1:
        return local
    if local:
        accelerator.set_trigger()
    return accelerator.check_trigger()


def train_student(accelerator, model, samples: DistillSamples, settings: LoopSettings, checkpoint_dir,
                  should_stop=None, prompt_loop=None) -> dict:
    """Optimise ``model`` (a :class:`~.student.StudentForDistillation`) on ``samples``.

    Args:
        should_stop: a zero-argument callable polled before every step (e.g. a ``StopOnSignal``); once it
            returns True the loop writes a checkpoint at the current step and stops (``interrupted``).
        prompt_loop: a :class:`~.prompt_loop.PromptLoop` (EdgeSAM's corrective clicks), or None.

    Returns:
        ``{"history": [logged rows], "step": final step, "resumed_from": step or 0, "stopped_early": bool,
        "interrupted": bool, "checkpoint": newest checkpoint folder or None, "train_seconds": wall time of
        this call's steps, "epochs": epochs begun, ...}``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = make_scheduler(optimizer, settings.steps, settings.warmup_fraction)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    from .checkpointing import CheckpointManager, checkpoint_interval

    checkpoints = CheckpointManager(checkpoint_dir, accelerator, model, keep=settings.keep_checkpoints)
    every = checkpoint_interval(settings.checkpoint_every, settings.steps)
    state = checkpoints.load() if settings.resume else None
    step = int(state["step"]) if state else 0
    history = list(state.get("history", [])) if state else []
    resumed_from = saved = step

    rank, world = accelerator.process_index, accelerator.num_processes
    per_epoch = max(1, len(samples) // (settings.batch_size * world))  # micro-batches per process and epoch
    from tqdm.auto import tqdm

    bar = tqdm(total=settings.steps, initial=step, desc="distill", disable=not settings.progress
               or not accelerator.is_main_process)
    model.train()
    start = time.perf_counter()
    running: list[dict] = []
    stopped_early = interrupted = False
    micro = step * settings.grad_accum
    epochs_seen = set()
    plan = PlannedBatches(len(samples), per_epoch, settings.batch_size, settings.seed, micro, rank, world)
    cuda = accelerator.device.type == "cuda"
    if prompt_loop is not None:
        prompt_loop.to(accelerator.device)
    batches = _batches(samples, plan, settings.num_workers, cuda)
    reads, read_seconds = 0, 0.0
    if cuda:
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    while step < settings.steps:
        if settings.stop_after is not None and step - resumed_from >= settings.stop_after:
            stopped_early = True
            break
        if _stop_requested(accelerator, should_stop):
            stopped_early = interrupted = True
            if saved != step or checkpoints.latest() is None:
                checkpoints.save(step, {"history": history})
            break
        for k in range(settings.grad_accum):
            epoch = micro // per_epoch
            epochs_seen.add(epoch)
            batch = _to(next(batches), accelerator.device)
            reads, read_seconds = reads + batch.pop("reads"), read_seconds + batch.pop("read_seconds")
            if settings.prompts_per_slice:
                batch = _rotate_prompts(batch, settings.prompts_per_slice, epoch)
            sync = k == settings.grad_accum - 1
            ctx = accelerator.no_sync(model) if not sync and world > 1 else _null()
            with ctx, accelerator.autocast():
                if prompt_loop is None:
                    s_emb, s_logits = model(batch["pixels"], batch["boxes"])
                else:
                    # seeded by the micro-batch, so a resumed run samples the clicks an uninterrupted one does
                    clicks = torch.Generator().manual_seed(settings.seed * 1_000_003 + micro * world + rank)
                    s_emb, s_logits, t_extra = model(batch["pixels"], batch["boxes"], LoopInputs(
                        prompt_loop, batch["teacher_embedding"], batch["teacher_logits"], clicks))
                    batch["teacher_logits"] = [torch.cat([t, e]) for t, e in zip(batch["teacher_logits"], t_extra)]
                loss, parts = distillation_loss(s_emb, batch["teacher_embedding"], s_logits,
                                                batch["teacher_logits"], settings.alpha, settings.temperature)
                accelerator.backward(loss / settings.grad_accum)
            running.append(parts)
            micro += 1
        if settings.max_grad_norm:
            accelerator.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        if step % settings.log_every == 0 or step == settings.steps:
            row = {k: float(np.mean([r[k] for r in running])) for k in running[0]}
            if world > 1:  # the log shows the loss of the whole step, not the main process's share
                keys = list(row)
                mean = accelerator.reduce(torch.tensor([row[k] for k in keys], dtype=torch.float64,
                                                       device=accelerator.device), reduction="mean")
                row = dict(zip(keys, mean.tolist()))
            row.update(lr=float(scheduler.get_last_lr()[0]), epoch=micro / per_epoch,
                       seconds=time.perf_counter() - start)
            accelerator.log(row, step=step)
            history.append({"step": step, **row})
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            running = []
        if step % every == 0 or step == settings.steps:
            checkpoints.save(step, {"history": history})
            saved = step
    bar.close()
    del batches  # ends loader workers
    latest = checkpoints.latest()
    checkpoints.close()
    peak = torch.cuda.max_memory_allocated(accelerator.device) if cuda else None
    return {"history": history, "step": step, "resumed_from": resumed_from, "stopped_early": stopped_early,
            "interrupted": interrupted, "checkpoint": None if latest is None else str(latest),
            "train_seconds": time.perf_counter() - start, "epochs": sorted(epochs_seen), "model": model,
            "cache_reads": reads, "cache_read_seconds": read_seconds, "peak_gpu_memory_bytes": peak}


def _rotate_prompts(batch, k: int, epoch: int):
    """Keep ``k`` of each slice's cached prompts, a different ``k`` each epoch (the decoder costs per prompt).

    Chosen by epoch, not at random, so a resumed run picks the same prompts as an uninterrupted one.
    """
    for key in ("boxes", "teacher_logits"):
        batch[key] = [t[[(epoch * k + j) % t.shape[0] for j in range(min(k, t.shape[0]))]] for t in batch[key]]
    return batch


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
