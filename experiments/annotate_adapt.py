"""Few annotated slices -> adapter: Dice gain on the other slices against the annotated-slice count.

The issue's target: from 3 annotated slices of one MRI volume (all objects on them), trained <= 2 min on the
2-core CPU, one-click (centroid) Dice +0.25 or more and box Dice +0.05 or more over the base without adapter,
on the other slices of that volume.

For each case and each count N of annotated slices, this script

1. chooses N slices at the centres of N equal parts of the object's labelled slices (:func:`choose_slices`:
   fixed by N and the labels alone, never by results);
2. hands ``train_adapter`` what a user's annotation looks like: the whole volume with a label volume that
   holds labels on those N slices only (the cardiac set: the N chosen 2D slices);
3. scores every other labelled slice (the cardiac set: its ``test`` slices, patients 4 and 5), each object
   of >= 50 px on its own: box Dice (tight box) and one-click Dice (centroid click, the mask with the highest
   predicted IoU), decoded by ``MiniSamPredictor`` as users get them, with the bare base and with the adapter.

Each run starts from a freshly loaded NF4 LiteMedSAM (``train_adapter`` attaches the adapter it trains). The
base scores are computed once per case, by a fresh model before it trains anything: the base is the same
for every N, only the evaluated slices differ.

Run from the repository root on an otherwise idle machine (the training budget is wall-clock, so a busy
CPU gets fewer steps)::

    python experiments/annotate_adapt.py                      # all cases, N = 1 3 5, writes docs/adapters.md
    python experiments/annotate_adapt.py --cases brain2 --counts 1 --minutes 0.05 --no-write   # smoke test

``--seeds 0 1 2`` repeats every run with other seeds (the table lists each run, the plot their mean);
``--json FILE`` also saves every run's figures, per object.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import doc_sections  # noqa: E402 - the shared section writer

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MINISAM_SHARED_DATA", REPO.parent / "shared" / "data"))
DOC = REPO / "docs" / "adapters.md"
PLOT = REPO / "docs" / "images" / "annotate_adapt_gain.png"
START, END = "<!-- annotate-adapt:start -->", "<!-- annotate-adapt:end -->"

MIN_EVAL_PIXELS = 50  # COSMOS: objects below 50 px in a slice are not evaluated there
# A slice counts as labelled (one a user would annotate) when the object covers at least this many pixels
# there: what train_adapter trains on (AdapterRecipe.min_object_pixels).
MIN_TRAIN_PIXELS = 20
TARGET_CLICK, TARGET_BOX, TARGET_N = 0.25, 0.05, 3

# Lung CT: the lung window (ct_lung, W 1500 / L -600), for training and evaluation alike. It is the window a
# radiologist reads lung tumours in and the one the widget offers for it; it is fixed in HU, so every slice
# is mapped the same way, whereas min-max follows each slice's extremes (bone, metal, the -1024 / 3071 edges
# of the scanner range) and squeezes the tumour/lung contrast into the bottom quarter of [0, 1].
LUNG_INTENSITY = "ct_lung"
VOLUME_CASES = {  # name -> (modality, intensity policy)
    "brain1": ("mri", "minmax"),
    "brain2": ("mri", "minmax"),
    "lung1": ("ct", LUNG_INTENSITY),
    "lung2": ("ct", LUNG_INTENSITY),
}
CARDIAC = "cardiac"  # cosmos_sample 22_Heart
CASES = (*VOLUME_CASES, CARDIAC)
COUNTS = (1, 3, 5)


def choose_slices(labelled: list, n: int) -> list:
    """``n`` of the ``labelled`` slices (in anatomical order), at the centres of ``n`` equal parts of them.

    Spread over the object's extent and fixed by ``n`` and the labels alone. For 7 labelled slices
    ``n = 1, 3, 5`` gives positions ``[3]``, ``[1, 3, 5]``, ``[0, 2, 3, 4, 6]``; ``n = len(labelled)`` gives all.

    Raises:
        ValueError: ``n`` is not between 1 and ``len(labelled)``.
    """
    count = len(labelled)
    if not 1 <= n <= count:
        raise ValueError(f"Cannot choose {n} of {count} labelled slices.")
    # Centre of part k is at (k + 1/2) * count / n; consecutive picks are >= 1 apart, so all differ.
    return [labelled[(2 * k + 1) * count // (2 * n)] for k in range(n)]


def labelled_slices(labels: np.ndarray, min_pixels: int = MIN_TRAIN_PIXELS) -> list[int]:
    """Indices ``z`` of a ``(Z, H, W)`` label volume where some object covers at least ``min_pixels``."""
    out = []
    for z in range(labels.shape[0]):
        ids, counts = np.unique(labels[z][labels[z] > 0], return_counts=True)
        if len(ids) and counts.max() >= min_pixels:
            out.append(z)
    return out


def eval_objects(labels: np.ndarray, min_pixels: int = MIN_EVAL_PIXELS) -> dict[int, np.ndarray]:
    """``{id: mask}`` of the objects of a 2D label image that are evaluated (>= ``min_pixels`` pixels)."""
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    return {int(i): labels == i for i, c in zip(ids, counts) if c >= min_pixels}


@dataclass
class Case:
    """One benchmark case: slices a user could annotate and how the rest is evaluated."""

    name: str
    modality: str
    intensity: str
    planes: dict  # slice key -> (2D image, 2D integer labels)
    annotatable: list  # keys of the labelled slices a user could annotate, in anatomical order
    volume: tuple | None = None  # (image, labels) (Z, H, W) when the case is one volume (keys are z)
    test_keys: list | None = None  # fixed evaluation slices (cardiac); None: the volume's other slices
    class_names: dict = field(default_factory=dict)

    def training_samples(self, chosen: list) -> tuple[list, list]:
        """``(samples, names)`` for ``train_adapter``: labels on the chosen slices only."""
        if self.volume is not None:
            image, labels = self.volume
            partial = np.zeros_like(labels)
            partial[chosen] = labels[chosen]
            return [(image, partial)], [f"{self.name}.tif (labels on z={','.join(map(str, chosen))})"]
        return [self.planes[k] for k in chosen], [str(k) for k in chosen]

    def evaluation_keys(self, chosen: list) -> list:
        """The slices scored after annotating ``chosen``: each holds at least one evaluated object."""
        keys = self.test_keys if self.test_keys is not None else [k for k in self.annotatable if k not in chosen]
        return [k for k in keys if k not in chosen and eval_objects(self.planes[k][1])]

    def all_evaluation_keys(self) -> list:
        return self.evaluation_keys([])


def load_volume_case(name: str, data: Path) -> Case:
    import tifffile

    modality, intensity = VOLUME_CASES[name]
    image = tifffile.imread(data / "volumes" / f"{name}_image.tif")
    labels = tifffile.imread(data / "volumes" / f"{name}_label.tif").astype(np.int32)
    planes = {z: (image[z], labels[z]) for z in range(labels.shape[0]) if labels[z].any()}
    return Case(name, modality, intensity, planes, labelled_slices(labels), volume=(image, labels))


def _slice_order(name: str) -> tuple:
    """``22_Heart_2_10.png`` -> ``(2, 10)``: patient, then slice number (not string order)."""
    return tuple(int(p) for p in Path(name).stem.split("_")[2:])


def load_cardiac_case(data: Path) -> Case:
    import imageio.v3 as iio

    ds = "22_Heart"
    split = json.loads((data / "splits.json").read_text())[ds]
    root = data / split["root"]
    info = json.loads((root / "data_infor_json" / f"{ds}.json").read_text())
    planes = {}
    for name in split["adapt_train"] + split["test"]:
        image = iio.imread(root / "data" / "test_data" / ds / "images" / name)
        grey = iio.imread(root / "data" / "test_data" / ds / "labels" / name)
        image = image[..., 0] if image.ndim == 3 else image
        grey = grey[..., 0] if grey.ndim == 3 else grey
        labels = np.zeros(grey.shape, np.int32)  # grey levels -> class ids (as docs/make_sample_data.py)
        for class_id, level in info["color"].items():
            labels[grey == int(level)] = int(class_id)
        planes[name] = (image, labels)
    annotatable = sorted((k for k in split["adapt_train"] if eval_objects(planes[k][1], MIN_TRAIN_PIXELS)),
                         key=_slice_order)
    return Case(CARDIAC, "mri", "minmax", planes, annotatable, test_keys=sorted(split["test"], key=_slice_order),
                class_names={int(k): v for k, v in info["info"].items()})


def load_case(name: str, data: Path) -> Case:
    return load_cardiac_case(data) if name == CARDIAC else load_volume_case(name, data)


def fresh_base():
    from napari_qlora_minisam import load_model

    return load_model("litemedsam", quantize="nf4")


def score_slices(model, case: Case, keys: list) -> dict:
    """``{key: {id: {"box": dice, "click": dice}}}`` with the model's active adapter (or none)."""
    from minisam_train.evaluation.metrics import dice_score
    from minisam_train.evaluation.point_sampling import centroid, tight_box
    from napari_qlora_minisam import MiniSamPredictor

    predictor = MiniSamPredictor(model, intensity=case.intensity)
    out = {}
    for key in keys:
        image, labels = case.planes[key]
        predictor.set_image(image)
        out[key] = {}
        for oid, gt in eval_objects(labels).items():
            masks, _, _ = predictor.predict(box=tight_box(gt), multimask=False)
            box = dice_score(masks[0], gt)
            # A lone click: three candidates from the base, one from an adapter trained to answer clicks
            # with its single output (the predictor decides, as in the widget); the best scored one counts.
            masks, scores, _ = predictor.predict(points=centroid(gt)[None], point_labels=np.ones(1), multimask=True)
            click = dice_score(masks[int(np.argmax(scores))], gt)
            out[key][oid] = {"box": box, "click": click}
    return out


def mean_over_objects(scores: dict, keys: list, metric: str) -> float:
    values = [obj[metric] for k in keys for obj in scores[k].values()]
    return float(np.mean(values)) if values else float("nan")


def run_one(case: Case, n: int, chosen: list, eval_keys: list, base: dict, seed: int, minutes: float,
            out_dir: Path) -> dict:
    from napari_qlora_minisam import train_adapter

    model = fresh_base()
    samples, names = case.training_samples(chosen)
    name = f"{case.name}-n{n}-seed{seed}"
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    train_adapter(model, samples, out_dir, name, max_minutes=minutes, seed=seed, intensity=case.intensity,
                  modality=case.modality, sample_names=names)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()[0]
    info = model.adapter_info[name]
    after = score_slices(model, case, eval_keys)
    del model
    gc.collect()
    train = info["training"]
    row = {"case": case.name, "modality": case.modality, "intensity": case.intensity, "n": n, "seed": seed,
           "annotated": [str(k) for k in chosen], "eval_slices": len(eval_keys),
           "eval_objects": sum(len(after[k]) for k in eval_keys),
           "train_wall_s": round(wall, 1), "embed_s": train["embed_seconds"], "loop_s": train["train_seconds"],
           "steps_done": train["steps_done"], "steps_planned": train["steps_planned"], "stopped": train["stopped"],
           "train_masks": info["objects"]["train_masks"], "held_back_masks": info["objects"]["held_back_masks"],
           "held_back_scores": info["scores"], "load_before": round(load0, 2), "load_after": round(load1, 2)}
    for metric in ("box", "click"):
        before_m = mean_over_objects(base, eval_keys, metric)
        after_m = mean_over_objects(after, eval_keys, metric)
        row[metric] = {"before": before_m, "after": after_m, "gain": after_m - before_m}
    row["per_object"] = {str(k): {str(o): {"base": base[k][o], "adapter": after[k][o]} for o in after[k]}
                         for k in eval_keys}
    row["target"] = target_status(row)
    return row


def target_status(row: dict) -> str:
    """``yes`` / ``no`` for the issue's 3-slice MRI target, ``–`` where it does not apply."""
    if row["modality"] != "mri" or row["n"] != TARGET_N:
        return "–"
    met = row["click"]["gain"] >= TARGET_CLICK and row["box"]["gain"] >= TARGET_BOX
    return "yes" if met else "no"


def _f(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"


def _g(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:+.3f}"


def table(rows: list[dict]) -> list[str]:
    lines = ["| case | N | annotated slices | trained / held-back masks | scored slices / objects | train s "
             "(embed + loop) | steps | stopped | box before → after | click before → after | Δ box | Δ click | "
             "3-slice MRI target |",
             "|---|---:|---|---|---|---|---|---|---|---|---:|---:|---|"]
    for r in rows:
        case = r["case"] + (f" (seed {r['seed']})" if r.get("seeds", 1) > 1 else "")
        lines.append(
            f"| {case} | {r['n']} | {', '.join(r['annotated'])} | {r['train_masks']} / {r['held_back_masks']} | "
            f"{r['eval_slices']} / {r['eval_objects']} | {r['train_wall_s']:.0f} ({r['embed_s']:.0f} + "
            f"{r['loop_s']:.0f}) | {r['steps_done']}/{r['steps_planned']} | {r['stopped']} | "
            f"{_f(r['box']['before'])} → {_f(r['box']['after'])} | {_f(r['click']['before'])} → "
            f"{_f(r['click']['after'])} | {_g(r['box']['gain'])} | {_g(r['click']['gain'])} | {r['target']} |")
    return lines


def plot(rows: list[dict], path: Path) -> None:
    """Gain in click and box Dice against N, one line per case (mean over seeds), targets dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, metric, target in ((axes[0], "click", TARGET_CLICK), (axes[1], "box", TARGET_BOX)):
        for case in dict.fromkeys(r["case"] for r in rows):
            ns = sorted({r["n"] for r in rows if r["case"] == case})
            gains = [np.mean([r[metric]["gain"] for r in rows if r["case"] == case and r["n"] == n]) for n in ns]
            ax.plot(ns, gains, marker="o", label=case)
        ax.axhline(target, ls="--", color="k", lw=1, label=f"target +{target:g}")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"{'one-click (centroid)' if metric == 'click' else 'box'} Dice gain over the base")
        ax.set_xlabel("annotated slices")
        ax.set_ylabel("Dice, adapter − base")
        ax.set_xticks(COUNTS)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def verdict(rows: list[dict]) -> str:
    """The target, read off the 3-slice rows: MRI cases against both targets, CT for what it shows."""
    def gains(r):
        return r["click"]["after"] - r["click"]["before"], r["box"]["after"] - r["box"]["before"]

    parts = []
    for r in (r for r in rows if r["n"] == 3):
        click, box = gains(r)
        mri = r["modality"] == "mri"
        met = "meets both" if click >= TARGET_CLICK and box >= TARGET_BOX else \
            "meets the click target, misses the box target" if click >= TARGET_CLICK else "misses"
        parts.append(f"{r['case']} ({'MRI' if mri else 'CT'}): click {click:+.2f}, box {box:+.2f}" +
                     (f", {met}" if mri else ""))
    if not parts:
        return "**At 3 annotated slices:** no 3-slice run in this table."
    return ("**At 3 annotated slices:** " + "; ".join(parts) + ". One click gains most where the base "
            "answers clicks worst; boxes gain where the base's box Dice leaves room (the heart), and stay within "
            "a few points where it is already near 0.9 (brain1, the lung tumour).")


def section(rows: list[dict], skipped: list[str], command: str, started: str, loads: tuple, minutes: float,
            seeds: list) -> str:
    budget = [f"{r['case']} N={r['n']}" for r in rows if r["stopped"] == "time_budget"]
    lines = [
        "### How many slices to annotate: gain against annotated-slice count",
        "",
        f"Produced by `{command}` ({started} UTC; {machine()}; load average {loads[0]:.2f} before, "
        f"{loads[1]:.2f} after; per run in `--json`). Each run: a fresh NF4 LiteMedSAM, `train_adapter` with "
        f"all defaults, `max_minutes={minutes:g}`, seed{'s' if len(seeds) > 1 else ''} "
        f"{', '.join(map(str, seeds))}, given the whole volume with labels on the N annotated slices only. "
        "The annotated slices sit at the centres of N equal parts of the object's labelled slices (fixed "
        "before any result). Scored: every other slice of the volume (cardiac: the 9 `test` slices of "
        "patients 4 and 5), each object of ≥ 50 px, with `MiniSamPredictor` as the widget decodes: box = "
        "tight box; click = centroid, mask with the highest predicted IoU. Means over objects. Brain: "
        f"min–max; lung CT: the `{LUNG_INTENSITY}` window; cardiac: min–max. Target (issue): at N = 3 on MRI, "
        f"click +{TARGET_CLICK:g} and box +{TARGET_BOX:g}.",
        "",
        *table(rows),
        "",
        verdict(rows),
        "",
        "![Gain against annotated-slice count](images/annotate_adapt_gain.png)",
        "",
        "Read with care:",
        "",
        "- **Few objects.** One tumour per volume, so a volume's row is a mean over a few slices of one "
        "object (brain2 N = 1: one slice; lung1 N = 1: two); one slice moves it by a lot. Neighbouring "
        "slices of the same tumour look like the annotated ones, so this measures adapting to *this* volume, "
        "not to a new patient.",
        "- **What N means to `train_adapter`.** With one object in the volume, it holds one of the N slices "
        "back for early stopping and its before/after score (N ≥ 2), so N = 3 trains on 2 slices; N = 1 has "
        "nothing held back, so no early stopping (see the masks column). Each cardiac slice is a sample of "
        "3 objects (LV, myocardium, RV) and a fifth of these (slice, structure) objects, at least one, is held "
        "back: at N = 1 one of the three structures is never trained on.",
        "- **Cardiac** is not one volume: its `adapt_train` slices come from patients 2 and 3 and its test "
        "slices from patients 4 and 5, so its row measures transfer to other patients. The myocardium is a "
        "ring: its centroid usually falls in the left-ventricle cavity, so a centroid click rarely selects it.",
        "- **Time.** The budget bounds the training loop only; embedding the views comes first (the embed "
        "column). Wall-clock budgets give fewer steps on a busy CPU, so repeat on an idle machine; "
        f"{'one seed per run' if len(seeds) == 1 else f'{len(seeds)} seeds'}.",
    ]
    if budget:
        lines.append(f"- Runs stopped by the time budget: {', '.join(budget)}.")
    if skipped:
        lines.append(f"- Not run (no slice would be left to score): {', '.join(skipped)}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--counts", nargs="+", type=int, default=list(COUNTS), help="annotated-slice counts N")
    parser.add_argument("--minutes", type=float, default=2.0, help="train_adapter's max_minutes (default 2)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path, help="also save every run's figures (per object) here")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    parser.add_argument("--report", type=Path, help="no training: rewrite the doc and plot from a --json file")
    args = parser.parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        plot(saved["rows"], PLOT)
        command = " ".join(["python experiments/annotate_adapt.py", *map(shlex.quote, saved["argv"])])
        seeds = sorted({r.get("seed", 0) for r in saved["rows"]})
        minutes = next((float(a.split("=")[1]) for a in saved["argv"] if a.startswith("--minutes=")), 2.0)
        text = section(saved["rows"], saved["skipped"], command, saved["started_utc"],
                       tuple(saved["load_before_after"]), minutes, seeds)
        doc_sections.write_section(DOC, text, START, END)
        return 0

    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    load_start = os.getloadavg()[0]
    rows, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="annotate_adapt_") as tmp:
        for name in args.cases:
            case = load_case(name, args.data)
            t0 = time.perf_counter()
            base_model = fresh_base()
            base = score_slices(base_model, case, case.all_evaluation_keys())
            del base_model
            gc.collect()
            print(f"[{name}] base scored on {len(base)} slices in {time.perf_counter() - t0:.0f} s; labelled "
                  f"slices a user could annotate: {', '.join(map(str, case.annotatable))}", file=sys.stderr)
            for n in args.counts:
                chosen = choose_slices(case.annotatable, n) if n <= len(case.annotatable) else []
                eval_keys = case.evaluation_keys(chosen) if chosen else []
                if not eval_keys:
                    skipped.append(f"{name} N={n}")
                    print(f"[{name}] N={n}: skipped ({len(case.annotatable)} labelled slices)", file=sys.stderr)
                    continue
                for seed in args.seeds:
                    row = run_one(case, n, chosen, eval_keys, base, seed, args.minutes, Path(tmp))
                    row["seeds"] = len(args.seeds)
                    rows.append(row)
                    print(f"[{name}] N={n} seed={seed}: annotated {row['annotated']}, {row['train_wall_s']:.0f} s, "
                          f"{row['steps_done']} steps ({row['stopped']}); box {_f(row['box']['before'])} → "
                          f"{_f(row['box']['after'])}, click {_f(row['click']['before'])} → "
                          f"{_f(row['click']['after'])}", file=sys.stderr)
    loads = (load_start, os.getloadavg()[0])
    print("\n".join(table(rows)))
    if skipped:
        print(f"skipped: {', '.join(skipped)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"argv": argv, "started_utc": started, "machine": machine(),
                                         "load_before_after": loads, "rows": rows, "skipped": skipped}, indent=1))
    if not args.no_write and rows:
        plot(rows, PLOT)
        command = " ".join(["python experiments/annotate_adapt.py", *map(shlex.quote, argv)])
        text = section(rows, skipped, command, started, loads, args.minutes, args.seeds)
        doc_sections.write_section(DOC, text, START, END)
        print(f"wrote {DOC.relative_to(REPO)} ({START} ... {END}) and {PLOT.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
