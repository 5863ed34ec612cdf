"""MiniSAM under quantize="nf4": box Dice of NF4 variants against fp32, on non-test slices.

    python benchmarks/minisam_nf4.py

The variants differ in the layers kept in fp32 (the shipped rule is LiteMedSAM's: the encoder's MLP output
layers, ``loading.MINISAM_FP32_LAYERS``).
The slices are the COSMOS ``adapt_train`` and ``val`` images of ``conf/splits_val.json`` (never ``test``: the
choice is made here), every labelled object prompted with its tight box. Per variant: mean Dice against the
ground truth, mean Dice between the variant's mask and fp32 MiniSAM's (how much 4-bit changes), the
number of objects whose NF4 mask is empty although fp32's is not, and the footprint. Writes its table
into docs/minisam.md (section ``minisam-nf4``) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import doc_sections  # noqa: E402 - the shared section writer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SPLITS = REPO / "src" / "minisam_train" / "conf" / "splits_val.json"
START, END = "<!-- minisam-nf4:start -->", "<!-- minisam-nf4:end -->"
# name -> layers kept fp32 (fnmatch patterns); None = the fp32 reference
VARIANTS = {
    "fp32": None,
    "nf4 (shipped)": "shipped",
    "nf4, every layer": (),
}


def non_test_slices():
    """(image, [object masks]) for every adapt_train / val image of the splits, both COSMOS roots (COSMOS's
    objects: >= 50 px per class)."""
    from minisam_train.data.cosmos import CosmosDataset
    from minisam_train.data.splits import split_images

    include = {}
    for key in ("adapt_train", "val"):
        for ds, images in split_images(SPLITS, key).items():
            include.setdefault(ds, set()).update(images)
    data = CosmosDataset([DATA / "cosmos_sample", DATA / "cosmos_extra"], include=include)
    records = [data.read(entry) for entry in data.entries]
    return [(r.image, list(r.objects.values())) for r in records if r.objects]


def load_variant(variant):
    """MiniSAM as ``load_model`` builds it, with the variant's fp32 layers."""
    from napari_qlora_minisam import load_model, loading

    if variant is None:
        return load_model("minisam", device="cpu")
    if variant == "shipped":
        return load_model("minisam", quantize="nf4", device="cpu")
    saved = loading.MINISAM_FP32_LAYERS
    loading.MINISAM_FP32_LAYERS = variant
    try:
        return load_model("minisam", quantize="nf4", device="cpu")
    finally:
        loading.MINISAM_FP32_LAYERS = saved


def run(variants) -> list[dict]:
    from napari_qlora_minisam import MiniSamPredictor
    from napari_qlora_minisam.masks import dice, tight_box

    warnings.simplefilter("ignore")
    slices = non_test_slices()
    reference, rows = None, []
    for name in ["fp32", *[v for v in variants if v != "fp32"]]:
        variant = VARIANTS[name]
        backend = load_variant(variant)
        from napari_qlora_minisam.loading import MINISAM_FP32_LAYERS

        keep = MINISAM_FP32_LAYERS if variant == "shipped" else variant
        predictor = MiniSamPredictor(backend)
        masks = []
        for image, objects in slices:
            predictor.set_image(image)
            masks += [(predictor.predict(box=tight_box(m), multimask=False)[0][0], m) for m in objects]
        if reference is None:
            reference = [m for m, _ in masks]
        rows.append({"variant": name, "fp32_layers": "all" if keep is None else (
            ", ".join(f"`{k}`" for k in keep) if keep else "none"),
                     "objects": len(masks), "dice_gt": float(np.mean([dice(m, g) for m, g in masks])),
                     "dice_vs_fp32": float(np.mean([dice(m, r) for (m, _), r in zip(masks, reference)])),
                     "emptied": int(sum(1 for (m, _), r in zip(masks, reference) if r.any() and not m.any())),
                     "footprint_mib": backend.memory_footprint() / 2**20})
        print(rows[-1], flush=True)
    return rows


def table(rows) -> str:
    lines = ["| variant | kept in fp32 | box Dice (ground truth) | Dice against fp32's masks | masks emptied | "
             "footprint |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['variant']}` | {r['fp32_layers']} | {r['dice_gt']:.3f} | {r['dice_vs_fp32']:.3f} | "
                     f"{r['emptied']} of {r['objects']} | {r['footprint_mib']:.1f} MiB |")
    return ("Command: `python benchmarks/minisam_nf4.py`: the COSMOS `adapt_train` and `val` images of "
            "`conf/splits_val.json` (not `test`), a tight box per labelled object.\n\n" + "\n".join(lines))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    text = table(run(args.variants))
    print(text)
    if not args.no_write:
        doc_sections.write_section(REPO / "docs" / "minisam.md", text, START, END, title="# MiniSAM")


if __name__ == "__main__":
    main()
