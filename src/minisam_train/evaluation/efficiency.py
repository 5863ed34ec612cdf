"""Speed and memory of a model, measured during the evaluation run itself.

Encoder time is the wall time of ``MiniSamPredictor.set_image`` on an image not seen before (preprocessing +
encoder: what a user waits for when a slice is first shown). Decoder time is the wall time of one batched
decoder call (prompt encoder + mask decoder + upsampling to the original size) divided by the number of
prompts in the batch. Peak RSS is the process's high-water mark (``getrusage``), so for the second model of a
run it can only grow: compare models in separate runs when RSS matters. Peak VRAM is reset per model.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

EFFICIENCY_COLUMNS = (
    "model", "device", "parameters", "memory_footprint_mb", "encoder_ms_per_image", "decoder_ms_per_prompt",
    "peak_rss_mb", "peak_vram_mb", "images_timed", "prompts_timed",
)


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
    encoder_s: list = field(default_factory=list)
    decoder_s: float = 0.0
    prompts: int = 0

    def start(self) -> None:
        if torch.device(self.device).type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    @contextmanager
    def encoder(self):
        _sync(self.device)
        t0 = time.perf_counter()
        yield
        _sync(self.device)
        self.encoder_s.append(time.perf_counter() - t0)

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
        }
