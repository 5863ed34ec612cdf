"""``summary.md``, summary CSVs and PNG plots from the per-object rows and the efficiency rows.

How each table averages (also written into summary.md):
- **per object class**: mean over the slices where that class (dataset, object) was evaluated;
- **per dataset**: mean of its class means (each class counts once, however many slices it has);
- **per modality**: mean of the class means of all classes in datasets of that modality;
- **overall**: mean of all class means (the "class mean" of the reference numbers in the data README).
Models sit side by side; every model after the first also gets its Dice ratio to the first model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .results import write_csv

SUMMARY_COLUMNS = ("level", "group", "model", "prompt", "selection", "classes", "objects", "dice", "nsd")


def class_means(rows: Sequence[dict]) -> dict:
    """(model, prompt, selection, dataset, object) -> {"dice", "nsd", "objects", "modality"}.

    ``objects`` counts the slices where the class was evaluated (one object per class and slice).
    """
    acc = defaultdict(list)
    modality = {}
    for r in rows:
        key = (r["model"], r["prompt"], r["selection"], r["dataset"], r["object"])
        acc[key].append((float(r["dice"]), float(r["nsd"])))
        modality[r["dataset"]] = r["modality"]
    out = {}
    for key, vals in acc.items():
        arr = np.asarray(vals)
        out[key] = {"dice": float(arr[:, 0].mean()), "nsd": float(arr[:, 1].mean()), "objects": len(vals),
                    "modality": modality[key[3]]}
    return out


def grouped_means(per_class: dict, level: str) -> dict:
    """Mean of class means per (model, prompt, selection, group); ``level`` is dataset, modality or overall."""
    acc = defaultdict(list)
    for (model, prompt, sel, dataset, obj), v in per_class.items():
        group = {"dataset": dataset, "modality": v["modality"], "overall": "all", "class": f"{dataset}/{obj}"}[level]
        acc[(model, prompt, sel, group)].append(v)
    return {k: {"dice": float(np.mean([v["dice"] for v in vs])), "nsd": float(np.mean([v["nsd"] for v in vs])),
                "classes": len(vs), "objects": int(sum(v["objects"] for v in vs))} for k, vs in acc.items()}


def summary_rows(rows: Sequence[dict]) -> list[dict]:
    """Long-format table of every level (for ``summary.csv``)."""
    per_class = class_means(rows)
    out = []
    for level in ("overall", "modality", "dataset", "class"):
        for (model, prompt, sel, group), v in sorted(grouped_means(per_class, level).items()):
            out.append({"level": level, "group": group, "model": model, "prompt": prompt, "selection": sel,
                        "classes": v["classes"], "objects": v["objects"], "dice": round(v["dice"], 4),
                        "nsd": round(v["nsd"], 4)})
    return out


def _fmt(x, digits=3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _side_by_side(means: dict, models: list[str], prompts: list[str], selections: list[str], groups: list[str],
                  group_header: str) -> list[str]:
    first = models[0]
    head = [group_header, "prompt", "selection", "classes", "objects"]
    head += [f"Dice {m}" for m in models] + [f"Dice {m} / {first}" for m in models[1:]]
    head += [f"NSD {m}" for m in models]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        for p in prompts:
            for s in selections:
                vals = [means.get((m, p, s, g)) for m in models]
                if all(v is None for v in vals):
                    continue
                ref = next(v for v in vals if v is not None)
                dice = [None if v is None else v["dice"] for v in vals]
                ratios = [None if (d is None or dice[0] in (None, 0)) else d / dice[0] for d in dice[1:]]
                cells = [g, p, s, str(ref["classes"]), str(ref["objects"])]
                cells += [_fmt(d) for d in dice] + [_fmt(r, 2) for r in ratios]
                cells += [_fmt(None if v is None else v["nsd"]) for v in vals]
                lines.append("| " + " | ".join(cells) + " |")
    return lines


def efficiency_table(eff_rows: Sequence[dict]) -> list[str]:
    """Markdown table of ``efficiency.csv`` with encoder-time and memory ratios to the first model."""
    if not eff_rows:
        return ["(no model was timed in this run)"]
    first = eff_rows[0]

    def num(r, k):
        try:
            return float(r[k])
        except (TypeError, ValueError, KeyError):
            return None

    head = ["model", "device", "parameters", "memory footprint MB", "encoder ms/image", "decoder ms/prompt",
            "peak RSS MB", "peak VRAM MB", "images timed", "encoder time / first", "memory / first"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in eff_rows:
        enc, mem = num(r, "encoder_ms_per_image"), num(r, "memory_footprint_mb")
        enc0, mem0 = num(first, "encoder_ms_per_image"), num(first, "memory_footprint_mb")
        cells = [str(r["model"]), str(r.get("device", "")), f"{int(float(r['parameters'])):,}",
                 _fmt(mem, 1), _fmt(enc, 1), _fmt(num(r, "decoder_ms_per_prompt"), 1), _fmt(num(r, "peak_rss_mb"), 0),
                 _fmt(num(r, "peak_vram_mb"), 0), str(r.get("images_timed", "")),
                 _fmt(enc / enc0 if enc and enc0 else None, 2), _fmt(mem / mem0 if mem and mem0 else None, 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_dice_by_modality(rows, models, prompts, selections, path) -> Path:
    """Grouped bars: Dice per modality (panels) per prompt mode (x) per model (bars); one row per selection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = grouped_means(class_means(rows), "modality")
    modalities = sorted({k[3] for k in means})
    fig, axes = plt.subplots(len(selections), len(modalities), squeeze=False, sharey=True,
                             figsize=(max(4.0, 1.1 * len(prompts) * len(modalities) + 1.5), 3.2 * len(selections)))
    width = 0.8 / len(models)
    x = np.arange(len(prompts))
    for i, sel in enumerate(selections):
        for j, mod in enumerate(modalities):
            ax = axes[i][j]
            for k, m in enumerate(models):
                vals = [means.get((m, p, sel, mod), {}).get("dice", np.nan) for p in prompts]
                ax.bar(x + (k - (len(models) - 1) / 2) * width, vals, width, label=m)
            ax.set_xticks(x, prompts, rotation=30, ha="right", fontsize=8)
            ax.set_ylim(0, 1)
            ax.set_title(f"{mod} — {sel}", fontsize=9)
            if j == 0:
                ax.set_ylabel("Dice (class mean)")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_dice_vs_latency(rows, eff_rows, models, prompts, selection, path) -> Path | None:
    """One point per (model, prompt mode): overall class-mean Dice against encoder ms per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latency = {}
    for r in eff_rows:
        try:
            latency[r["model"]] = float(r["encoder_ms_per_image"])
        except (TypeError, ValueError):
            pass
    if not latency:
        return None
    means = grouped_means(class_means(rows), "overall")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    markers = "osD^v<>"
    top = {}  # model -> highest point, where its name is written (once per model)
    for k, p in enumerate(prompts):
        xs, ys = [], []
        for m in models:
            v = means.get((m, p, selection, "all"))
            if v is not None and m in latency:
                xs.append(latency[m]); ys.append(v["dice"])
                top[m] = max(top.get(m, -1.0), v["dice"])
        ax.scatter(xs, ys, marker=markers[k % len(markers)], label=p)
    for m, y in top.items():
        ax.annotate(m, (latency[m], y), fontsize=7, xytext=(4, 6), textcoords="offset points")
    ax.set_xlim(0, 1.25 * max(latency.values()))
    ax.set_xlabel("encoder ms / image")
    ax.set_ylabel(f"Dice, class mean ({selection})")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, title="prompt", title_fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def write_report(output_dir, rows: Sequence[dict], eff_rows: Sequence[dict], failures: Sequence[dict],
                 models: list[str], prompts: list[str], selections: list[str], settings_text: str = "",
                 plots: bool = True) -> Path:
    """Write ``summary.md``, ``summary.csv`` and the plots into ``output_dir``; returns the summary path."""
    out = Path(output_dir)
    models = [m for m in models if any(r["model"] == m for r in rows)] or list(models)
    write_csv(out / "summary.csv", summary_rows(rows), SUMMARY_COLUMNS)
    per_class = class_means(rows)
    lines = ["# Evaluation summary", ""]
    if settings_text:
        lines += [settings_text, ""]
    n_images = len({(r["dataset"], r["image"]) for r in rows})
    lines += [f"{len(rows)} per-object rows from {n_images} slices, {len(models)} model(s): "
              + ", ".join(f"`{m}`" for m in models) + ".", ""]
    if failures:
        lines += [f"**{len(failures)} slice(s) could not be evaluated** and are left out (see failures.csv):", ""]
        lines += [f"- {f['dataset']}/{f['image']}: {f['error']}" for f in failures] + [""]
    lines += [
        "## How the tables average", "",
        "- per object class: mean over the slices where the class was evaluated (>= min_object_pixels);",
        "- `classes`: object classes averaged; `objects`: (class, slice) pairs behind them;",
        "- per dataset: mean of its class means; per modality: mean of the class means of its datasets' classes;",
        "- overall: mean of all class means (the 'class mean' of the reference numbers).",
        "- oracle = best Dice of the candidate masks (the paper's choice, not deployable); deployable = highest "
        "predicted IoU. Modes decoded with a single mask score that mask under both labels.",
        "- ratios: Dice of each model divided by the first model's Dice.", "",
    ]
    for title, level, header in (("Overall", "overall", "scope"), ("Per modality", "modality", "modality"),
                                 ("Per dataset", "dataset", "dataset"), ("Per object class", "class", "class")):
        means = grouped_means(per_class, level)
        groups = sorted({k[3] for k in means})
        lines += [f"## {title}", ""] + _side_by_side(means, models, prompts, selections, groups, header) + [""]
    lines += ["## Efficiency (measured in this run)", ""] + efficiency_table(eff_rows) + [""]
    if plots and rows:
        sel = "deployable" if "deployable" in selections else selections[0]
        plot_dice_by_modality(rows, models, prompts, selections, out / "dice_by_modality.png")
        lines += ["## Plots", "", "![Dice per modality](dice_by_modality.png)", ""]
        if plot_dice_vs_latency(rows, eff_rows, models, prompts, sel, out / "dice_vs_encoder_latency.png"):
            lines += [f"![Dice vs encoder latency ({sel})](dice_vs_encoder_latency.png)", ""]
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    return path
