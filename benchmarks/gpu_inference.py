"""Inference on one device as the plugin runs it: peak GPU memory and prompts per second end to end.

    python benchmarks/gpu_inference.py --models minisam litemedsam [--quantize none nf4] [--device cuda]
                                       [--prompts 200] [--out runs/gpu_check/inference.json]

For each model (and quantization): a ``MiniSamPredictor`` embeds a slice it has not seen, then decodes
``--prompts`` random box prompts one at a time, as clicks and drags in the widget do. "End to end" is
that whole sequence (embedding included) divided into prompts per second; the encoder and the decoder
are also timed alone (medians of ``--rounds`` new slices, and of every prompt after a warm-up).
Peak memory is ``torch.cuda.max_memory_allocated`` from the model's load to the last prompt.
Used by ``benchmarks/gpu_check.sh`` and ``experiments/gpu_minisam.sh``; runs on a CPU too (no memory figure).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def measure(source: str, quantize: str | None, device: str, prompts: int, rounds: int, seed: int = 0) -> dict:
    import numpy as np
    import torch

    from napari_qlora_minisam import MiniSamPredictor, load_model
    from napari_qlora_minisam._sample_data import read_sample

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    image = read_sample("heart_mri")[0].astype(np.float32)
    h, w = image.shape[:2]
    rng = np.random.default_rng(seed)
    sides = rng.integers(20, 60, size=(prompts, 2))
    corners = np.stack([rng.integers(0, w - 60, prompts), rng.integers(0, h - 60, prompts)], axis=1)
    boxes = [tuple(int(v) for v in (x, y, x + sx, y + sy)) for (x, y), (sx, sy) in zip(corners, sides)]

    predictor = MiniSamPredictor(load_model(source, quantize=quantize, device=device))
    predictor.set_image(image)
    predictor.predict(box=boxes[0], multimask=False)  # warm-up (kernel selection, first allocations)

    sync()
    t0 = time.perf_counter()
    predictor.set_image(image + 1.0)  # a slice not in the embedding cache
    for box in boxes:
        predictor.predict(box=box, multimask=False)
    sync()
    end_to_end = time.perf_counter() - t0

    encode = []
    for r in range(rounds):
        sync()
        t = time.perf_counter()
        predictor.set_image(image + 2.0 + r)
        sync()
        encode.append(time.perf_counter() - t)
    decode = []
    for box in boxes[:min(prompts, 100)]:
        sync()
        t = time.perf_counter()
        predictor.predict(box=box, multimask=False)
        sync()
        decode.append(time.perf_counter() - t)
    return {
        "model": source, "quantize": quantize or "none", "device": device,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "prompts": prompts, "end_to_end_seconds": end_to_end, "prompts_per_s": prompts / end_to_end,
        "encode_ms_median": 1000 * statistics.median(encode), "decode_ms_median": 1000 * statistics.median(decode),
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "torch": torch.__version__,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["minisam", "litemedsam"])
    ap.add_argument("--quantize", nargs="+", default=["none"], help="none and/or nf4 (nf4 needs bitsandbytes)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=10, help="new slices timed for the encoder median")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    results = []
    for source in args.models:
        for q in args.quantize:
            row = measure(source, None if q == "none" else q, args.device, args.prompts, args.rounds)
            print(json.dumps(row), flush=True)
            results.append(row)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return {"results": results}


if __name__ == "__main__":
    main()
