"""3D propagation quality: from one committed middle slice, how well does the object come out?

For each shared tumour volume (``shared/data/volumes``: lung1, lung2 CT; brain1, brain2 MRI) the ground-truth
mask of the object's middle slice stands for the committed slice; the plugin's propagation runs both ways
from it (``volume.propagate`` with the stack, so every stop rule applies) and each slice is scored:

* **Dice (object)**: mean Dice over the slices holding the object in the ground truth (the issue's target);
* **Dice (all)**: mean over those and every slice the propagation wrongly continued into (a leak scores 0);
* **leaks**: slices given a mask where the ground truth has none; **lost**: object slices left empty.

Variants: the neighbour prompt (``box``: the generic ``volume.propagate``'s, box of the neighbour mask + 10 %;
``+mask``: that mask as ``mask_input``; ``+point``: a click at its most interior pixel; ``point``: that click
alone, no box, run for the adapted models only), the opt-in fade stop rule, and the opt-in trim of each written mask to the committed object's intensity range (``propagate(trim=True)``), on four
models (``--models``): LiteMedSAM fp32 without adapter, its NF4 base with the shipped adapter of the
modality (``ct`` / ``mri``), and the same two for MiniSAM (``minisam``, ``minisam-adapter``: its NF4 base with
``minisam-ct`` / ``minisam-mri``). Each model's default neighbour prompt is ``volume.default_neighbour_prompt``;
the defaults are chosen on the volumes outside the test split (lung1, brain1: their slices
are ``adapt_train`` in ``splits.json``); lung2 and brain2 (``test``) are reported once. Note that the shipped
CT adapters were trained on a few slices of lung1 and MiniSAM's MRI adapter on brain1's, so their figures
there are optimistic (LiteMedSAM's MRI adapter saw only cardiac slices: ``pretrained_adapters/*/minisam_adapter.json``
list the data).

Two ceilings use the ground truth of every slice: **oracle box**, each object slice prompted with the tight
box of its own true mask (what the model gives when the box is right: a recipe that ends in the model's mask
of a box cannot expect more), and **true neighbour**, each slice prompted as propagation would (default
neighbour prompt) but from its neighbour's *true* mask, so no error carries over from slice to slice (a recipe
that prompts each slice from its neighbour cannot expect more). In both the committed slice counts as 1.0, as
in the propagation rows.

``sample`` is the plugin's bundled chest CT (``lung_ct_volume``, a crop of lung2 around the tumour), committed
as a user of the widget would: the model's mask of the reference box on the middle tumour slice (scored like
any other slice), then the default prompt with the default stop rules and with the fade rule; it checks whether the
propagation shown in docs/images/plugin_propagation.png leaks.

    python benchmarks/propagation_quality.py            # prints the table, writes docs/plugin.md's section
    python benchmarks/propagation_quality.py --no-write --volumes lung1 --models fp32
    python benchmarks/propagation_quality.py --from-json benchmarks/propagation_quality.json  # table only
    python benchmarks/propagation_quality.py --models minisam minisam-adapter --update  # rerun those rows
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
DEFAULT_JSON = REPO / "benchmarks" / "propagation_quality.json"
START, END = "<!-- propagation-quality:start -->", "<!-- propagation-quality:end -->"
SAMPLE = "sample"  # the bundled chest CT (module docstring)
VOLUMES = ("lung1", "brain1", "lung2", "brain2", SAMPLE)
TEST = {"lung2", "brain2"}  # splits.json: their slices are in the test split
PROMPTS = ("box", "box+mask", "box+point", "box+mask+point", "point")
FADE = 0.1  # the opt-in "faded out" rule: StopRules(min_start_fraction=FADE)
TARGET = 0.80  # the mean Dice over the object's slices
ORACLES = ("oracle box", "true neighbour")


def read_volume(name: str):
    import tifffile

    if name == SAMPLE:
        from napari_qlora_minisam._sample_data import read_sample

        image, labels = read_sample("lung_ct")
        return image, labels > 0, "ct"
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


def start_slice(gt: np.ndarray) -> int:
    """The committed slice: the middle one of the slices holding the object."""
    zs = np.nonzero(gt.any(axis=(1, 2)))[0]
    return int(zs[len(zs) // 2])


def committed_by_box(predictor, image, gt) -> np.ndarray:
    """The middle slice's object as the widget commits it from a box: the model's mask of the reference box."""
    from napari_qlora_minisam.masks import tight_box

    mid = start_slice(gt)
    predictor.set_image(image[mid])
    return predictor.predict(box=tight_box(gt[mid]), multimask=False)[0][0]


def run_one(predictor, image, gt, prompt: str, rules=None, trim: bool = False, start=None) -> dict:
    """Propagation from the middle slice; ``start``: its committed mask (default: the ground truth's)."""
    from napari_qlora_minisam.volume import SliceSegmenter, StopRules, propagate, run_propagation

    mid = start_slice(gt)
    start = gt[mid] if start is None else start
    pred = np.zeros_like(gt)
    pred[mid] = start
    segmenter = SliceSegmenter(predictor, image)
    steps, result = run_propagation(propagate(segmenter, mid, start, len(image), stack=image, prompt=prompt,
                                              rules=rules or StopRules(), trim=trim))
    for s in steps:
        pred[s.z] = s.mask
    out = score(pred, gt)
    out["start"] = mid
    out["stopped"] = {("up" if d > 0 else "down"): why for d, why in result.stopped.items()}
    return out


def run_oracle(predictor, image, gt, oracle: str) -> dict:
    """A ceiling: every object slice but the committed one prompted from the ground truth (module docstring)."""
    from napari_qlora_minisam.masks import tight_box
    from napari_qlora_minisam.volume import SliceSegmenter, neighbour_box, neighbour_prompt

    mid = start_slice(gt)
    pred = np.zeros_like(gt)
    pred[mid] = gt[mid]
    segmenter = SliceSegmenter(predictor, image)
    for z in np.nonzero(gt.any(axis=(1, 2)))[0]:
        if z == mid:
            continue
        if oracle == "oracle box":
            pred[z] = segmenter(int(z), tight_box(gt[z]))[0]
        else:  # true neighbour: the neighbour towards the committed slice, as propagation would reach z
            neighbour = gt[z - 1] if z > mid else gt[z + 1]
            prompt = default_prompt(predictor.model)
            pred[z] = segmenter(int(z), neighbour_box(neighbour, prompt), **neighbour_prompt(neighbour, prompt))[0]
    out = score(pred, gt)
    out["start"] = mid
    return out


MODELS = {  # --models name -> (load_model source, 4-bit with the modality's shipped adapter, label prefix)
    "fp32": ("litemedsam", False, "LiteMedSAM"),
    "adapter": ("litemedsam", True, ""),
    "minisam": ("minisam", False, "MiniSAM"),
    "minisam-adapter": ("minisam", True, "MiniSAM"),
}


def load(kind: str, modality: str):
    from napari_qlora_minisam import load_model
    from napari_qlora_minisam.adapters import pretrained_adapters_dir

    source, adapted, _ = MODELS[kind]
    if not adapted:
        return load_model(source, device="cpu")
    prefix = "" if source == "litemedsam" else f"{source}-"  # each base's adapters (adapters.md)
    adapter = pretrained_adapters_dir() / f"{prefix}{modality}"
    return load_model(source, quantize="nf4", device="cpu", adapters=[adapter])


def model_label(kind: str, modality: str) -> str:
    """The table's model column: ``LiteMedSAM fp32``, ``NF4 + ct adapter``, ``MiniSAM NF4 + minisam-ct adapter``."""
    source, adapted, name = MODELS[kind]
    if not adapted:
        return f"{name} fp32"
    adapter = modality if source == "litemedsam" else f"{source}-{modality}"
    return f"{name + ' ' if name else ''}NF4 + {adapter} adapter"


def default_prompt(backend=None) -> str:
    from napari_qlora_minisam.volume import default_neighbour_prompt

    return default_neighbour_prompt(backend)


def is_default(r: dict, trim: bool = False) -> bool:
    """The session's and widget's recipe for the row's model: its default neighbour prompt, default stop rules
    (``trim``: with trim)."""
    return (r["prompt"] == r.get("default_prompt", default_prompt()) and r["rules"] == "default"
            and bool(r.get("trim")) == trim)


def summary(rows: list[dict]) -> str:
    """Per volume and model: the default recipe, the same with trim, and the two ceilings, against the target."""
    lines = [f"| volume | split | model | default | default + trim | oracle box | true neighbour | ≥ {TARGET:.2f} |",
             "|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["volume"], r["split"], r["model"]) for r in rows if r["volume"] != SAMPLE))
    for key in keys:
        mine = [r for r in rows if (r["volume"], r["split"], r["model"]) == key]

        def pick(test):
            found = [r["dice_object"] for r in mine if test(r)]
            return f"{found[0]:.3f}" if found else "–"

        default = pick(is_default)
        trimmed = pick(lambda r: is_default(r, trim=True))
        met = "–" if default == "–" else ("met" if float(default) >= TARGET else "missed")
        lines.append(f"| {' | '.join(key)} | {default} | {trimmed} | {pick(lambda r: r['prompt'] == ORACLES[0])} | "
                     f"{pick(lambda r: r['prompt'] == ORACLES[1])} | {met} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = ["| volume | split | model | neighbour prompt | stop rules | trim | Dice (object) | Dice (all) | leaks "
             "| lost |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['volume']} | {r['split']} | {r['model']} | {r['prompt']} | {r['rules']} | "
                     f"{'yes' if r.get('trim') else 'no'} | {r['dice_object']:.3f} | {r['dice_all']:.3f} | "
                     f"{len(r['leaks'])} | {len(r['lost'])} |")
    return "\n".join(lines)


def report(rows: list[dict]) -> str:
    defaults = ", ".join(f"{m}: {d}" for m, d in dict.fromkeys((r["model"], r.get("default_prompt", default_prompt()))
                                                                 for r in rows))
    return (f"Dice (object) per volume and model (*default*: the model's default neighbour prompt ({defaults}), "
            "default stop rules):\n\n"
            f"{summary(rows)}\n\nEvery run:\n\n{table(rows)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--volumes", nargs="+", default=list(VOLUMES))
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--prompts", nargs="+", default=list(PROMPTS))
    ap.add_argument("--fade", nargs="+", type=float, default=[0.0, FADE],
                    help="StopRules.min_start_fraction values (0: the default rules)")
    ap.add_argument("--trim-prompts", nargs="*", default=["box", "box+mask+point"],
                    help="neighbour prompts also run with propagate(trim=True), default stop rules; the "
                         "model's default prompt is added (none given: no trim runs)")
    ap.add_argument("--no-oracles", action="store_true", help="skip the two ground-truth ceilings")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json", type=Path, default=None,
                    help="where every row is written (per-slice Dice, stop reasons); default "
                         "benchmarks/propagation_quality.json, which --no-write leaves alone unless named here")
    ap.add_argument("--from-json", type=Path, default=None, help="rows of an earlier run: only write the table")
    ap.add_argument("--update", action="store_true",
                    help="keep the rows of --json for the (model, volume) pairs not run now: rerun one model")
    args = ap.parse_args(argv)
    if args.from_json:
        text = report(json.loads(args.from_json.read_text()))
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
            key = (kind, modality if MODELS[kind][1] else None)
            if key not in models:
                models.clear()  # one model (and its embeddings) at a time: memory
                models[key] = MiniSamPredictor(load(kind, modality))
            predictor = models[key]
            label = model_label(kind, modality)
            # the click alone only for the adapted models: the bare bases were trained with boxes only
            prompts = [p for p in args.prompts if p != "point" or MODELS[kind][1]]
            runs = [(p, f, False) for f in args.fade for p in prompts]
            trimmed = [*args.trim_prompts, default_prompt(predictor.model)] if args.trim_prompts else []
            runs += [(p, 0.0, True) for p in dict.fromkeys(trimmed)]  # the model's default always among them
            runs += [] if args.no_oracles else [(o, None, False) for o in ORACLES]
            start = None
            if name == SAMPLE:  # what the widget does, not a variant sweep
                runs = [(default_prompt(predictor.model), f, False) for f in (0.0, FADE)]
                start = committed_by_box(predictor, image, gt)
            for prompt, fade, trim in runs:
                t = time.time()
                if fade is None:
                    r = run_oracle(predictor, image, gt, prompt)
                    rules = "ground truth"
                else:
                    r = run_one(predictor, image, gt, prompt, StopRules(min_start_fraction=fade), trim=trim,
                                start=start)
                    rules = "default" if fade == 0 else f"+ fade < {fade:g}"
                split = "test (lung2 crop)" if name == SAMPLE else "test" if name in TEST else "non-test"
                r.update(volume=name, split=split, model=label, prompt=prompt,
                         default_prompt=default_prompt(predictor.model),
                         rules=rules, trim=trim, seconds=round(time.time() - t, 1))
                rows.append(r)
                print(f"{name:7s} {label:18s} {prompt:15s} {r['rules']:12s} trim {trim:d} "
                      f"object {r['dice_object']:.3f} all {r['dice_all']:.3f} leaks {r['leaks']} lost {r['lost']} {r['per_slice']} "
                      f"{r.get('stopped', '')} ({r['seconds']} s)", flush=True)
    earlier = args.json or DEFAULT_JSON
    if args.update and earlier.exists():
        ran = {(r["model"], r["volume"]) for r in rows}
        rows = [r for r in json.loads(earlier.read_text()) if (r["model"], r["volume"]) not in ran] + rows
    text = report(rows)
    print(text)
    print(f"total {time.time() - t0:.0f} s")
    out = args.json or (None if args.no_write else DEFAULT_JSON)
    if out:
        out.write_text(json.dumps(rows, indent=1))
    if not args.no_write:
        doc_sections.write_section(DOC, text, START, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
