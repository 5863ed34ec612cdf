"""Turn an adapter experiment folder (experiments/run_adapt_experiment.sh) into docs/adapters.md numbers.

Reads the adapt runs' ``summary.json`` / ``curves.png``, the cost runs and the eval's ``per_object.csv``;
writes ``OUT/report.md`` (the tables), copies the figures to ``docs/images/adapt_*.png``, replaces the
block between the result markers in ``docs/adapters.md``, and adds the measured scores to the run's adapters
(``OUT/adapters/{ct,mri}/minisam_adapter.json``). It never touches the package: shipping those adapters is the
separate step ``python experiments/ship_adapters.py OUT``.

Usage: python experiments/adapt_report.py runs/adapt_experiment
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import doc_sections  # noqa: E402 - the shared section writer

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- adapt-results:start -->", "<!-- adapt-results:end -->"
MODELS = ("litemedsam", "nf4 adapters off", "nf4 + CT adapter", "nf4 + MRI adapter", "fp32 + CT adapter",
          "fp32 + MRI adapter")
PROMPTS = ("box", "point1", "point5")


def _load(path):
    return json.loads(Path(path).read_text()) if Path(path).exists() else None


def _f(x, d=3):
    return "–" if x is None else f"{x:.{d}f}"


def eval_means(out: Path):
    from minisam_train.evaluation.report import class_means, grouped_means
    from minisam_train.evaluation.results import read_rows

    rows = read_rows(out / "eval" / "per_object.csv")
    if not rows:
        return None, None
    per_class = class_means(rows)
    return grouped_means(per_class, "modality"), grouped_means(per_class, "class")


def training_table(out: Path) -> list[str]:
    head = ["adapter", "data (adapt_train)", "train / val slices", "views", "trainable params", "share",
            "adapter MB", "steps", "stopped", "embed s", "train s", "s / step", "best val Dice (step)",
            "peak RSS MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mod in ("mri", "ct"):
        s = _load(out / mod / "summary.json")
        if not s:
            continue
        d, b = s["data"], s.get("best_validation") or {}
        lines.append("| " + " | ".join([
            mod, ", ".join(d["datasets"]), f"{len(d['train_slices'])} / {len(d['val_slices'])}",
            str(s["train_views"]), f"{s['trainable_params']:,}", f"{100 * s['trainable_share']:.2f} %",
            _f((s["adapter_bytes"] or 0) / 1e6, 2), str(s["steps_done"]), s["stopped"], _f(s["embed_seconds"], 0),
            _f(s["train_seconds"], 0), _f(s["median_step_seconds"], 2),
            f"{_f(b.get('val_dice'))} ({b.get('step', '–')})", _f(s["peak_memory_bytes"] / 2**20, 0)]) + " |")
    return lines


def cost_table(out: Path) -> list[str]:
    runs = [("full fine-tuning (fp32, all weights)", "cost_full"),
            ("QLoRA encoder + decoder (NF4)", "cost_qlora_encdec"),
            ("QLoRA decoder, cached embeddings (NF4) — used", "cost_qlora_dec")]
    found = [(label, _load(out / d / "summary.json")) for label, d in runs]
    found = [(label, s) for label, s in found if s]
    if not found:
        return ["(no cost runs: the experiment ran with SKIP_COST=1)"]
    full = found[0][1] if found[0][0].startswith("full") else None
    head = ["method", "trainable params", "share", "steps", "median s / step", "peak RSS MB",
            "time / step vs full", "trainable vs full", "peak RSS vs full"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, s in found:
        r = lambda k: (s[k] / full[k]) if full and full.get(k) else None  # noqa: E731
        lines.append("| " + " | ".join([
            label, f"{s['trainable_params']:,}", f"{100 * s['trainable_share']:.2f} %", str(s["steps_done"]),
            _f(s["median_step_seconds"], 2), _f(s["peak_memory_bytes"] / 2**20, 0),
            _f(r("median_step_seconds"), 3), _f(r("trainable_params"), 4), _f(r("peak_memory_bytes"), 2)]) + " |")
    return lines


def eval_tables(by_mod, by_class) -> list[str]:
    if by_mod is None:
        return ["(eval missing)"]
    models = [m for m in _models(by_mod)]
    lines = []
    for sel in ("deployable", "oracle"):
        head = ["modality", "prompt"] + [f"Dice {m}" for m in models]
        lines += [f"**{sel}** selection (class mean per modality, test splits)", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for mod in sorted({k[3] for k in by_mod}):
            for p in PROMPTS:
                vals = [by_mod.get((m, p, sel, mod), {}).get("dice") for m in models]
                if all(v is None for v in vals):
                    continue
                lines.append("| " + " | ".join([mod, p] + [_f(v) for v in vals]) + " |")
        lines.append("")
    head = ["class", "prompt"] + [f"Dice {m}" for m in models]
    lines += ["Per object class, deployable selection:", "", "| " + " | ".join(head) + " |",
              "|" + "---|" * len(head)]
    for cls in sorted({k[3] for k in by_class}):
        for p in PROMPTS:
            vals = [by_class.get((m, p, "deployable", cls), {}).get("dice") for m in models]
            if all(v is None for v in vals):
                continue
            lines.append("| " + " | ".join([cls, p] + [_f(v) for v in vals]) + " |")
    return lines


def scores_for(by_mod, adapter_model: str, base: str = "litemedsam") -> dict:
    """What the adapter scored (on the NF4 base it was trained on, and on the fp32 base the plugin loads by
    default) and the zero-shot references, per modality / prompt / selection."""
    out = {}
    fp32_model = adapter_model.replace("nf4 + ", "fp32 + ")
    names = {base: "zero_shot_fp32", "nf4 adapters off": "zero_shot_nf4", adapter_model: "adapter",
             fp32_model: "adapter_on_fp32_base"}
    for (m, p, sel, mod), v in sorted(by_mod.items()):
        if m in names:
            key = names[m]
            out.setdefault(mod, {}).setdefault(f"{p}/{sel}", {})[key] = round(v["dice"], 4)
    return {"source": "minisam-train eval, COSMOS test splits of ../shared/data (splits.json key 'test'); "
                      "class-mean Dice per modality", "dice": out}


def _models(by_mod) -> list[str]:
    """The evaluated models in MODELS order; the zero-shot base under its own name (litemedsam, minisam...)."""
    names = {k[0] for k in by_mod}
    base = [m for m in names if m not in MODELS[1:]]
    return base + [m for m in MODELS[1:] if m in names]


def plot_eval(by_mod, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = _models(by_mod)
    mods = sorted({k[3] for k in by_mod})
    prompts = [p for p in PROMPTS if any(k[1] == p for k in by_mod)]
    fig, axes = plt.subplots(1, len(mods), figsize=(4.2 * len(mods), 3.9), sharey=True, squeeze=False)
    x, w = np.arange(len(prompts)), 0.8 / len(models)
    for j, mod in enumerate(mods):
        ax = axes[0][j]
        for k, m in enumerate(models):
            vals = [by_mod.get((m, p, "deployable", mod), {}).get("dice", np.nan) for p in prompts]
            ax.bar(x + (k - (len(models) - 1) / 2) * w, vals, w, label=m)
        ax.set_xticks(x, prompts)
        ax.set_ylim(0, 1)
        ax.set_title(f"{mod} test objects (deployable)", fontsize=9)
    axes[0][0].set_ylabel("Dice (class mean)")
    # Below the panels: inside one, the legend hides the bars of its first group.
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=7, loc="lower center", ncol=min(len(names), 3), frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--base", default="litemedsam", help="the base the adapters were trained on (its eval name)")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "adapters.md", help="doc with the result markers")
    ap.add_argument("--image-prefix", default="adapt_", help="file-name prefix of the figures in docs/images")
    args = ap.parse_args(argv)
    out = args.out
    images = REPO / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    for mod in ("mri", "ct"):
        if (out / mod / "curves.png").exists():
            shutil.copy(out / mod / "curves.png", images / f"{args.image_prefix}curves_{mod}.png")
    by_mod, by_class = eval_means(out)
    if by_mod:
        plot_eval(by_mod, images / f"{args.image_prefix}eval_dice.png")
    log = (out / "experiment.log").read_text() if (out / "experiment.log").exists() else ""
    report = ["### Training runs", "", *training_table(out), "", "### Training cost: full fine-tuning vs QLoRA", "",
              *cost_table(out), "", "### Test-split Dice (`minisam-train eval`, one run)", "",
              *eval_tables(by_mod, by_class), "", "### Experiment log (UTC time, load average)", "", "```",
              log.strip(), "```"]
    text = "\n".join(report) + "\n"
    (out / "report.md").write_text(text)
    doc = args.doc
    if doc.exists() and START in doc.read_text():
        doc_sections.write_section(doc, text, START, END)
    for mod, model in (("ct", "nf4 + CT adapter"), ("mri", "nf4 + MRI adapter")):
        meta_path = out / "adapters" / mod / "minisam_adapter.json"
        if by_mod and meta_path.exists():
            meta = json.loads(meta_path.read_text())
            meta["scores"] = scores_for(by_mod, model, args.base)
            meta_path.write_text(json.dumps(meta, indent=2, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
