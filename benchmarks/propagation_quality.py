"""3D propagation quality: from one committed middle slice, how well does the object come out?

For each shared tumour volume (``shared/data/volumes``: lung1, lung2 CT; brain1, brain2 MRI) the ground-truth
mask of the object's middle slice stands for the committed slice; the plugin's propagation runs both ways
from it (``volume.propagate`` with the stack, so every stop rule applies) and each slice is scored:

* **Dice (object)**: mean Dice over the slices holding the object in the ground truth (the issue's target);
* **Dice (all)**: mean over those and every slice the propagation wrongly continued into (a leak scores 0);
* **leaks**: slices given a mask where the ground truth has none; **lost**: object slices left empty.

Variants: the neighbour prompt (``box``: today's, box of the neighbour mask + 10 %; ``+mask``: that mask as
``mask_input``; ``+point``: a click at its most interior pixel), on LiteMedSAM fp32 without adapter
(today's recipe) and on the NF4 base with the shipped adapter of the modality (``ct`` / ``mri``). The default
is chosen on the volumes outside the test split (lung1, brain1: their slices are ``adapt_train`` in
``splits.json``); lung2 and brain2 (``test``) are reported once. Note that the shipped adapters were trained
on a few slices of lung1 / brain1, so their figures on those two volumes are optimistic.

    python benchmarks/propagation_quality.py            # prints the table, writes docs/plugin.md's section
    python benchmarks/propagation_quality.py --no-write --volumes lung1 --models fp32
    python benchmarks/propagation_quality.py --from-json benchmarks/propagation_quality.json  # table only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import doc_sections  # noqa: E402 - the shared section writer

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MINISAM_SHARED_DATA", REPO.parent / "shared" / "data"))
DOC = REPO / "docs" / "plugin.md"
START, END = "<!-- propagation-quality:start -->", "<!-- propagation-quality:end -->"
VOLUMES = ("lung1", "brain1", "lung2", "brain2")
TEST = {"lung2", "brain2"}  # splits.json: their slices are in the test split
PROMPTS = ("box", "box+mask", "box+point", "box+mask+point")
FADE = 0.1  # the opt-in "faded out" rule: StopRules(min_start_fraction=FADE)


def read_volume(name: str):
    import tifffile

    meta = json.loads((DATA / "volumes" / "volumes.json").read_text())[name]
    image = tifffile.imread(DATA / "volumes" / f"{name}_image.tif")
    label = tifffile.imread(DATA / "volumes" / f"{name}_label.tif") > 0
    return image, label, meta["modality"]


def score(pred: np.ndarray, gt: np.ndarray) -> dict:
    from napari_qlora_minisam.masks import dice

    obj = np.nonzero(gt.any(axis=(1, 2)))[0]
    got = np.nonzero(pred.any(axis=(1, 2)))[0]
    leaks = sorted(set(got.tolist()) - set(obj.tolist()))
    per = {int(z): dice(pred[z], gt[z]) for z in sorted(set(obj.tolist()) | set(leaks))}
    return {"dice_object": float(np.mean([per[z] for z in obj])), "dice_all": float(np.mean(list(per.values()))),
            "leaks": leaks, "lost": [int(z) for z in obj if not pred[z].any()],
            "per_slice": {z: round(d, 3) for z, d in per.items()}}


def run_one(predictor, image, gt, prompt: str, rules=None) -> dict:
    from napari_qlora_minisam.volume import SliceSegmenter, StopRules, propagate, run_propagation

    zs = np.nonzero(gt.any(axis=(1, 2)))[0]
    mid = int(zs[len(zs) // 2])
    pred = np.zeros_like(gt)
    pred[mid] = gt[mid]
    segmenter = SliceSegmenter(predictor, image)
    steps, result = run_propagation(propagate(segmenter, mid, gt[mid], len(image), stack=image, prompt=prompt,
                                              rules=rules or StopRules()))
    for s in steps:
        pred[s.z] = s.mask
    out = score(pred, gt)
    out["start"] = mid
    out["stopped"] = {("up" if d > 0 else "down"): why for d, why in result.stopped.items()}
    return out


def load(kind: str, modality: str):
    from napari_qlora_minisam import load_model
    from napari_qlora_minisam.adapters import pretrained_adapters_dir

    if kind == "fp32":
        return load_model("litemedsam", device="cpu")
    return load_model("litemedsam", quantize="nf4", device="cpu", adapters=[pretrained_adapters_dir() / modality])


def table(rows: list[dict]) -> str:
    lines = ["| volume | split | model | neighbour prompt | stop rules | Dice (object) | Dice (all) | leaks | lost |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['volume']} | {r['split']} | {r['model']} | {r['prompt']} | {r['rules']} | "
                     f"{r['dice_object']:.3f} | {r['dice_all']:.3f} | {len(r['leaks'])} | {len(r['lost'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--volumes", nargs="+", default=list(VOLUMES))
    ap.add_argument("--models", nargs="+", default=["fp32", "adapter"], choices=["fp32", "adapter"])
    ap.add_argument("--prompts", nargs="+", default=list(PROMPTS))
    ap.add_argument("--fade", nargs="+", type=float, default=[0.0, FADE],
                    help="StopRules.min_start_fraction values (0: today's rules)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "propagation_quality.json", help="also write every row (per-slice Dice, stop reasons)")
    ap.add_argument("--from-json", type=Path, default=None, help="rows of an earlier run: only write the table")
    args = ap.parse_args(argv)
    if args.from_json:
        text = table(json.loads(args.from_json.read_text()))
        print(text)
        if not args.no_write:
            doc_sections.write_section(DOC, text, START, END)
        return 0

    import torch

    from napari_qlora_minisam import MiniSamPredictor
    from napari_qlora_minisam.volume import StopRules

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rows, t0 = [], time.time()
    models = {}
    for kind in args.models:
        for name in args.volumes:
            image, gt, modality = read_volume(name)
            key = (kind, None if kind == "fp32" else modality)
            if key not in models:
                models.clear()  # one model (and its embeddings) at a time: memory
                models[key] = MiniSamPredictor(load(kind, modality))
            predictor = models[key]
            label = "LiteMedSAM fp32" if kind == "fp32" else f"NF4 + {modality} adapter"
            for prompt, fade in [(p, f) for f in args.fade for p in args.prompts]:
                t = time.time()
                r = run_one(predictor, image, gt, prompt, StopRules(min_start_fraction=fade))
                r.update(volume=name, split="test" if name in TEST else "non-test", model=label, prompt=prompt,
                         rules="today's" if fade == 0 else f"+ fade < {fade:g}", seconds=round(time.time() - t, 1))
                rows.append(r)
                print(f"{name:7s} {label:18s} {prompt:15s} {r['rules']:12s} object {r['dice_object']:.3f} "
                      f"all {r['dice_all']:.3f} leaks {r['leaks']} lost {r['lost']} {r['per_slice']} {r['stopped']} ({r['seconds']} s)",
                      flush=True)
    text = table(rows)
    print(text)
    print(f"total {time.time() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if not args.no_write:
        doc_sections.write_section(DOC, text, START, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
