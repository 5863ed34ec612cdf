"""NF4 quality on LiteMedSAM: box-prompt Dice of fp32 vs NF4 variants on real slices.

Each variant is the bundled LiteMedSAM with some ``nn.Linear`` layers swapped for bitsandbytes NF4 layers
(``quantize_linear_layers``: which layers, which block size). The prompts are tight boxes around the ground
truth of test-split slices of ``../shared/data/cosmos_sample`` and ``cosmos_extra``; the table gives the
Dice per class (averaged over that class's slices), the class mean, the mean absolute Dice change per
object against fp32, the relative error of the image embedding, and the memory footprint.

Run from the repository root (a few minutes per variant on the 2-core CI machine; docs/quantization.md
holds the table it printed)::

    python benchmarks/nf4_quality.py --per-dataset 2 --variants fp32 nf4-aligned-all nf4-decoder-only

``--per-dataset N`` sets how many test-split slices of each dataset are used (default 3); ``--out FILE``
also writes the markdown table there. fp32 always runs first: every other row is compared with it.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from napari_qlora_minisam.masks import dice, tight_box

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
MIN_PIXELS = 50  # COSMOS: objects below 50 px in a slice are not evaluated there

# name -> (what it is, quantize_linear_layers keyword arguments); None = fp32 reference.
VARIANTS: dict[str, tuple[str, dict | None]] = {
    "fp32": ("reference, no quantization", None),
    "nf4-bs64-all": ("every Linear NF4, block 64 (bitsandbytes default; the previous default here)",
                     {"blocksize": 64}),
    "nf4-bs32-all": ("every Linear NF4, block 32", {"blocksize": 32}),
    "nf4-aligned-all": ("every Linear NF4, block 64 or 32 so blocks never straddle rows", {}),
    "nf4-aligned-keep-enc-fc2": ("aligned; encoder MLP output layers (fc2) kept fp32 = the default of "
                                 "load_model('litemedsam', quantize='nf4')", {"skip": ("image_encoder.*.mlp.fc2",)}),
    "nf4-aligned-keep-enc-mlp": ("aligned; encoder MLPs (fc1, fc2) kept fp32",
                                 {"skip": ("image_encoder.*.mlp.fc1", "image_encoder.*.mlp.fc2")}),
    "nf4-decoder-only": ("mask decoder NF4, whole image encoder fp32", {"skip": ("image_encoder.*",)}),
}


def load_slices(per_dataset: int):
    """``[(dataset, slice name, grey image, {class name: mask})]`` from the test split."""
    import imageio.v3 as iio

    splits = json.loads((DATA / "splits.json").read_text())
    out = []
    for ds, entry in sorted(splits.items()):
        root = DATA / entry["root"] / "data"
        info = json.loads((DATA / entry["root"] / "data_infor_json" / f"{ds}.json").read_text())
        names = entry["test"][:per_dataset]
        for name in names:
            image = iio.imread(root / "test_data" / ds / "images" / name)
            label = iio.imread(root / "test_data" / ds / "labels" / name)
            if image.ndim == 3:
                image = image[..., 0]
            if label.ndim == 3:
                label = label[..., 0]
            masks = {info["info"][k]: label == v for k, v in info["color"].items()}
            masks = {c: m for c, m in masks.items() if m.sum() >= MIN_PIXELS}
            if masks:
                out.append((ds, name, image, masks))
    return out


def build_variant(base_net, kwargs):
    from napari_qlora_minisam.models.litemedsam import LiteMedSamBackend
    from napari_qlora_minisam.quantization import quantize_linear_layers

    net = copy.deepcopy(base_net)
    backend = LiteMedSamBackend(net)
    if kwargs is not None:
        quantize_linear_layers(net, "cpu", **kwargs)
        backend.quantization = "nf4"
    return backend.eval()


def evaluate(backend, slices, reference_embeddings=None):
    """Dice per object and embedding error against ``reference_embeddings`` (same order as ``slices``)."""
    from napari_qlora_minisam import MiniSamPredictor

    predictor = MiniSamPredictor(backend)
    dices, embeddings, errors = [], [], []
    for i, (_ds, _name, image, masks) in enumerate(slices):
        item = predictor.set_image(image)
        embeddings.append(item.embedding)
        if reference_embeddings is not None:
            ref = reference_embeddings[i]
            errors.append(float((item.embedding - ref).norm() / ref.norm()))
        classes = list(masks)
        boxes = np.stack([tight_box(masks[c]) for c in classes])
        pred, _, _ = predictor.predict_batch(boxes=boxes, multimask=False)
        dices += [(c, dice(pred[j, 0], masks[c])) for j, c in enumerate(classes)]
    return dices, embeddings, errors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-dataset", type=int, default=3)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)

    from napari_qlora_minisam.models.litemedsam import build_litemedsam_net

    slices = load_slices(args.per_dataset)
    n_obj = sum(len(m) for *_, m in slices)
    print(f"{len(slices)} slices, {n_obj} objects", flush=True)
    base = build_litemedsam_net(pretrained=True)
    results = {}
    ref_dice = ref_emb = None
    for name in ["fp32"] + [v for v in args.variants if v != "fp32"]:
        t0 = time.perf_counter()
        backend = build_variant(base, VARIANTS[name][1])
        with torch.inference_mode():
            dices, emb, err = evaluate(backend, slices, ref_emb)
        if name == "fp32":
            ref_dice, ref_emb = dices, emb
        per_class: dict[str, list] = {}
        for c, d in dices:
            per_class.setdefault(c, []).append(d)
        delta = float(np.mean([abs(d - r) for (_, d), (_, r) in zip(dices, ref_dice)]))
        results[name] = {
            "per_class": {c: float(np.mean(v)) for c, v in per_class.items()},
            "class_mean": float(np.mean([np.mean(v) for v in per_class.values()])),
            "mean_abs_delta": delta,
            "embedding_error": float(np.mean(err)) if err else 0.0,
            "footprint_mb": backend.memory_footprint() / 1e6,
        }
        r = results[name]
        print(f"{name:28s} class mean {r['class_mean']:.3f}  |dDice| {delta:.3f}  emb err "
              f"{r['embedding_error']:.3f}  {r['footprint_mb']:.1f} MB  ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    table = format_table(results, slices)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return results


def format_table(results, slices):
    classes = list(next(iter(results.values()))["per_class"])
    head = ["variant", *classes, "class mean", "mean abs dDice vs fp32", "embedding rel. error", "footprint MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        row = [name, *(f"{r['per_class'][c]:.3f}" for c in classes), f"{r['class_mean']:.3f}",
               f"{r['mean_abs_delta']:.3f}", f"{r['embedding_error']:.3f}", f"{r['footprint_mb']:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    n_obj = sum(len(m) for *_, m in slices)
    lines.append("")
    lines.append(f"{len(slices)} test-split slices, {n_obj} objects, tight-box prompts, single mask. "
                 "Variants: " + "; ".join(f"`{k}`: {VARIANTS[k][0]}" for k in results))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
