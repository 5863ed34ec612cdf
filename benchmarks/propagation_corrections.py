"""Corrected slices a volume needs: propagate, correct the first bad slice, re-propagate beyond it, repeat.

``propagation_quality.py`` scores one propagation from the committed middle slice. A user who sees a slice go
wrong corrects it and presses *Re-propagate ↑ / ↓*, which replaces the object on every slice beyond it in that
direction. This benchmark plays that user on the shared tumour volumes and reports Dice (object) (the mean Dice
over the slices holding the object) after 0, 1, 2, … corrections, so docs/plugin.md can say how many corrected
slices each volume and model need to reach the 0.80 target.

The simulated user, fixed before any run:

* the committed middle slice is the ground truth's (as in ``propagation_quality.py``), then the model's default
  neighbour prompt and the default stop rules propagate it both ways;
* the slice to correct is the one nearest the committed slice (either way; the lower Dice on a tie) whose Dice
  is below the target: a user follows the object outward and stops at the first slice that is wrong; it is
  never a slice corrected before, and corrections nearer the committed slice are never overwritten, since
  re-propagation only rewrites slices farther out;
* the correction (``--correction``): ``box``, the model's mask of the slice's tight ground-truth box (a box
  drawn and *Redraw* (Shift+R) pressed, ``AnnotationSession.redraw``: the quick way), or ``brush``, the
  ground-truth mask itself (the outline painted until right, the slow way);
* re-propagation runs from the corrected slice away from the committed one (``volume.propagate`` with that one
  direction, the corrected mask as its start, as ``AnnotationSession.commit_repropagation`` writes it): every
  slice beyond it becomes what the run found, or empty where it stopped.

Models as in ``propagation_quality.py`` (``--models``). lung1 and brain1 are outside the test split; lung2 and
brain2 are test volumes and are only reported (nothing here is chosen on them).

    python benchmarks/propagation_corrections.py              # table + chart, writes docs/plugin.md's section
    python benchmarks/propagation_corrections.py --no-write --volumes brain1 --models fp32 --corrections 2
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
import propagation_quality as pq  # noqa: E402 - volumes, models, scores

REPO = pq.REPO
DOC = REPO / "docs" / "plugin.md"
DEFAULT_JSON = REPO / "benchmarks" / "propagation_corrections.json"
CHART = REPO / "docs" / "images" / "propagation_corrections.png"
START, END = "<!-- propagation-corrections:start -->", "<!-- propagation-corrections:end -->"
VOLUMES = ("lung1", "brain1", "lung2", "brain2")
CORRECTIONS = ("box", "brush")


def object_slices(gt: np.ndarray) -> list[int]:
    return [int(z) for z in np.nonzero(gt.any(axis=(1, 2)))[0]]


def slice_to_correct(pred: np.ndarray, gt: np.ndarray, start: int, corrected: set, target: float) -> int | None:
    """The object slice nearest ``start`` whose Dice is below ``target`` and that was not corrected yet (the lower
    Dice on a tie); ``None`` when every object slice is at the target."""
    from napari_qlora_minisam.masks import dice

    scored = [(abs(z - start), dice(pred[z], gt[z]), z) for z in object_slices(gt) if z not in corrected]
    bad = [s for s in scored if s[1] < target]
    return min(bad)[2] if bad else None


def replace_beyond(pred: np.ndarray, from_z: int, direction: int, steps) -> None:
    """What re-propagation writes: every slice past ``from_z`` in ``direction`` becomes its step's mask or empty."""
    beyond = range(from_z + 1, len(pred)) if direction > 0 else range(0, from_z)
    found = {s.z: s.mask for s in steps}
    for z in beyond:
        pred[z] = found.get(z, False)


def correct_and_repropagate(segment_slice, image, gt, prompt: str, correct, *, corrections: int,
                            target: float = pq.TARGET) -> list[dict]:
    """The simulated user (module docstring): scores after 0..``corrections`` corrections.

    ``segment_slice``: ``(z, box, **neighbour prompts) -> (mask, score)`` as ``volume.propagate`` takes it;
    ``correct(z)``: the corrected mask of slice ``z``. Stops early once no object slice is below ``target``.
    """
    from napari_qlora_minisam.volume import StopRules, propagate, run_propagation

    start = pq.start_slice(gt)
    pred = np.zeros_like(gt, dtype=bool)
    pred[start] = gt[start]
    steps, _ = run_propagation(propagate(segment_slice, start, gt[start], len(image), stack=image, prompt=prompt,
                                         rules=StopRules()))
    for s in steps:
        pred[s.z] = s.mask
    history = [dict(pq.score(pred, gt), corrected=[])]
    corrected = {start}
    for _ in range(corrections):
        z = slice_to_correct(pred, gt, start, corrected, target)
        if z is None:
            break
        corrected.add(z)
        pred[z] = correct(z)
        direction = 1 if z > start else -1
        steps = []  # an empty correction (the box found nothing) has nothing to propagate
        if pred[z].any():
            steps, _ = run_propagation(propagate(segment_slice, z, pred[z], len(image), stack=image, prompt=prompt,
                                                 rules=StopRules(), directions=(direction,)))
        replace_beyond(pred, z, direction, steps)
        history.append(dict(pq.score(pred, gt), corrected=history[-1]["corrected"] + [z]))
    return history


def run_volume(predictor, image, gt, correction: str, corrections: int) -> list[dict]:
    from napari_qlora_minisam.masks import tight_box
    from napari_qlora_minisam.volume import SliceSegmenter, plane

    segmenter = SliceSegmenter(predictor, image)

    def correct(z: int) -> np.ndarray:
        if correction == "brush":
            return gt[z].copy()
        predictor.set_image(plane(image, z))
        return predictor.predict(box=tight_box(gt[z]), multimask=False)[0][0]

    return correct_and_repropagate(segmenter, image, gt, pq.default_prompt(predictor.model), correct,
                                   corrections=corrections)


def needed(history: list[dict], target: float = pq.TARGET) -> str:
    """How many corrections the run took to reach ``target`` (``> n`` when it did not within its ``n``)."""
    for k, h in enumerate(history):
        if h["dice_object"] >= target:
            return str(k)
    return f"> {len(history) - 1}"


def table(rows: list[dict]) -> str:
    most = max(len(r["history"]) for r in rows) - 1
    head = " | ".join(f"{k} corrected" for k in range(most + 1))
    lines = [f"| volume | split | model | correction | {head} | to reach {pq.TARGET:.2f} | slices corrected | leaks "
             "(first → last) |", "|---|---|---|---|" + "---|" * (most + 1) + "---|---|---|"]
    for r in rows:
        dices = [f"{h['dice_object']:.3f}" for h in r["history"]]
        dices += ["·"] * (most + 1 - len(dices))  # stopped early: at the target, or nothing left to correct
        slices = ", ".join(str(z) for z in r["history"][-1]["corrected"]) or "–"
        lines.append(f"| {r['volume']} | {r['split']} | {r['model']} | {r['correction']} | {' | '.join(dices)} | "
                     f"{needed(r['history'])} | {slices} | {len(r['history'][0]['leaks'])} → "
                     f"{len(r['history'][-1]['leaks'])} |")
    return "\n".join(lines)


def family(model: str) -> str:
    """A chart colour per base and adapter use: the CT and MRI adapters of one base share it."""
    base = "MiniSAM" if model.startswith("MiniSAM") else "LiteMedSAM"
    return f"{base} NF4 + the modality's adapter" if "NF4" in model else f"{base} fp32"


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    volumes = list(dict.fromkeys(r["volume"] for r in rows))
    fig, axes = plt.subplots(1, len(volumes), figsize=(3.6 * len(volumes), 3.6), sharey=True, squeeze=False)
    families = list(dict.fromkeys(family(r["model"]) for r in rows))
    colours = dict(zip(families, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    legend = {}
    for ax, volume in zip(axes[0], volumes):
        for r in (r for r in rows if r["volume"] == volume):
            ys = [h["dice_object"] for h in r["history"]]
            label = f"{family(r['model'])}, {r['correction']}"
            legend[label], = ax.plot(range(len(ys)), ys, marker="o" if r["correction"] == "box" else "s",
                                     ls="-" if r["correction"] == "box" else "--",
                                     color=colours[family(r["model"])], label=label)
        ax.axhline(pq.TARGET, color="grey", lw=0.8, ls=":")
        split = next(r["split"] for r in rows if r["volume"] == volume)
        ax.set_title(f"{volume} ({split})")
        ax.set_xlabel("slices corrected")
        ax.set_xticks(range(max(len(r["history"]) for r in rows)))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Dice (object)")
    axes[0][0].set_ylim(0.3, 1.02)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=min(4, len(legend)), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.07 + 0.04 * ((len(legend) - 1) // 4), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(rows: list[dict]) -> str:
    return (f"Dice (object) after each correction (*box*: the model's mask of the slice's tight box, redrawn; "
            f"*brush*: the true outline painted), the default neighbour prompt and stop rules, the corrections "
            f"needed to reach {pq.TARGET:.2f}, and the slices given a mask past the object before and after them "
            f"(benchmarks/propagation_corrections.py):\n\n{table(rows)}\n\n"
            f"![Dice (object) against slices corrected](images/{CHART.name})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--volumes", nargs="+", default=list(VOLUMES), choices=list(VOLUMES))
    ap.add_argument("--models", nargs="+", default=list(pq.MODELS), choices=list(pq.MODELS))
    ap.add_argument("--correction", nargs="+", default=list(CORRECTIONS), choices=list(CORRECTIONS))
    ap.add_argument("--corrections", type=int, default=3, help="at most this many corrected slices per run")
    ap.add_argument("--no-write", action="store_true", help="print only: leave the JSON, chart and docs alone")
    ap.add_argument("--from-json", type=Path, default=None, help="rows of an earlier run: only write table + chart")
    args = ap.parse_args(argv)
    if args.from_json:
        rows = json.loads(args.from_json.read_text())
    else:
        import torch

        from napari_qlora_minisam import MiniSamPredictor

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        rows, t0 = [], time.time()
        for kind in args.models:
            predictor, loaded = None, None
            for name in args.volumes:
                image, gt, modality = pq.read_volume(name)
                key = modality if pq.MODELS[kind][1] else None
                if predictor is None or loaded != key:
                    predictor, loaded = None, key  # one model (and its embeddings) at a time: memory
                    predictor = MiniSamPredictor(pq.load(kind, modality))
                for correction in args.correction:
                    t = time.time()
                    history = run_volume(predictor, image, gt, correction, args.corrections)
                    row = dict(volume=name, split="test" if name in pq.TEST else "non-test",
                               model=pq.model_label(kind, modality), correction=correction,
                               prompt=pq.default_prompt(predictor.model), history=history,
                               seconds=round(time.time() - t, 1))
                    rows.append(row)
                    print(f"{name:7s} {row['model']:34s} {correction:5s} "
                          + " → ".join(f"{h['dice_object']:.3f}" for h in history)
                          + f"  corrected {history[-1]['corrected']} ({row['seconds']} s)", flush=True)
        print(f"total {time.time() - t0:.0f} s")
    text = report(rows)
    print(text)
    if not args.no_write:
        if not args.from_json:
            DEFAULT_JSON.write_text(json.dumps(rows, indent=1))
        chart(rows, CHART)
        doc_sections.write_section(DOC, text, START, END, after=pq.END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
