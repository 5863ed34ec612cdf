"""``AccelerateRuntime``: the core adapter loop run under Accelerate, with atomic checkpoints and a run log.

The core loop (``napari_qlora_minisam.adapter_training.loop``) asks its runtime for every piece of plumbing;
this one adds what a command-line run needs and the plugin does not: Accelerate's device placement and
mixed precision, ``CheckpointManager`` checkpoints (exact resume: registered RNG and best-weights objects
travel with the optimizer and scheduler state), and ``metrics.csv`` / ``curves.png`` in the run folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

from napari_qlora_minisam.adapter_training.runtime import TrainingRuntime

from .checkpointing import CheckpointManager
from .run_log import plot_curves, write_csv

log = logging.getLogger(__name__)


class AccelerateRuntime(TrainingRuntime):
    """Args:
        accelerator: the run's ``accelerate.Accelerator``.
        run_dir: the run folder (``checkpoints/``, ``metrics.csv``, ``curves.png``).
        base_identity: the base's identity; a checkpoint written for another base is refused.
        resume: continue from the latest checkpoint in ``run_dir`` if there is one.
        checkpoint_every: steps between checkpoints (one is always written at the end).
    """

    def __init__(self, accelerator, run_dir, base_identity: str, resume: bool = True, checkpoint_every: int = 50):
        self.accelerator = accelerator
        self.run_dir = Path(run_dir)
        self.base_identity = base_identity
        self.resume_enabled = bool(resume)
        self.checkpoint_every = max(1, int(checkpoint_every))
        self._checkpoints: CheckpointManager | None = None

    def prepare(self, model, optimizer, scheduler):
        return self.accelerator.prepare(model, optimizer, scheduler)

    def register_for_checkpointing(self, obj) -> None:
        self.accelerator.register_for_checkpointing(obj)

    def backward(self, loss) -> None:
        self.accelerator.backward(loss)

    def clip_grad_norm_(self, parameters, max_norm: float):
        return self.accelerator.clip_grad_norm_(parameters, max_norm)

    def resume(self, model) -> dict | None:
        self._checkpoints = CheckpointManager(self.run_dir / "checkpoints", self.accelerator, model, keep=2)
        state = self._checkpoints.load() if self.resume_enabled else None
        if state is None:
            return None
        if state.get("base_identity") != self.base_identity:
            raise RuntimeError(
                f"The checkpoint in {self._checkpoints.root} was written for base identity "
                f"{state.get('base_identity')}, not for this base ({self.base_identity}); use another output_dir "
                "or train.resume=false."
            )
        log.info("resumed from %s at step %d", self._checkpoints.latest(), state["step"])
        return state

    def checkpoint(self, step: int, state: dict, force: bool = False) -> None:
        if force or step % self.checkpoint_every == 0:
            self._checkpoints.save(step, {"base_identity": self.base_identity, **state})

    def write_log(self, rows: list[dict], final: bool = False) -> None:
        write_csv(rows, self.run_dir / "metrics.csv")
        if final:
            plot_curves(rows, self.run_dir / "curves.png")

    def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.close()
