"""Speed and memory of a model, measured during the evaluation run itself.

Encoder time is the wall time of ``MiniSamPredictor.set_image`` on an image not seen before (preprocessing +
encoder: what a user waits for when a slice is first shown). Decoder time is the wall time of one batched
decoder call (prompt encoder + mask decoder + upsampling to the original size) divided by the number of
prompts in the batch. Peak RSS is the process's high-water mark (``getrusage``), so for the second model of a
run it can only grow: compare models in separate runs when RSS matters. Peak VRAM is reset per model.

Every row also says when and where it was measured: ``invocation`` (one id per ``minisam-train eval``
command; a resumed run times only the models it still had to run, so rows of one ``efficiency.csv`` can come
from different invocations and only rows of one invocation are compared as ratios), the machine's 1-minute
load average while the model was timed (mean of one sample per timed image; it includes this process's own
threads), the CPUs this process may use, the torch thread count and the device's name.

Throughput: ``slices`` scored by the model in this process, the wall time ``wall_s`` of its loop (from the
first slice to the last, model loading left out; ``started_unix`` / ``finished_unix`` bound it) and
``slices_per_s``. Under ``accelerate launch`` each process writes its own row (``process`` = its rank,
``processes`` = N) and the main process adds one ``process = all`` row per model (:func:`aggregate_row`):
all slices over the wall time from the first process's start to the last one's end.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

EFFICIENCY_COLUMNS = (
    "model", "device", "parameters", "memory_footprint_mb", "encoder_ms_per_image", "decoder_ms_per_prompt",
    "peak_rss_mb", "peak_vram_mb", "images_timed", "prompts_timed",
    "invocation", "load_avg_1min", "cpu_count", "torch_threads", "device_name",
    "processes", "process", "slices", "wall_s", "slices_per_s", "started_unix", "finished_unix",
)
AGGREGATE = "all"  # ``process`` of the row that sums the processes of one invocation


def new_invocation_id() -> str:
    """``2026-12-04T10:19:03-1a2b3c``: start time of an eval command plus a random tag (unique per command)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S") + "-" + uuid.uuid4().hex[:6]


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return None


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def device_name(device) -> str:
    """The GPU's name, or the CPU model (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def peak_rss_mb() -> float:
    """High-water resident memory of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class ModelTimer:
    """Collects encoder and decoder timings of one model."""

    device: str = "cpu"
    invocation: str = ""
    encoder_s: list = field(default_factory=list)
    decoder_s: float = 0.0
    prompts: int = 0
    load_samples: list = field(default_factory=list)
    process: int = 0
    processes: int = 1
    slices: int = 0
    started: float | None = None
    finished: float | None = None

    def start(self) -> None:
        if torch.device(self.device).type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.started = time.time()

    def finish(self) -> None:
        """End of the model's loop (the wall time of :meth:`row` runs from :meth:`start` to here)."""
        _sync(self.device)
        self.finished = time.time()

    @contextmanager
    def encoder(self):
        _sync(self.device)
        t0 = time.perf_counter()
        yield
        _sync(self.device)
        self.encoder_s.append(time.perf_counter() - t0)
        load = load_average()
        if load is not None:
            self.load_samples.append(load)

    def discard_last_encoder(self) -> None:
        """Forget the last encoder timing (the image was served from the embedding cache)."""
        self.encoder_s.pop()
        if self.load_samples:
            self.load_samples.pop()

    @contextmanager
    def decoder(self, n_prompts: int):
        _sync(self.device)
        t0 = time.perf_counter()
        yield
        _sync(self.device)
        self.decoder_s += time.perf_counter() - t0
        self.prompts += int(n_prompts)

    def row(self, name: str, backend) -> dict:
        """One ``efficiency.csv`` row (median encoder time: robust to the first, warm-up image)."""
        vram = None
        if torch.device(self.device).type == "cuda":
            vram = torch.cuda.max_memory_allocated(self.device) / 2**20
        return {
            "model": name,
            "device": str(self.device),
            "parameters": int(backend.num_parameters()),
            "memory_footprint_mb": round(backend.memory_footprint() / 2**20, 2),
            "encoder_ms_per_image": round(1e3 * statistics.median(self.encoder_s), 1) if self.encoder_s else None,
            "decoder_ms_per_prompt": round(1e3 * self.decoder_s / self.prompts, 2) if self.prompts else None,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "peak_vram_mb": round(vram, 1) if vram is not None else None,
            "images_timed": len(self.encoder_s),
            "prompts_timed": self.prompts,
            "invocation": self.invocation,
            "load_avg_1min": round(statistics.fmean(self.load_samples), 2) if self.load_samples else None,
            "cpu_count": cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device_name": device_name(self.device),
            **throughput(self.slices, self.started, self.finished if self.finished is not None else time.time()),
            "processes": self.processes,
            "process": self.process,
        }


def throughput(slices: int, started: float | None, finished: float | None) -> dict:
    """``slices``, ``wall_s``, ``slices_per_s``, ``started_unix``, ``finished_unix`` of one loop."""
    # The wall time is taken from the rounded ends that are written, so the ``all`` row (latest end minus
    # earliest start of those) is never shorter than a process's own.
    started = None if started is None else round(started, 3)
    finished = None if finished is None else round(finished, 3)
    wall = None if started is None or finished is None else max(0.0, round(finished - started, 3))
    return {"slices": int(slices), "wall_s": wall,
            "slices_per_s": round(slices / wall, 4) if wall else None,
            "started_unix": started, "finished_unix": finished}


def _num(r: dict, key: str):
    try:
        return float(r[key])
    except (TypeError, ValueError, KeyError):
        return None


def aggregate_row(rows: list[dict]) -> dict:
    """One model's ``process = all`` row from its per-process rows of one invocation.

    Sums: slices, images and prompts timed. Throughput: all slices over the wall time from the earliest
    start to the latest end. Encoder ms per image: the processes' medians weighted by their images (the
    median of all images is not known without the single times); decoder ms per prompt: the exact mean over
    all prompts. Peak RSS / VRAM: the largest process's. Load average: the processes' mean.
    """
    first = rows[0]

    def total(key):
        return int(sum(_num(r, key) or 0 for r in rows))

    def weighted(key, weight):
        pairs = [(_num(r, key), _num(r, weight) or 0) for r in rows if _num(r, key) is not None]
        w = sum(n for _, n in pairs)
        return round(sum(v * n for v, n in pairs) / w, 2) if w else None

    def largest(key):
        vals = [v for v in (_num(r, key) for r in rows) if v is not None]
        return max(vals) if vals else None

    loads = [v for v in (_num(r, "load_avg_1min") for r in rows) if v is not None]
    starts = [v for v in (_num(r, "started_unix") for r in rows) if v is not None]
    ends = [v for v in (_num(r, "finished_unix") for r in rows) if v is not None]
    kinds = sorted({str(r.get("device", "")).split(":")[0] for r in rows})
    threads = {str(r.get("torch_threads", "")) for r in rows}
    return {
        "model": first["model"], "device": f"{'/'.join(kinds)} x{len(rows)}",
        "parameters": first.get("parameters"), "memory_footprint_mb": first.get("memory_footprint_mb"),
        "encoder_ms_per_image": weighted("encoder_ms_per_image", "images_timed"),
        "decoder_ms_per_prompt": weighted("decoder_ms_per_prompt", "prompts_timed"),
        "peak_rss_mb": largest("peak_rss_mb"), "peak_vram_mb": largest("peak_vram_mb"),
        "images_timed": total("images_timed"), "prompts_timed": total("prompts_timed"),
        "invocation": first.get("invocation"),
        "load_avg_1min": round(statistics.fmean(loads), 2) if loads else None,
        "cpu_count": first.get("cpu_count"), "torch_threads": threads.pop() if len(threads) == 1 else None,
        "device_name": first.get("device_name"),
        **throughput(total("slices"), min(starts) if starts else None, max(ends) if ends else None),
        "processes": first.get("processes") or len(rows), "process": AGGREGATE,
    }
