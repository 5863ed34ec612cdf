"""The plumbing around the training loop: backward pass, checkpoints, run log.

The loop (``loop.run_adapt_loop``) calls these methods and nothing else for plumbing, so the same loop runs
in the plugin (plain PyTorch, nothing written but the adapter) and in ``minisam-train adapt``, whose
``AccelerateRuntime`` adds Accelerate, atomic checkpoints with exact resume, and ``metrics.csv``. The method
names follow ``accelerate.Accelerator`` where it has one.

Several processes (``accelerate launch``): every process runs the loop; the runtime says which one it is
(``process_index`` of ``num_processes``), all-gathers (``gather_object``) and agrees on a flag
(``any_process``). These are collective: every process must call them at the same point of the loop.
"""

from __future__ import annotations

import contextlib

import torch


class TrainingRuntime:
    """Plain PyTorch: no checkpoints, no run log; subclass to add them."""

    num_processes = 1
    process_index = 0
    is_main_process = True

    def prepare(self, model, optimizer, scheduler):
        """Wrap the model, optimizer and scheduler (device placement, mixed precision); return them."""
        return model, optimizer, scheduler

    def unwrap_model(self, model):
        """The module given to :meth:`prepare` (without a ``DistributedDataParallel`` wrapper)."""
        return model

    def no_sync(self, model):
        """Context: backward passes accumulate gradients locally, without synchronising processes."""
        return contextlib.nullcontext()

    def gather_object(self, items: list) -> list:
        """Every process's ``items``, concatenated in process order (collective)."""
        return list(items)

    def any_process(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process (collective)."""
        return bool(flag)

    def register_for_checkpointing(self, obj) -> None:
        """``obj`` (``state_dict`` / ``load_state_dict``) belongs in every checkpoint."""

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm: float):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def resume(self, model) -> dict | None:
        """Restore the latest checkpoint into ``model``, the optimizer and the registered objects.

        Returns the loop state given to :meth:`checkpoint`, or ``None`` to start afresh.
        """
        return None

    def start(self, total_steps: int) -> None:
        """Called once before the first step (after :meth:`resume`) with the steps planned."""

    def checkpoint(self, step: int, state: dict, force: bool = False) -> None:
        """Offered after every step (``force``: at the end of a run or where it will be continued)."""

    def write_log(self, rows: list[dict], final: bool = False) -> None:
        """Log rows so far (loss terms and validation Dice); ``final`` once, when the loop ends."""

    def close(self) -> None:
        """Release what the runtime holds once the loop is over."""
