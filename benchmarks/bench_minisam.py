"""MiniSAM against LiteMedSAM in one interleaved run: encoder per slice, decoder per prompt, size, MACs.

    python benchmarks/bench_minisam.py [--student minisam] [--rounds 10] [--no-write]

Both models load in this process with their default CPU paths (each encoder as an exported graph under
OpenVINO, ``models/onnx_engine.py``; both decoders, LiteMedSAM's network and MiniSAM's cut copy of it, through
the fast decoder; the run records which encoder path each model used). Each round encodes the next real slice
with one model, then the other, then decodes its boxes one prompt at a time with each, so load from other
processes slows both alike: the decoder's per-image work (``prepare_decoder``, which the predictor runs when it
sets an image), then each box on the whole grid and around the box (``predictor.box_window``, as the plugin
decodes a box), then a click at the box's centre (three masks) on the whole grid and around the click
(``predictor.click_window``). Figures are medians over the rounds (after one warm-up round). MACs come from
``benchmarks/model_flops.py`` (multiply-accumulates, attention counted from its formula). Writes the table
into docs/minisam.md and docs/benchmarks.md (section "MiniSAM"), unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import doc_sections  # noqa: E402 - the shared section writer

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- minisam-speed:start -->", "<!-- minisam-speed:end -->"


def measure(teacher_name: str, student_name: str, rounds: int) -> dict:
    import torch

    from bench_core import load_slices
    from napari_qlora_minisam import load_model
    from napari_qlora_minisam.predictor import box_window, click_window
    from napari_qlora_minisam.transforms import prepare_image, scale_boxes

    warnings.simplefilter("ignore")
    models = {"teacher": load_model(teacher_name, device="cpu"), "student": load_model(student_name, device="cpu")}
    slices = load_slices()
    enc = {k: [] for k in models}
    dec = {k: [] for k in models}
    win = {k: [] for k in models}
    clicks = {k: [] for k in models}
    clicks_win = {k: [] for k in models}
    image_work = {k: [] for k in models}
    with torch.inference_mode():
        for r in range(rounds + 1):
            image, boxes = slices[r % len(slices)]
            for name, backend in models.items():
                pixels, hw, _ = prepare_image(image, backend.spec)
                t0 = time.perf_counter()
                emb = backend.encode(pixels)
                t1 = time.perf_counter()
                prompts = torch.from_numpy(scale_boxes(boxes, hw, backend.spec.image_size))
                t2 = time.perf_counter()  # as the predictor does when it sets an image
                backend.prepare_decoder(emb)
                image_s = time.perf_counter() - t2
                times, windowed = [], []
                for box in prompts:
                    t2 = time.perf_counter()
                    backend.decode(emb, boxes=box[None], multimask=False)
                    times.append(time.perf_counter() - t2)
                    cell = backend.spec.image_size / emb.shape[-1]
                    window = box_window(box.numpy(), cell)
                    t2 = time.perf_counter()
                    backend.decode(emb, boxes=box[None], multimask=False, window=window)
                    windowed.append(time.perf_counter() - t2)
                    # a click at the box's centre, three masks, as the plugin decodes a lone click
                    point = ((box[:2] + box[2:]) / 2).view(1, 1, 2)
                    label = torch.ones(1, 1, dtype=torch.int64)
                    for out, kw in ((clicks, {}), (clicks_win, {"window": click_window(point[0].numpy(), cell)})):
                        t2 = time.perf_counter()
                        backend.decode(emb, point, label, multimask=True, **kw)
                        if r:
                            out[name].append(time.perf_counter() - t2)
                if r:  # round 0 warms up
                    enc[name].append(t1 - t0)
                    dec[name].extend(times)
                    win[name].extend(windowed)
                    image_work[name].append(image_s)
    out = {"teacher": teacher_name, "student": student_name, "rounds": rounds, "threads": torch.get_num_threads(),
           "load_before": os.getloadavg()[0]}
    for name, backend in models.items():
        out[name] = {"encoder_s": statistics.median(enc[name]), "decoder_ms": 1000 * statistics.median(dec[name]),
                     "decoder_window_ms": 1000 * statistics.median(win[name]),
                     "click_ms": 1000 * statistics.median(clicks[name]),
                     "click_window_ms": 1000 * statistics.median(clicks_win[name]),
                     "decoder_image_ms": 1000 * statistics.median(image_work[name]),
                     "decoder_calls": len(dec[name]), "parameters": backend.num_parameters(),
                     "footprint_bytes": backend.memory_footprint()}
    for name, backend in models.items():
        engine = getattr(backend, "encoder_engine", None)
        out[f"{name}_encoder"] = (f"exported graph under {backend.encoder_runtime}"
                                  if engine is not None and engine() is not None else "PyTorch")
    out["encoder_speedup"] = out["teacher"]["encoder_s"] / out["student"]["encoder_s"]
    out["footprint_ratio"] = out["student"]["footprint_bytes"] / out["teacher"]["footprint_bytes"]
    return out


def macs(name: str) -> float:
    import model_flops

    return model_flops.count(name)["macs"] / 1e9


def table(r: dict) -> str:
    t, s = r["teacher"], r["student"]
    rows = [
        "| | LiteMedSAM (fp32) | MiniSAM | ratio | target |",
        "|---|---|---|---|---|",
        f"| encoder per 256² slice | {t['encoder_s']:.3f} s | **{s['encoder_s']:.3f} s** | "
        f"**{r['encoder_speedup']:.2f}× faster** | ≥ 2.5× faster, ≤ 0.3 s |",
        f"| decoder's per-image work, done with the embedding | {t['decoder_image_ms']:.1f} ms | "
        f"{s['decoder_image_ms']:.1f} ms | | |",
        f"| decoder per box prompt, whole grid | {t['decoder_ms']:.1f} ms | **{s['decoder_ms']:.1f} ms** | | ≤ 20 ms |",
        f"| decoder per box prompt, around the box (as the plugin decodes boxes) | {t['decoder_window_ms']:.1f} ms | "
        f"**{s['decoder_window_ms']:.1f} ms** | | ≤ 20 ms |",
        f"| decoder per click (three masks), whole grid | {t['click_ms']:.1f} ms | **{s['click_ms']:.1f} ms** | | "
        "≤ 20 ms |",
        f"| decoder per click (three masks), around the click (as the plugin decodes clicks) | "
        f"{t['click_window_ms']:.1f} ms | **{s['click_window_ms']:.1f} ms** | | ≤ 20 ms |",
        f"| encoder GMACs (multiply-accumulates) | {r['teacher_gmacs']:.1f} | **{r['student_gmacs']:.1f}** | "
        f"{r['student_gmacs'] / r['teacher_gmacs']:.2f} | ≤ 10 |",
        f"| parameters | {t['parameters'] / 1e6:.2f} M | {s['parameters'] / 1e6:.2f} M | "
        f"{s['parameters'] / t['parameters']:.2f} | |",
        f"| footprint (weights + buffers, fp32 in memory) | {t['footprint_bytes'] / 2**20:.1f} MiB | "
        f"{s['footprint_bytes'] / 2**20:.1f} MiB | **{r['footprint_ratio']:.2f}** | ≤ 0.6 |",
    ]
    note = (f"\nCommand: `python benchmarks/bench_minisam.py`. One process, {r['threads']} torch threads, the two "
            f"models interleaved slice by slice over {r['rounds']} real COSMOS slices (medians; "
            f"{t['decoder_calls']} box prompts each, decoded on the whole grid and around the box, and as many clicks "
            "at their centres, after the decoder's per-image work that the predictor does when it sets an image); "
            f"1-minute load average {r['load_before']:.2f} before the run. "
            f"Encoders: LiteMedSAM's {r['teacher_encoder']}, MiniSAM's {r['student_encoder']}; both decoders run "
            "`models/fast_decoder.py`.")
    return "\n".join(rows) + "\n" + note


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="litemedsam")
    ap.add_argument("--student", default="minisam")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    result = measure(args.teacher, args.student, args.rounds)
    result["teacher_gmacs"], result["student_gmacs"] = macs(args.teacher), macs(args.student)
    text = table(result)
    print(text)
    print(json.dumps(result, indent=1))
    if not args.no_write:
        (REPO / "benchmarks" / "bench_minisam.json").write_text(json.dumps(result, indent=1) + "\n")
        for doc in (REPO / "docs" / "minisam.md", REPO / "docs" / "benchmarks.md"):
            doc_sections.write_section(doc, "### MiniSAM against LiteMedSAM\n\n" + text, START, END,
                                       title="# MiniSAM")


if __name__ == "__main__":
    main()
