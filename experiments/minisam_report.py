"""docs/minisam.md figures from a MiniSAM run folder.

    python experiments/minisam_report.py runs/minisam_window --teacher-init --previous runs/minisam_teacher_init \
        [--old SCRATCH]                                                       # the shipped one
    python experiments/minisam_report.py runs/minisam [--chosen B_decoder_loop]   # experiments/run_minisam_chain.sh
    python experiments/minisam_report.py runs/minisam_refine --refine   # experiments/run_minisam_refine.sh

With ``--teacher-init`` the folder is a run of experiments/run_minisam_teacher_init.sh or (with ``--previous``, the
teacher-initialised run it grew from) run_minisam_window.sh: the validation table (its
``adapt_train_eval`` and ``val_eval``, pooled), the test table, encoder latencies of every model in it
measured here, and the plot go into the section ``minisam-shipped``. Otherwise:

Reads ``ROOT/val_eval`` and ``ROOT/test_eval`` (``per_object.csv``), measures the encoder latency of the
teacher and of each stage interleaved in this process (each stage after the teacher, 5 rounds, medians),
and writes the val table, the test table (per object, per class, one-click), and the plot of Dice ratio
against encoder speed-up (``docs/images/minisam_dice_vs_speed.png``) into docs/minisam.md (section
``minisam-results``). Only the figures of the ``test`` split of stages chosen on ``val`` belong in the
README. With ``--refine`` the folder is a refinement run's and its val (and, once run, test) tables go into
the section ``minisam-refine`` (same architecture, so no speed column).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "experiments"))
import doc_sections  # noqa: E402 - the shared section writer
from ship_minisam import STUDENTS, scores, validation_scores  # noqa: E402 - one definition of the means

DOC = REPO / "docs" / "minisam.md"
START, END = "<!-- minisam-results:start -->", "<!-- minisam-results:end -->"
REFINE_START, REFINE_END = "<!-- minisam-refine:start -->", "<!-- minisam-refine:end -->"
SHIPPED_START, SHIPPED_END = "<!-- minisam-shipped:start -->", "<!-- minisam-shipped:end -->"
TEACHER = "teacher_litemedsam"


def latencies(sources: dict, rounds: int = 5) -> dict:
    """Encoder seconds per 256² slice, the models interleaved round by round (medians)."""
    import torch

    from napari_qlora_minisam import load_model

    warnings.simplefilter("ignore")
    models = {name: load_model(src, device="cpu") for name, src in sources.items()}
    times = {name: [] for name in models}
    with torch.inference_mode():
        for r in range(rounds + 1):
            for name, backend in models.items():
                x = torch.rand(1, 3, 256, 256)
                t0 = time.perf_counter()
                backend.encode(x)
                if r:
                    times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def _f(x, d=3):
    return "–" if x is None else f"{x:.{d}f}"


def split_table(s: dict, prompts=("box", "point1")) -> list[str]:
    models = [TEACHER] + [m for m in s if m != TEACHER]
    head = ["model"] + [f"{p} Dice per object" for p in prompts] + [f"{p} ratio" for p in prompts] + \
        ["box class mean", "objects"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in models:
        cells = [f"`{m}`"]
        cells += [_f(s[m].get(p, {}).get("dice_per_object")) for p in prompts]
        cells += [_f(s[m][p]["dice_per_object"] / s[TEACHER][p]["dice_per_object"]) if p in s[m] else "–"
                  for p in prompts]
        cells += [_f(s[m]["box"]["class_mean"]), str(s[m]["box"]["objects"])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def class_table(s: dict) -> list[str]:
    models = [TEACHER] + [m for m in s if m != TEACHER]
    lines = ["| class | " + " | ".join(f"`{m}`" for m in models) + " |", "|---|" + "---|" * len(models)]
    for c in s[TEACHER]["box"]["per_class"]:
        lines.append(f"| {c.split('/')[-1]} | " + " | ".join(_f(s[m]["box"]["per_class"].get(c)) for m in models)
                     + " |")
    return lines


def validation_table(root: Path) -> list[str]:
    """Box Dice per object on each validation split and pooled, with the pooled ratio to the teacher."""
    parts = {key: scores(root / f"{key}_eval" / "per_object.csv") for key in ("adapt_train", "val")}
    pooled = validation_scores(root)
    models = [TEACHER] + [m for m in pooled if m != TEACHER]
    n = {key: parts[key][TEACHER]["box"]["objects"] for key in parts}
    lines = [f"| model | `adapt_train` ({n['adapt_train']}) | `val` ({n['val']}) | **pooled "
             f"({pooled[TEACHER]['box']['objects']})** | pooled ratio | one click, pooled |", "|---|---|---|---|---|---|"]
    for m in models:
        box = pooled[m]["box"]["dice_per_object"]
        lines.append(f"| `{m}` | {_f(parts['adapt_train'][m]['box']['dice_per_object'])} | "
                     f"{_f(parts['val'][m]['box']['dice_per_object'])} | **{_f(box)}** | "
                     f"{_f(box / pooled[TEACHER]['box']['dice_per_object'])} | "
                     f"{_f(pooled[m].get('point1', {}).get('dice_per_object'))} |")
    return lines


def teacher_init_report(root: Path, old: Path | None, write: bool, previous: Path | None = None) -> str:
    """The shipped student's validation and test tables, latencies and plot (section ``minisam-shipped``).
    ``previous``: the run folder of the stage ``root``'s run grew from, whose test rows (scored once, when that
    stage was chosen) join the test table, the latencies and the plot."""
    script = "experiments/run_minisam_window.sh" if previous else "experiments/run_minisam_teacher_init.sh"
    text = ["### Validation (the choice)", "",
            "Box Dice per object, deployable mask, on the labelled objects of `conf/splits_val.json` outside "
            f"`test`. Command: `bash {script}` (its fit and val steps).", "",
            *validation_table(root), ""]
    test_csv = root / "test_eval" / "per_object.csv"
    if test_csv.exists():
        test = scores(test_csv)
        chosen = next(m for m in test if m != TEACHER)
        folders = {m: root / f for m, (f, _) in STUDENTS.items() if m in test}
        if previous is not None:
            earlier = scores(previous / "test_eval" / "per_object.csv")
            test.update({m: v for m, v in earlier.items() if m not in test})
            folders.update({m: previous / f for m, (f, _) in STUDENTS.items() if m in earlier and m not in folders})
        sources = {TEACHER: "litemedsam", **{m: str(f) for m, f in folders.items()}}
        if old is not None and "scratch_AB_average" in test:
            sources["scratch_AB_average"] = str(old)
        speed = latencies(sources)
        earlier_note = (f" Rows of earlier stages come from their own test runs ({previous.name}), scored once "
                        "when each was chosen; the teacher's row is this run's." if previous else "")
        text += ["### Test (once, after the choice)", "",
                 f"COSMOS `test` split of both roots: {test[TEACHER]['box']['objects']} objects. Command: "
                 f"`TEST=1 bash {script}` (its test step); speed: "
                 "`python experiments/minisam_report.py ROOT --teacher-init` (encoders interleaved in one process, "
                 "5 rounds, each model's default CPU path)." + earlier_note, "", *split_table(test), "",
                 "Encoder seconds per 256² slice in that run: " + ", ".join(
                     f"`{m}` {speed[m]:.3f} s" for m in speed) + ".", "",
                 "Box Dice per class (deployable):", "", *class_table(test), "",
                 "![Dice ratio against encoder speed-up](images/minisam_dice_vs_speed.png)", ""]
        if write:
            plot(test, speed, chosen, REPO / "docs" / "images" / "minisam_dice_vs_speed.png")
    return "\n".join(text)


def plot(test: dict, speed: dict, chosen: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    for m in test:
        x = speed[TEACHER] / speed[m]
        y = test[m]["box"]["dice_per_object"] / test[TEACHER]["box"]["dice_per_object"]
        ax.scatter([x], [y], s=160 if m == chosen else 40, marker="*" if m == chosen else "o",
                   label=m + (" (chosen on val)" if m == chosen else ""))
    ax.axhline(0.95, color="grey", ls="--", lw=0.8)
    ax.axvline(2.5, color="grey", ls=":", lw=0.8)
    ax.text(1.02, 0.952, "Dice target 0.95×", fontsize=7, color="grey")
    ax.text(2.55, 0.90, "speed target 2.5×", fontsize=7, color="grey")
    ax.set_xlabel("encoder speed-up over LiteMedSAM (same run)")
    ax.set_ylabel("box Dice ratio per object (test)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: never over a point
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def refine_report(root: Path) -> str:
    """The refinement run's val table and, when its test step has run, its test tables."""
    text = []
    fit_csv = root / "fit_eval" / "per_object.csv"
    if fit_csv.exists():
        fit = scores(fit_csv)
        text += ["#### Fit: the training images", "",
                 f"The COSMOS `adapt_train` images of `conf/splits_val.json` (seen in distillation): "
                 f"{fit[TEACHER]['box']['objects']} objects. Command: `bash experiments/run_minisam_refine.sh` "
                 "(its fit step).", "", *split_table(fit, prompts=("box",)), "", "Box Dice per class:", "",
                 *class_table(fit), ""]
    val = scores(root / "val_eval" / "per_object.csv")
    text += ["#### Refinement: validation", "",
            f"`val` of `conf/splits_val.json`: {val[TEACHER]['box']['objects']} objects. "
            "Command: `bash experiments/run_minisam_refine.sh` (its val step).", "", *split_table(val), ""]
    test_csv = root / "test_eval" / "per_object.csv"
    if test_csv.exists():
        test = scores(test_csv)
        text += ["#### Refinement: test (once, after the choice)", "",
                 f"COSMOS `test` split of both roots: {test[TEACHER]['box']['objects']} objects. Command: "
                 "`CHOSEN=... SKIP_TRAIN=1 bash experiments/run_minisam_refine.sh` (its test step).", "",
                 *split_table(test), "", "Box Dice per class (deployable):", "", *class_table(test), ""]
    return "\n".join(text)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--chosen", default=None)
    ap.add_argument("--refine", action="store_true", help="ROOT is a run of experiments/run_minisam_refine.sh")
    ap.add_argument("--teacher-init", action="store_true",
                    help="ROOT is a run of experiments/run_minisam_teacher_init.sh (the shipped student)")
    ap.add_argument("--old", type=Path, default=None, help="with --teacher-init: the from-scratch student's folder")
    ap.add_argument("--previous", type=Path, default=None, help="with --teacher-init: the run folder of the stage "
                    "ROOT grew from (experiments/run_minisam_window.sh's ROOT grew from run_minisam_teacher_init.sh's)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.teacher_init:
        out = teacher_init_report(args.root, args.old, not args.no_write, args.previous)
        print(out)
        if not args.no_write:
            doc_sections.write_section(DOC, out, SHIPPED_START, SHIPPED_END, title="# MiniSAM")
        return
    if args.refine:
        out = refine_report(args.root)
        print(out)
        if not args.no_write:
            doc_sections.write_section(DOC, out, REFINE_START, REFINE_END, title="# MiniSAM")
        return
    val = scores(args.root / "val_eval" / "per_object.csv")
    text = ["#### Validation (choosing the stage)", "",
            f"`val` of `conf/splits_val.json`: {val[TEACHER]['box']['objects']} objects. "
            "Command: `bash experiments/run_minisam_chain.sh` (its val step).", "", *split_table(val), ""]
    test_csv = args.root / "test_eval" / "per_object.csv"
    if test_csv.exists():
        test = scores(test_csv)
        sources = {TEACHER: "litemedsam", **{m: str(args.root / m / "student") for m in test if m != TEACHER}}
        speed = latencies(sources)
        text += ["#### Test (once, after the choice)", "",
                 f"COSMOS `test` split of both roots: {test[TEACHER]['box']['objects']} objects. Command: "
                 "`CHOSEN=... SKIP_TRAIN=1 bash experiments/run_minisam_chain.sh` (its test step); speed: "
                 "`python experiments/minisam_report.py ROOT` (encoders interleaved in one process, 5 rounds).",
                 "", *split_table(test), "", "Encoder seconds per 256² slice in that run: " + ", ".join(
                     f"`{m}` {speed[m]:.3f} s" for m in speed) + ".", "",
                 "Box Dice per class (deployable):", "", *class_table(test), "",
                 "![Dice ratio against encoder speed-up](images/minisam_scratch_dice_vs_speed.png)", ""]
        if not args.no_write:
            plot(test, speed, args.chosen, REPO / "docs" / "images" / "minisam_scratch_dice_vs_speed.png")
    out = "\n".join(text)
    print(out)
    if not args.no_write:
        doc_sections.write_section(DOC, out, START, END, title="# MiniSAM")


if __name__ == "__main__":
    main()
