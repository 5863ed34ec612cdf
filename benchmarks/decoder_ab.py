"""Interleaved A/B of the fast mask decoder against its version at an earlier git revision.

    python benchmarks/decoder_ab.py --baseline 8b45e73      # the decoder before the final-attention trim

Both decoders run on the same LiteMedSAM weights and the same cached embedding of the shipped heart MRI
slice, for the LV box, as the widget's previews decode it (single mask, the box window) and for the whole
grid. Rounds alternate between them, so drift of this VM's speed hits both alike; each figure is the median
over rounds of the median of 10 calls. The masks of both must agree (the script stops otherwise).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MODULE = "src/napari_qlora_minisam/models/fast_decoder.py"


def load_baseline(rev: str):
    """The fast_decoder module as it was at ``rev``, imported beside the current one."""
    source = subprocess.run(["git", "show", f"{rev}:{MODULE}"], cwd=REPO, check=True, capture_output=True,
                            text=True).stdout
    name = "napari_qlora_minisam.models._fast_decoder_baseline"
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "napari_qlora_minisam.models"  # its relative imports resolve to today's package
    exec(compile(source, f"{rev}:{MODULE}", "exec"), mod.__dict__)
    return mod


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="git revision of the decoder to compare against")
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args(argv)

    from napari_qlora_minisam import MiniSamPredictor, load_model
    from napari_qlora_minisam._sample_data import heart_mri
    from napari_qlora_minisam.models.fast_decoder import FastSamDecoder
    from napari_qlora_minisam.predictor import box_window
    from napari_qlora_minisam.transforms import scale_boxes

    (image, _, _), (labels, _, _) = heart_mri()[:2]  # (data, kwargs, kind) each
    model = load_model("litemedsam", device="cpu")
    pred = MiniSamPredictor(model)
    pred.set_image(image)
    ys, xs = np.nonzero(labels == 1)  # the left ventricle
    box = np.array([[xs.min(), ys.min(), xs.max(), ys.max()]], np.float32)
    item = pred._current
    size = model.spec.image_size
    t_box = torch.from_numpy(scale_boxes(box, item.original_hw, size))
    window = box_window(t_box[0].numpy(), size / item.embedding.shape[-1])
    pe, md = model.net.prompt_encoder, model.net.mask_decoder
    decoders = {"baseline " + args.baseline: load_baseline(args.baseline).FastSamDecoder(pe, md),
                "current": FastSamDecoder(pe, md)}
    cases = {"box window (widget preview)": window, "whole grid": None}
    times = {(d, c): [] for d in decoders for c in cases}
    with torch.inference_mode():
        for case, win in cases.items():
            masks = [dec(item.embedding, None, None, t_box, None, False, win)[0] for dec in decoders.values()]
            if not torch.allclose(masks[0], masks[1], atol=1e-4):
                raise SystemExit(f"{case}: the two decoders disagree; not a like-for-like comparison")
        for _ in range(args.rounds):
            for case, win in cases.items():
                for name, dec in decoders.items():
                    calls = []
                    for _ in range(10):
                        t0 = time.perf_counter()
                        dec(item.embedding, None, None, t_box, None, False, win)
                        calls.append(time.perf_counter() - t0)
                    times[(name, case)].append(statistics.median(calls))
    print(f"LiteMedSAM box decode on the heart slice, {torch.get_num_threads()} torch threads, "
          f"median of {args.rounds} interleaved rounds of 10 calls")
    print("| decoder | " + " | ".join(cases) + " |\n|---|" + "---|" * len(cases))
    for name in decoders:
        print(f"| {name} | " + " | ".join(f"{1e3 * statistics.median(times[(name, c)]):.2f} ms" for c in cases) + " |")


if __name__ == "__main__":
    sys.exit(main())
