"""One markdown table across distillation runs (the stages of experiments/run_distill_chain.sh).

Usage: ``python experiments/distill_stages.py RUN_DIR [RUN_DIR ...]`` — each RUN_DIR holds the
``distill_report_student.json`` that experiments/distill_report.py wrote. Prints the student/teacher Dice
ratios (per object and of class means), the speed and memory ratios, the training time, and the student's
Dice per class, for docs/distillation.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    reports = [(run, json.loads((run / "distill_report_student.json").read_text())) for run in args.runs]
    print("| run | Dice ratio per object | of class means | student Dice per object | encoder speed-up | "
          "memory | training |\n|---|---|---|---|---|---|---|")
    for run, r in reports:
        d = r["dice"]
        print(f"| `{run}` | **{d['ratio_of_object_means']:.3f}** | {d['ratio_of_class_means']:.3f} | "
              f"{d['student_mean_dice_objects']:.3f} (teacher {d['teacher_mean_dice_objects']:.3f}) | "
              f"{r['latency']['speedup']:.2f}× | {r['memory']['ratio_student_over_teacher']:.2f}× | "
              f"{_training(r['training'])} |")
    classes = reports[0][1]["dice"]["per_class"]
    print("\n| class (objects) | teacher | " + " | ".join(f"`{run.name}`" for run, _ in reports) + " |")
    print("|---|---|" + "---|" * len(reports))
    for c in classes:
        first = classes[c]
        cells = [f"{r['dice']['per_class'][c]['student']:.3f}" for _, r in reports]
        print(f"| {c.split('/')[-1]} ({first['n']}) | {first['teacher']:.3f} | " + " | ".join(cells) + " |")


def _training(t: dict) -> str:
    if "averaged_from" in t:  # minisam-train average: no training of its own
        return "weight average of " + " + ".join(f"`{Path(src).parent}`" for src in t["averaged_from"])
    return f"{t['train_seconds']:.0f} s, {t['steps']} steps"


if __name__ == "__main__":
    main()
