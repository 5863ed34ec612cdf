"""The adapter training loop: sampled prompts on few-shot views, validation Dice, early stopping, resume.

Exact resume: every random draw of the loop (which views, which prompts) comes from one numpy Generator
that the runtime checkpoints with the optimizer, scheduler and the global RNGs, and checkpoints fall on
optimizer-step boundaries; the best-so-far weights and the log rows are checkpointed too. A resumed run
therefore produces the same weights, log and adapter as an uninterrupted one.

Several processes (a runtime with ``num_processes`` > 1, e.g. ``accelerate launch``): every process draws
the same global batch of ``batch_size x num_processes`` views and prompts from the shared Generator and
decodes its own ``batch_size`` of them; the prepared (DDP) model averages the gradients, so the step equals
a single-process step on the global batch. Validation is split over the processes and gathered, and every
stop (time budget, cancel, early stopping) is agreed, so all processes stop at the same step.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..masks import centroid, dice, tight_box
from ..transforms import postprocess_logits, scale_boxes, scale_coords
from .prompt_sampling import PromptBatch
from .trainable_state import load_trainable_state_dict, trainable_state_dict


@dataclass
class AdaptLoopSettings:
    steps: int
    batch_size: int = 4
    val_every: int = 20
    log_every: int = 5
    max_minutes: float | None = None
    max_grad_norm: float | None = 1.0
    early_stopping: bool = True
    patience: int = 4
    min_delta: float = 0.002
    restore_best: bool = True
    show_progress: bool = False  # a tqdm bar (the command line)
    stop_after: int | None = None  # tests: stop (as if interrupted) after this many steps of this call
    point_multimask: bool = True  # validate clicks the way training decodes them


@dataclass(frozen=True)
class TrainProgress:
    """Where a training run is, handed to a ``progress`` callback after every step (and once at the start).

    Attributes:
        step: optimizer steps done.
        total: steps planned (the run may stop earlier: time budget, early stopping, cancel).
        loss: this step's training loss, ``None`` before the first step.
        val_dice: the latest validation score (mean of box and click Dice on held-back objects), ``None``
            when nothing is held back.
        elapsed_s: seconds of training so far.
    """

    step: int
    total: int
    loss: float | None
    val_dice: float | None
    elapsed_s: float


class SamplingRng:
    """The loop's numpy Generator, checkpointable through ``runtime.register_for_checkpointing``."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


class BestWeights:
    """The trainable weights at the best validation score so far (checkpointed with the run)."""

    def __init__(self):
        self.score = -math.inf
        self.step = -1
        self.weights: dict | None = None

    def offer(self, score: float, step: int, model, min_delta: float) -> bool:
        if score > self.score + min_delta or self.weights is None:
            self.score, self.step = float(score), int(step)
            self.weights = {k: v for k, v in trainable_state_dict(model).items()}
            return True
        return False

    def state_dict(self) -> dict:
        return {"score": self.score, "step": self.step, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.score, self.step, self.weights = state["score"], state["step"], state["weights"]


@dataclass
class LoopResult:
    steps_done: int
    stopped: str                    # "steps" | "early_stopping" | "time_budget" | "cancelled" | "interrupted"
    rows: list = field(default_factory=list)
    best: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    step_seconds: list = field(default_factory=list)


def _targets(view, size: int):
    """Object masks and the valid (non-padding) area at the decoder's output size, cached per view."""
    cache = getattr(view, "_targets", None)
    if cache is None or cache[0] != size:
        m = F.interpolate(view.masks[:, None].float(), size=(size, size), mode="area")[:, 0] > 0.5
        v = F.interpolate(view.valid[None, None].float(), size=(size, size), mode="area")[0, 0] > 0.5
        # Objects too small to survive the down-sampling still need a target: fall back to nearest.
        empty = ~m.flatten(1).any(1)
        if empty.any():
            m[empty] = F.interpolate(view.masks[empty][:, None].float(), size=(size, size), mode="nearest")[:, 0] > 0.5
        cache = (size, m, v.expand_as(m))
        view._targets = cache
    return cache[1], cache[2]


def _embedding(model, view):
    return view.embedding if view.embedding is not None else model.encode(view.pixels)


def _share(n: int, rank: int, world: int) -> range:
    """Process ``rank``'s contiguous share of ``n`` items (gathered in process order: the original order)."""
    return range(n * rank // world, n * (rank + 1) // world)


@torch.no_grad()
def validate(model, views, point_multimask: bool = True, runtime=None) -> dict:
    """Box and 1-point (centroid, deployable selection) Dice at the original resolution, averaged over objects.

    The prompts follow the COSMOS protocol (tight box; centroid click) so the score tracks what
    ``minisam-train eval`` will report. With a multi-process ``runtime`` each process scores its share of
    ``views`` and all of them get the same result (collective).
    """
    was_training = model.training
    model.eval()
    box_scores, point_scores = [], []
    size = model.backend.spec.image_size
    world = 1 if runtime is None else runtime.num_processes
    if world > 1:
        views = [views[i] for i in _share(len(views), runtime.process_index, world)]
    try:
        for view in views:
            rec = view.original
            emb = _embedding(model, view)
            gts = [rec.objects[n] for n in view.names]
            boxes = scale_boxes(np.stack([tight_box(g) for g in gts]), view.original_hw, size)
            pts = scale_coords(np.stack([centroid(g) for g in gts])[:, None], view.original_hw, size)
            for mode, out in (("box", box_scores), ("point1", point_scores)):
                if mode == "box":
                    prompts = PromptBatch("box", boxes=torch.from_numpy(boxes))
                else:
                    prompts = PromptBatch("points", points=torch.from_numpy(pts),
                                          labels=torch.ones(len(gts), 1, dtype=torch.long),
                                          point_multimask=point_multimask)
                low, iou = model.decode(emb, prompts)
                pick = iou.argmax(dim=1)  # the deployable choice: highest predicted IoU
                low = low[torch.arange(len(gts)), pick]
                masks = postprocess_logits(low.cpu(), view.input_hw, view.original_hw, size) > 0
                out.extend(dice(m.numpy(), g) for m, g in zip(masks, gts))
    finally:
        model.train(was_training)
    if world > 1:
        shares = runtime.gather_object([(box_scores, point_scores)])
        box_scores = [x for b, _ in shares for x in b]
        point_scores = [x for _, p in shares for x in p]
    box = float(np.mean(box_scores)) if box_scores else float("nan")
    point = float(np.mean(point_scores)) if point_scores else float("nan")
    return {"val_dice_box": box, "val_dice_point1": point, "val_dice": float(np.nanmean([box, point]))}


def _over_budget(settings: AdaptLoopSettings, elapsed: float, step_secs: list) -> bool:
    """Whether the next step would end past ``max_minutes`` (estimated from the last steps)."""
    if settings.max_minutes is None:
        return False
    expected = statistics.mean(step_secs[-5:]) if step_secs else 0.0
    return elapsed + expected > 60.0 * settings.max_minutes


def run_adapt_loop(model, optimizer, scheduler, train_views, val_views, sampler, loss_fn,
                   settings: AdaptLoopSettings, runtime, rng: SamplingRng, best: BestWeights,
                   progress=None, should_stop=None) -> LoopResult:
    """Run (or resume) the loop; ``rng`` and ``best`` must be registered with ``runtime`` already.

    Args:
        runtime: a :class:`~.runtime.TrainingRuntime` (backward pass, checkpoints, run log).
        progress: called with a :class:`TrainProgress` at the start and after every step.
        should_stop: a zero-argument callable; when it returns True the loop stops before the next step
            (``stopped="cancelled"``) and, like every other stop but ``interrupted``, restores the best weights.
    """
    from tqdm.auto import tqdm

    core = runtime.unwrap_model(model)  # the QLoRAMiniSAM; ``model`` may be its DDP wrapper (forward only)
    world, rank = runtime.num_processes, runtime.process_index
    state = runtime.resume(model)
    rows, bad, stopped, elapsed, step_secs = [], 0, None, 0.0, []
    start = 0
    if state is not None:
        start, rows, bad = state["step"], state["rows"], state["bad_validations"]
        stopped, elapsed, step_secs = state.get("stopped"), state["elapsed_s"], state["step_seconds"]
    elif val_views:
        rows.append({"step": 0, "elapsed_s": 0.0, **validate(core, val_views, settings.point_multimask, runtime)})
        if settings.early_stopping:
            best.offer(rows[-1]["val_dice"], 0, core.net, settings.min_delta)

    model.train()
    total = settings.steps
    runtime.start(total)
    bar = tqdm(total=total, initial=start, desc="adapt", dynamic_ncols=True,
               disable=not settings.show_progress or not runtime.is_main_process)
    acc_terms, run_steps = [], 0
    step = start
    t_origin = time.perf_counter() - elapsed
    last_val = next((r["val_dice"] for r in reversed(rows) if "val_dice" in r), None)

    def loop_state(stopped_as):
        return {"rows": rows, "bad_validations": bad, "stopped": stopped_as,
                "elapsed_s": time.perf_counter() - t_origin, "step_seconds": step_secs}

    def report(loss):
        if progress is not None:
            progress(TrainProgress(step, total, loss, last_val, round(time.perf_counter() - t_origin, 3)))

    report(None)
    try:
        while step < total and stopped is None:
            if settings.stop_after is not None and run_steps >= settings.stop_after:
                stopped = "interrupted"
                break
            # Every process must take the same branch: a stop seen by one (a signal, its clock) is agreed.
            if runtime.any_process(should_stop is not None and should_stop()):
                stopped = "cancelled"
                break
            if runtime.any_process(_over_budget(settings, time.perf_counter() - t_origin, step_secs)):
                stopped = "time_budget"
                break
            t0 = time.perf_counter()
            n = len(train_views)
            if world == 1:
                picks = rng.rng.choice(n, size=min(settings.batch_size, n), replace=False)
            else:  # the global batch; fewer views than that: some repeat, every process still gets its share
                size = settings.batch_size * world
                picks = rng.rng.choice(n, size=size, replace=n < size)
            drawn = [(train_views[int(i)], sampler.sample_view(train_views[int(i)], rng.rng))
                     for i in picks]
            mine = drawn if world == 1 else drawn[rank * settings.batch_size:(rank + 1) * settings.batch_size]
            optimizer.zero_grad(set_to_none=True)
            parts = []
            for j, (view, prompts) in enumerate(mine):
                # Gradients of all but the last view stay local; the last backward all-reduces their sum.
                sync = j == len(mine) - 1
                with contextlib.nullcontext() if sync else runtime.no_sync(model):
                    low, iou = model(_embedding(core, view), prompts)  # forward through DDP (if wrapped)
                    target, valid = _targets(view, low.shape[-1])
                    terms = loss_fn(low, target.to(low.device), iou, valid.to(low.device))
                    runtime.backward(terms.total / len(mine))
                parts.append((float(terms.total.detach()), terms.bce, terms.dice, terms.iou))
            if world > 1:  # the log shows the global batch's loss
                parts = runtime.gather_object(parts)
            if settings.max_grad_norm:
                runtime.clip_grad_norm_(core.trainable_parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            run_steps += 1
            step_secs.append(time.perf_counter() - t0)
            step_terms = np.mean(parts, axis=0)
            acc_terms.append(step_terms)
            bar.update(1)
            row = None
            if step % settings.log_every == 0 or step == total:
                mean = np.mean(acc_terms, axis=0)
                acc_terms = []
                row = {"step": step, "loss": float(mean[0]), "bce": float(mean[1]), "dice_loss": float(mean[2]),
                       "iou_loss": float(mean[3]), "lr": float(scheduler.get_last_lr()[0])}
            if val_views and (step % settings.val_every == 0 or step == total):
                scores = validate(core, val_views, settings.point_multimask, runtime)
                last_val = scores["val_dice"]
                row = {**(row or {"step": step}), **scores}
                if settings.early_stopping:
                    if best.offer(scores["val_dice"], step, core.net, settings.min_delta):
                        bad = 0
                    else:
                        bad += 1
                        if bad >= settings.patience:
                            stopped = "early_stopping"
            if row is not None:
                row["elapsed_s"] = round(time.perf_counter() - t_origin, 2)
                rows.append(row)
                bar.set_postfix({k: f"{row[k]:.3f}" for k in ("loss", "val_dice") if row.get(k) is not None})
                if "val_dice" in row:  # keep the log readable while a long run is going
                    runtime.write_log(rows)
            runtime.checkpoint(step, loop_state(stopped), force=step == total or stopped == "early_stopping")
            report(float(step_terms[0]))
        if stopped in ("time_budget", "cancelled"):  # checkpoint where it stopped, so a rerun can continue
            runtime.checkpoint(step, loop_state(None), force=True)
    finally:
        bar.close()
        runtime.close()
    result = LoopResult(step, stopped or "steps", rows, {}, time.perf_counter() - t_origin, step_secs)
    if best.weights is not None:
        result.best = {"val_dice": best.score, "step": best.step}
        if settings.restore_best and stopped != "interrupted":
            load_trainable_state_dict(core.net, best.weights)
    runtime.write_log(rows, final=True)
    return result
