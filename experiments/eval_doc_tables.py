"""Write the tables of a sample evaluation into docs/evaluation.md, from its summary.csv and efficiency.csv.

    python experiments/eval_doc_tables.py docs/eval/sample_litemedsam --section sample
    python experiments/eval_doc_tables.py docs/eval/sample_fp32_vs_nf4 --section nf4

``sample``: overall, per modality and per class tables of one model. ``nf4``: two models side by side (the
second against the first) and their efficiency rows of one invocation. Each replaces the block between
``<!-- eval-<section>:start -->`` and ``<!-- eval-<section>:end -->``; no figure in it is typed by hand.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import doc_sections  # noqa: E402 - the shared section writer

DOC = REPO / "docs" / "evaluation.md"


def read(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def summary_index(rows):
    """(level, group, model, prompt, selection) -> row."""
    return {(r["level"], r["group"], r["model"], r["prompt"], r["selection"]): r for r in rows}


def ordered(values, first=()):
    seen = list(dict.fromkeys(first))
    return seen + sorted(set(values) - set(seen))


def sample_tables(out: Path) -> str:
    rows = read(out / "summary.csv")
    idx = summary_index(rows)
    model = rows[0]["model"]
    prompts = ordered([r["prompt"] for r in rows], ("point1", "point5", "point5neg5", "box", "box_point1"))
    prompts = [p for p in prompts if any(r["prompt"] == p for r in rows)]
    overall = [r for r in rows if r["level"] == "overall"]
    classes = overall[0]["classes"] if overall else "?"
    lines = [f"### Overall (class mean over the {classes} classes)", "",
             "| prompt | Dice oracle | Dice deployable | NSD oracle | NSD deployable |", "|---|---|---|---|---|"]
    for p in prompts:
        o, d = idx.get(("overall", "all", model, p, "oracle")), idx.get(("overall", "all", model, p, "deployable"))
        if o and d:
            lines.append(f"| {p} | {float(o['dice']):.3f} | {float(d['dice']):.3f} | {float(o['nsd']):.3f} | {float(d['nsd']):.3f} |")
    for level, title, key in (("modality", "Dice per modality (deployable; class means)", "modality"),
                              ("class", "Dice per object class (deployable; mean over the class's slices)", "class")):
        groups = ordered([r["group"] for r in rows if r["level"] == level])
        lines += ["", f"### {title}", "", f"| {key} | objects | " + " | ".join(prompts) + " |",
                  "|---|---|" + "---|" * len(prompts)]
        for g in groups:
            cells = [idx.get((level, g, model, p, "deployable")) for p in prompts]
            n = next((c["objects"] for c in cells if c), "?")
            lines.append(f"| {g} | {n} | " + " | ".join(f"{float(c['dice']):.3f}" if c else "–" for c in cells) + " |")
    lines += ["", *efficiency_table(out)]
    return "\n".join(lines) + "\n"


def efficiency_table(out: Path) -> list[str]:
    eff = [r for r in read(out / "efficiency.csv") if r.get("invocation")]
    if not eff:
        return ["No efficiency rows with an invocation id: re-run the evaluation to time the models."]
    last = eff[-1]["invocation"]
    eff = [r for r in eff if r["invocation"] == last]
    if any(r.get("process") == "all" for r in eff):  # a multi-process run: its aggregate rows
        eff = [r for r in eff if r.get("process") == "all"]
    first = eff[0]
    lines = [f"### Efficiency in the same run", "",
             f"One invocation ({first.get('device_name') or first['device']}, {first.get('cpu_count')} cores, "
             f"{first.get('torch_threads')} torch threads, load average {float(first.get('load_avg_1min') or 0):.1f} "
             "while timing; above the core count the figures are inflated by other work).", "",
             "| model | parameters | memory footprint | encoder ms / image | decoder ms / prompt | peak RSS |",
             "|---|---|---|---|---|---|"]
    base_mem = float(first["memory_footprint_mb"])
    for r in eff:
        mem = float(r["memory_footprint_mb"])
        ratio = "" if r is first else f" ({mem / base_mem:.2f}×)"
        lines.append(f"| {r['model']} | {int(r['parameters']):,} | {mem:.1f} MB{ratio} | "
                     f"{float(r['encoder_ms_per_image']):,.0f} | {float(r['decoder_ms_per_prompt']):,.1f} | "
                     f"{float(r['peak_rss_mb']):,.0f} MB |")
    return lines


def nf4_tables(out: Path) -> str:
    rows = read(out / "summary.csv")
    idx = summary_index(rows)
    models = list(dict.fromkeys(r["model"] for r in rows))
    if len(models) < 2:
        raise SystemExit(f"{out}: needs two models, found {models}")
    a, b = models[:2]
    prompts = [p for p in ("point1", "point5", "point5neg5", "box", "box_point1") if any(r["prompt"] == p for r in rows)]
    lines = [f"| prompt (deployable) | Dice {a} | Dice {b} | {b} / {a} |", "|---|---|---|---|"]
    for p in prompts:
        ra, rb = idx.get(("overall", "all", a, p, "deployable")), idx.get(("overall", "all", b, p, "deployable"))
        if ra and rb:
            da, db = float(ra["dice"]), float(rb["dice"])
            lines.append(f"| {p} | {da:.3f} | {db:.3f} | {db / da:.2f} |" if da else f"| {p} | {da:.3f} | {db:.3f} | – |")
    per_class = defaultdict(dict)
    for r in rows:
        if r["level"] == "class" and r["selection"] == "deployable" and r["prompt"] == "box":
            per_class[r["group"]][r["model"]] = (float(r["dice"]), r["objects"])
    if per_class:
        lines += ["", f"| class (box, deployable) | objects | Dice {a} | Dice {b} |", "|---|---|---|---|"]
        for g, m in sorted(per_class.items()):
            if a in m and b in m:
                lines.append(f"| {g} | {m[a][1]} | {m[a][0]:.3f} | {m[b][0]:.3f} |")
    lines += ["", *efficiency_table(out)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="an eval output folder (summary.csv, efficiency.csv)")
    ap.add_argument("--section", choices=("sample", "nf4"), required=True)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    text = (sample_tables if args.section == "sample" else nf4_tables)(args.out)
    print(text)
    if not args.no_write:
        doc_sections.write_section(DOC, text, f"<!-- eval-{args.section}:start -->", f"<!-- eval-{args.section}:end -->")
    return 0


if __name__ == "__main__":
    sys.exit(main())
