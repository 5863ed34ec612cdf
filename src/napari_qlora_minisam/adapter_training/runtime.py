"""The plumbing around the training loop: backward pass, checkpoints, run log.

The loop (``loop.run_adapt_loop``) calls these methods and nothing else for plumbing, so the same loop runs
in the plugin (plain PyTorch, nothing written but the adapter) and in ``minisam-train adapt``, whose
``AccelerateRuntime`` adds Accelerate, atomic checkpoints with exact resume, and ``metrics.csv``. The method
names follow ``accelerate.Accelerator`` where it has one.
"""

from __future__ import annotations

import torch


class TrainingRuntime:
    """Plain PyTorch: no checkpoints, no run log; subclass to add them."""

    def prepare(self, model, optimizer, scheduler):
        """Wrap the model, optimizer and scheduler (device placement, mixed precision); return them."""
        return model, optimizer, scheduler

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

    def checkpoint(self, step: int, state: dict, force: bool = False) -> None:
        """Offered after every step (``force``: at the end of a run or where it will be continued)."""

    def write_log(self, rows: list[dict], final: bool = False) -> None:
        """Log rows so far (loss terms and validation Dice); ``final`` once, when the loop ends."""

    def close(self) -> None:
        """Release what the runtime holds once the loop is over."""
