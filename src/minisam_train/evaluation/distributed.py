"""Which process am I: one ``minisam-train eval`` split over processes started by ``accelerate launch``.

A plain command (no launcher) is process 0 of 1 and touches nothing distributed. Under
``accelerate launch --num_processes N`` (torchrun underneath: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
``LOCAL_WORLD_SIZE`` in the environment), :func:`start` joins the processes through Accelerate's
``PartialState``. They only exchange control messages (the output folder and invocation id of the main
process, and "everyone is done"), so the process group always uses the gloo backend over TCP, also on GPUs:
no GPU memory for communicators, and a long wait for the slowest process is not cut short by NCCL's
watchdog (:data:`WAIT_TIMEOUT`). Each process runs its model on its own device (:func:`process_device`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

log = logging.getLogger(__name__)

# How long a process may wait for the others (the main process waits for the slowest one before merging).
WAIT_TIMEOUT = timedelta(days=7)


@dataclass
class Processes:
    """This process's place among the processes of one evaluation (defaults: a single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    state: object = None  # accelerate.PartialState when launched

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process got here."""
        if self.world > 1:
            self.state.wait_for_everyone()

    def share(self, value):
        """The main process's ``value`` (any picklable object), in every process."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def launched_world_size() -> int:
    """``WORLD_SIZE`` as a launcher (torchrun, MPI) set it; 1 for a plain command."""
    for var in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 1


def launched_by_accelerate() -> bool:
    """Whether ``accelerate launch`` started this process (it always sets ``ACCELERATE_MIXED_PRECISION``)."""
    return "ACCELERATE_MIXED_PRECISION" in os.environ


def start() -> Processes:
    """Join the other processes of a launched run (gloo process group); a single process otherwise."""
    if launched_world_size() <= 1:
        return Processes()
    from accelerate import PartialState

    state = PartialState(cpu=True, backend="gloo", timeout=WAIT_TIMEOUT)
    world = int(state.num_processes)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE") or 0) or world
    return Processes(int(state.process_index), world, int(state.local_process_index), local_world, state)


def process_device(device: str, procs: Processes) -> str:
    """The device this process runs its model on.

    With several processes, ``auto`` and ``cuda`` mean the process's own GPU, ``cuda:<local rank>`` (one
    process per GPU), and ``auto`` means ``cpu`` where there is no GPU. A single process keeps ``device`` as
    it is (``auto`` then picks the first GPU if there is one, else the CPU, as ``load_model`` does).
    """
    device = str(device or "auto")
    if procs.world == 1 or device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        if device == "cuda":
            return device  # load_model says that CUDA is not available
        return "cpu"
    count = torch.cuda.device_count()
    if procs.local_world > count:
        log.warning("%d processes on this machine share %d GPU(s): process %d uses cuda:%d",
                    procs.local_world, count, procs.rank, procs.local_rank % count)
    index = procs.local_rank % count
    torch.cuda.set_device(index)
    return f"cuda:{index}"


def choose_threads(threads, device: str, procs: Processes, cores: int) -> int | None:
    """Torch's CPU thread count for this process, or None to leave torch's default alone.

    ``threads`` (the ``threads`` setting) wins when given. Otherwise a plain command keeps torch's default
    (all cores, or ``OMP_NUM_THREADS``), and each process that ``accelerate launch`` started on the CPU gets
    ``max(1, cores // processes on this machine)``, unless ``OMP_NUM_THREADS`` asks for more than 1
    (``accelerate launch`` sets it to 1 whenever it is not given, so 1 cannot tell a choice from the default).
    Processes on GPUs keep torch's default.
    """
    if threads not in (None, "", "null"):
        from ..errors import ConfigError

        try:
            n = int(threads)
        except (TypeError, ValueError):
            n = 0
        if n < 1:
            raise ConfigError(f"threads={threads!r}: give a thread count >= 1, or null for the default")
        return n
    if (procs.world == 1 and not launched_by_accelerate()) or not str(device).startswith("cpu"):
        return None
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 1:
        return int(omp)
    return max(1, cores // max(1, procs.local_world))
