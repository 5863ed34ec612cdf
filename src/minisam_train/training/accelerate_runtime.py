"""``AccelerateRuntime``: the core adapter loop run under Accelerate, with atomic checkpoints and a run log.

The core loop (``napari_qlora_minisam.adapter_training.loop``) asks its runtime for every piece of plumbing;
this one adds what a command-line run needs and the plugin does not: Accelerate's device placement and
mixed precision, ``CheckpointManager`` checkpoints (exact resume: registered RNG and best-weights objects
travel with the optimizer and scheduler state), and ``metrics.csv`` / ``curves.png`` in the run folder.

Under ``accelerate launch`` with several processes the model is wrapped in ``DistributedDataParallel``
(gradients all-reduced at every optimizer step), every process calls the checkpoint methods (Accelerate's
``save_state`` is collective) and only the main process writes the run log.
"""

from __future__ import annotations

import logging
from pathlib import Path

from napari_qlora_minisam.adapter_training.runtime import TrainingRuntime

from ..errors import ConfigError
from .checkpointing import CheckpointManager, checkpoint_interval
from .run_log import plot_curves, write_csv

log = logging.getLogger(__name__)


class AccelerateRuntime(TrainingRuntime):
    """Args:
        accelerator: the run's ``accelerate.Accelerator``.
        run_dir: the run folder (``checkpoints/``, ``metrics.csv``, ``curves.png``).
        base_identity: the base's identity; a checkpoint written for another base is refused.
        resume: continue from the latest checkpoint in ``run_dir`` if there is one.
        checkpoint_every: steps between checkpoints (one is always written at the end and where a run is
            stopped); ``None``: a quarter of the planned steps, at most 50 (``checkpoint_interval``).
        keep: how many checkpoints to keep (the newest).
    """

    def __init__(self, accelerator, run_dir, base_identity: str, resume: bool = True,
                 checkpoint_every: int | None = None, keep: int = 2):
        self.accelerator = accelerator
        self.run_dir = Path(run_dir)
        self.base_identity = base_identity
        self.resume_enabled = bool(resume)
        self.checkpoint_every_setting = checkpoint_every
        self.checkpoint_every = checkpoint_interval(checkpoint_every, 200)  # until start() knows the steps
        self.keep = max(1, int(keep))
        self._checkpoints: CheckpointManager | None = None

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def process_index(self) -> int:
        return self.accelerator.process_index

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    def prepare(self, model, optimizer, scheduler):
        return self.accelerator.prepare(model, optimizer, scheduler)

    def unwrap_model(self, model):
        return self.accelerator.unwrap_model(model)

    def no_sync(self, model):
        return self.accelerator.no_sync(model)

    def gather_object(self, items: list) -> list:
        if self.accelerator.num_processes == 1:
            return list(items)
        from accelerate.utils import gather_object

        return gather_object(list(items))

    def any_process(self, flag: bool) -> bool:
        return any_process(self.accelerator, flag)

    def register_for_checkpointing(self, obj) -> None:
        self.accelerator.register_for_checkpointing(obj)

    def backward(self, loss) -> None:
        self.accelerator.backward(loss)

    def clip_grad_norm_(self, parameters, max_norm: float):
        return self.accelerator.clip_grad_norm_(parameters, max_norm)

    def resume(self, model) -> dict | None:
        self._checkpoints = CheckpointManager(self.run_dir / "checkpoints", self.accelerator, model, keep=self.keep)
        state = self._checkpoints.load() if self.resume_enabled else None
        if state is None:
            return None
        if state.get("base_identity") != self.base_identity:
            raise ConfigError(
                f"The checkpoint in {self._checkpoints.root} was written for base identity "
                f"{state.get('base_identity')}, not for this base ({self.base_identity}); use another output_dir "
                "or train.resume=false."
            )
        log.info("resumed from %s at step %d", self._checkpoints.latest(), state["step"])
        return state

    def start(self, total_steps: int) -> None:
        self.checkpoint_every = checkpoint_interval(self.checkpoint_every_setting, total_steps)

    def checkpoint(self, step: int, state: dict, force: bool = False) -> None:
        if force or step % self.checkpoint_every == 0:
            self._checkpoints.save(step, {"base_identity": self.base_identity, **state})

    @property
    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint of the run, ``None`` before the first."""
        return None if self._checkpoints is None else self._checkpoints.latest()

    def write_log(self, rows: list[dict], final: bool = False) -> None:
        if not self.accelerator.is_main_process:
            return
        write_csv(rows, self.run_dir / "metrics.csv")
        if final:
            plot_curves(rows, self.run_dir / "curves.png")

    def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.close()


def any_process(accelerator, flag: bool) -> bool:
    """Whether ``flag`` is true on any process of ``accelerator`` (collective: every process calls it)."""
    if accelerator.num_processes == 1:
        return bool(flag)
    import torch

    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


def shared_output_dir(accelerator, output_dir) -> Path:
    """The main process's ``output_dir``: each process resolved its own (a ``${now:...}`` may differ)."""
    if accelerator.num_processes == 1:
        return Path(output_dir)
    from accelerate.utils import broadcast_object_list

    return Path(broadcast_object_list([str(output_dir)])[0])


def describe_process(accelerator) -> str:
    """``process 0 of 2 on cpu (MULTI_CPU)``: printed at the start, so a launch that made one process shows."""
    text = f"process {accelerator.process_index} of {accelerator.num_processes} on {accelerator.device}"
    if accelerator.num_processes > 1:
        text += f" ({str(accelerator.distributed_type).split('.')[-1]})"
    return text


def make_accelerator(cpu: bool, mixed_precision: str = "no", **kwargs):
    """The ``Accelerator`` of ``adapt`` and ``distill``.

    * ``cpu``: also under ``accelerate launch --multi_gpu ... train.device=cpu`` (torchrun sets the ranks),
      ``Accelerator(cpu=True)`` is what makes the processes one gloo group; without it each would believe
      it is process 0 of 1 and write everything.
    * ``find_unused_parameters``: a step may leave trainable weights unused (point embeddings under box
      prompts, frozen parts): DDP must not wait for their gradients.
    * ``split_batches``: no dataloader goes through Accelerate here, each loop gives each process its own
      share of the step's batch; with it the scheduler steps once per optimizer step (our schedules count
      optimizer steps), not ``num_processes`` times.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True), *kwargs.pop("kwargs_handlers", [])]
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision, kwargs_handlers=handlers,
                       dataloader_config=DataLoaderConfiguration(split_batches=True), **kwargs)
