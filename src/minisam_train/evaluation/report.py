"""``summary.md``, summary CSVs and PNG plots from the per-object rows and the efficiency rows.

How each table averages (also written into summary.md):
- **per object class**: mean over the slices where that class (dataset, object) was evaluated;
- **per dataset**: mean of its class means (each class counts once, however many slices it has);
- **per modality**: mean of the class means of all classes in datasets of that modality;
- **overall**: mean of all class means (the "class mean" of the reference numbers in the data README).
Models sit side by side; every model after the first also gets its Dice ratio to the first model.

``summary.md`` opens with the COSMOS layout (Dice in percent, modality x prompt mode S1-S6, one table per
selection, objects behind each mean). Modes decoded with a single mask give the same mask under both
selections; the long tables print them once, as ``single mask``. Efficiency rows are grouped by the
invocation that timed them, and ratios are only taken within one invocation; an invocation of several
processes lists each model's ``all`` row (its throughput over all processes) and then one row per process.
Every file is replaced atomically (temporary file + ``os.replace``), so a re-run never leaves the folder
without a summary.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import math

import numpy as np

from .efficiency import AGGREGATE
from .results import replacing, write_csv, write_text_atomic

SUMMARY_COLUMNS = ("level", "group", "model", "prompt", "selection", "classes", "objects", "dice", "nsd")
# This project's prompt modes under the names of the COSMOS paper (S1 "everything": oracle rows only).
COSMOS_MODES = {"everything": "S1", "point1": "S2", "point5": "S3", "point5neg5": "S4", "box": "S5", "box_point1": "S6"}
SINGLE_MASK = "single mask"


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


def _same(a: dict | None, b: dict | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a["objects"] == b["objects"] and math.isclose(a["dice"], b["dice"], abs_tol=1e-9)
            and math.isclose(a["nsd"], b["nsd"], abs_tol=1e-9))


def _row_selections(means: dict, models: list[str], prompt: str, group: str, selections: list[str],
                    single_mask) -> list[tuple[str, str]]:
    """(label, selection to read) per row: one ``single mask`` row for a single-mask mode whose oracle and
    deployable values agree for every model, else one row per selection."""
    if prompt in single_mask and {"oracle", "deployable"} <= set(selections) and all(
            _same(means.get((m, prompt, "oracle", group)), means.get((m, prompt, "deployable", group)))
            for m in models):
        return [(SINGLE_MASK, "oracle")]
    return [(s, s) for s in selections]


def _objects_cell(vals: list) -> str:
    """Objects behind the means: one number, or one per model (``81 / 75``) where the models differ."""
    counts = [v["objects"] for v in vals if v is not None]
    return str(counts[0]) if len(set(counts)) == 1 else " / ".join("–" if v is None else str(v["objects"])
                                                                   for v in vals)


def _side_by_side(means: dict, models: list[str], prompts: list[str], selections: list[str], groups: list[str],
                  group_header: str, single_mask=()) -> list[str]:
    first = models[0]
    head = [group_header, "prompt", "selection", "classes", "objects"]
    head += [f"Dice {m}" for m in models] + [f"Dice {m} / {first}" for m in models[1:]]
    head += [f"NSD {m}" for m in models]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        for p in prompts:
            for label, s in _row_selections(means, models, p, g, selections, single_mask):
                vals = [means.get((m, p, s, g)) for m in models]
                if all(v is None for v in vals):
                    continue
                ref = next(v for v in vals if v is not None)
                dice = [None if v is None else v["dice"] for v in vals]
                ratios = [None if (d is None or dice[0] in (None, 0)) else d / dice[0] for d in dice[1:]]
                cells = [g, p, label, str(ref["classes"]), _objects_cell(vals)]
                cells += [_fmt(d) for d in dice] + [_fmt(r, 2) for r in ratios]
                cells += [_fmt(None if v is None else v["nsd"]) for v in vals]
                lines.append("| " + " | ".join(cells) + " |")
    return lines


def cosmos_pivot(per_class: dict, models: list[str], prompts: list[str], selection: str,
                 single_mask=()) -> list[str]:
    """The COSMOS paper's layout for one selection: rows = modality (then ``all``, the overall class mean),
    columns = the prompt modes S1-S6 that were run, cells = mean Dice x 100 and ``(objects)``; with several
    models, one row per (modality, model)."""
    by_mod = grouped_means(per_class, "modality")
    overall = grouped_means(per_class, "overall")
    modes = [p for p in COSMOS_MODES if p in prompts]
    modalities = sorted({k[3] for k in by_mod if k[2] == selection and k[1] in modes})
    several = len(models) > 1
    head = ["modality"] + (["model"] if several else [])
    head += [f"{COSMOS_MODES[p]} {p}" + (f" ({SINGLE_MASK})" if p in single_mask else "") for p in modes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group, means in [(m, by_mod) for m in modalities] + [("all", overall)]:
        for model in models:
            vals = [means.get((model, p, selection, group)) for p in modes]
            if all(v is None for v in vals):
                continue
            cells = [f"**{group}**" if group == "all" else group] + ([model] if several else [])
            cells += ["–" if v is None else f"{100 * v['dice']:.1f} ({v['objects']})" for v in vals]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _num(r: dict, k: str):
    try:
        return float(r[k])
    except (TypeError, ValueError, KeyError):
        return None


def _processes(r: dict) -> int:
    n = _num(r, "processes")
    return int(n) if n else 1


def headline_rows(eff_rows: Sequence[dict]) -> list[dict]:
    """One efficiency row per model and invocation: a single process's row, or the ``all`` row of several
    (their per-process rows left out)."""
    return [r for r in eff_rows if _processes(r) <= 1 or str(r.get("process")) == AGGREGATE]


def invocation_groups(eff_rows: Sequence[dict]) -> list[tuple[str, list[dict]]]:
    """Efficiency rows grouped by the invocation that timed them, oldest first (the id starts with the start
    time); rows without an id (written before ids were recorded) form one group ``""``, listed first."""
    groups: dict[str, list[dict]] = {}
    for r in eff_rows:
        groups.setdefault(str(r.get("invocation") or ""), []).append(r)
    return sorted(groups.items(), key=lambda kv: kv[0])


def efficiency_table(eff_rows: Sequence[dict], current_invocation: str | None = None) -> list[str]:
    """Markdown tables of ``efficiency.csv``, one per invocation (one ``minisam-train eval`` command), each
    with the machine, its load average during the timings, and encoder-time and memory ratios to the first
    model timed in that invocation. Rows of different invocations are never put into one ratio. An invocation
    of several processes has a ``process`` column: each model's ``all`` row (slices/s over all processes,
    the ratios) and then its row per process."""
    if not eff_rows:
        return ["(no model was timed)"]
    groups = invocation_groups(eff_rows)
    lines = []
    if len(groups) > 1:
        lines += [f"The models were timed by {len(groups)} separate invocations (a resumed run times only the "
                  "models it still had to run). Timings depend on the machine and its load, so ratios are "
                  "taken only within one invocation; do not compare times across the tables below.", ""]
    for inv, rows in groups:
        several = max(_processes(r) for r in rows) > 1
        heads = headline_rows(rows)
        first = heads[0] if heads else rows[0]
        head = ["model"] + (["process"] if several else []) + [
            "device", "parameters", "memory footprint MB", "encoder ms/image", "decoder ms/prompt", "peak RSS MB",
            "peak VRAM MB", "images timed", "slices/s", "load avg (1 min)", "encoder time / first",
            "memory / first"]
        if inv:
            cpus = first.get("cpu_count") or "?"
            threads = (f", {first['torch_threads']} torch threads" + (" per process" if several else "")
                       if first.get("torch_threads") else "")
            procs = f", {_processes(first)} processes" if several else ""
            title = f"### Invocation `{inv}`" + (" (this run)" if inv == current_invocation else "")
            where = (f"Machine: {first.get('device_name') or first.get('device') or '?'}, {cpus} CPUs usable"
                     f"{procs}{threads}. Load average (1 min) while timing: "
                     + ", ".join(f"{r['model']} {_fmt(_num(r, 'load_avg_1min'), 1)}" for r in heads)
                     + f". Ratios: to `{first['model']}`.")
            if several:
                where += (" `all`: the slices of every process over the wall time from the first process's start "
                          "to the last one's end (model loading left out); its encoder ms/image is the "
                          "processes' medians weighted by their images.")
            loads = [x for x in (_num(r, "load_avg_1min") for r in heads) if x is not None]
            if loads and _num(first, "cpu_count") and max(loads) > _num(first, "cpu_count"):
                where += (" **Busy machine**: the load average exceeded the CPU count, so the times include "
                          "waiting for a CPU, and even ratios within this invocation are unreliable.")
            ratio_ok = True
        else:
            title = "### Timed before invocations were recorded"
            where = ("These rows come from an `efficiency.csv` written without an invocation id or a load average; "
                     "they may come from different runs, so no ratios are taken.")
            ratio_ok = False
        lines += [title, "", where, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        enc0, mem0 = _num(first, "encoder_ms_per_image"), _num(first, "memory_footprint_mb")
        ordered = rows
        if several:  # each model's `all` row, then its processes
            ordered = [r for h in heads for r in [h] + [x for x in rows if x["model"] == h["model"] and x is not h]]
            ordered += [r for r in rows if r not in ordered]
        for r in ordered:
            enc, mem = _num(r, "encoder_ms_per_image"), _num(r, "memory_footprint_mb")
            params = _num(r, "parameters")
            part = str(r.get("process", ""))
            is_head = not several or part == AGGREGATE
            cells = [str(r["model"])]
            if several:
                cells.append(f"{AGGREGATE} ({_processes(r)})" if part == AGGREGATE else part)
            cells += [str(r.get("device", "")), "–" if params is None else f"{int(params):,}",
                      _fmt(mem, 1), _fmt(enc, 1), _fmt(_num(r, "decoder_ms_per_prompt"), 1),
                      _fmt(_num(r, "peak_rss_mb"), 0), _fmt(_num(r, "peak_vram_mb"), 0),
                      str(r.get("images_timed", "")), _fmt(_num(r, "slices_per_s"), 2),
                      _fmt(_num(r, "load_avg_1min"), 1),
                      _fmt(enc / enc0 if ratio_ok and is_head and enc and enc0 else None, 2),
                      _fmt(mem / mem0 if ratio_ok and is_head and mem and mem0 else None, 2)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines[:-1]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    _pyplot().close(fig)
    return Path(path)


def dice_by_modality_figure(rows, models, prompts, selections):
    """The figure of :func:`plot_dice_by_modality`. The legend sits outside the panels, to their right, and
    the figure widens with the number of models, so bars stay readable with many models. A prompt mode with
    no score in a panel says why (``everything`` is scored by the oracle only)."""
    plt = _pyplot()
    means = grouped_means(class_means(rows), "modality")
    modalities = sorted({k[3] for k in means})
    panel_w = max(3.0, len(prompts) * (0.3 + 0.12 * len(models)))
    legend_w = 0.8 + 0.065 * max(len(m) for m in models)
    fig, axes = plt.subplots(len(selections), len(modalities), squeeze=False, sharey=True, layout="constrained",
                             figsize=(panel_w * len(modalities) + legend_w + 0.6, 3.2 * len(selections)))
    width = 0.8 / len(models)
    x = np.arange(len(prompts))
    for i, sel in enumerate(selections):
        for j, mod in enumerate(modalities):
            ax = axes[i][j]
            scored = np.zeros(len(prompts), bool)
            for k, m in enumerate(models):
                vals = [means.get((m, p, sel, mod), {}).get("dice", np.nan) for p in prompts]
                scored |= np.isfinite(vals)
                ax.bar(x + (k - (len(models) - 1) / 2) * width, vals, width, label=m)
            for xi in np.nonzero(~scored)[0]:  # an empty slot says why, not just nothing
                why = "oracle\nonly" if prompts[xi] == "everything" and sel != "oracle" else "no\nobjects"
                ax.text(xi, 0.03, why, ha="center", va="bottom", fontsize=7, color="0.45")
            ax.set_xticks(x, prompts, rotation=30, ha="right", fontsize=8)
            ax.set_ylim(0, 1)
            ax.set_title(f"{mod} — {sel}", fontsize=9)
            if j == 0:
                ax.set_ylabel("Dice (class mean)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7, title="model", title_fontsize=7)
    return fig


def plot_dice_by_modality(rows, models, prompts, selections, path) -> Path:
    """Grouped bars: Dice per modality (panels) per prompt mode (x) per model (bars); one row per selection."""
    return _save(dice_by_modality_figure(rows, models, prompts, selections), path)


def plot_dice_vs_latency(rows, eff_rows, models, prompts, selection, path) -> Path | None:
    """One point per (model, prompt mode): overall class-mean Dice against encoder ms per image. Where the
    models were timed by different invocations, each name says which (``[run k]``, oldest first): such
    latencies are not comparable."""
    plt = _pyplot()
    latency, run_of = {}, {}
    groups = invocation_groups(headline_rows(eff_rows))
    for k, (_, grp) in enumerate(groups, 1):
        for r in grp:
            if _num(r, "encoder_ms_per_image") is not None:
                latency[r["model"]] = _num(r, "encoder_ms_per_image")
                run_of[r["model"]] = k
    if not latency:
        return None
    means = grouped_means(class_means(rows), "overall")
    fig, ax = plt.subplots(figsize=(6.5, 4), layout="constrained")
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
        label = f"{m} [run {run_of[m]}]" if len(groups) > 1 else m
        ax.annotate(label, (latency[m], y), fontsize=7, xytext=(4, 6), textcoords="offset points")
    ax.set_xlim(0, 1.25 * max(latency.values()))
    ax.set_xlabel("encoder ms / image" + (" (from different invocations: not comparable)" if len(groups) > 1 else ""))
    ax.set_ylabel(f"Dice, class mean ({selection})")
    ax.set_ylim(0, 1)
    fig.legend(loc="outside right upper", fontsize=7, title="prompt", title_fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def write_report(output_dir, rows: Sequence[dict], eff_rows: Sequence[dict], failures: Sequence[dict],
                 models: list[str], prompts: list[str], selections: list[str], settings_text: str = "",
                 plots: bool = True, single_mask=(), current_invocation: str | None = None) -> Path:
    """Write ``summary.md``, ``summary.csv`` and the plots into ``output_dir``; returns the summary path.

    ``single_mask``: the prompt modes decoded with one mask (printed once where oracle = deployable).
    ``current_invocation``: the id of the efficiency rows timed by this run (marked in the table).
    Each file is written to a temporary file and moved over the old one: the previous ``summary.md`` stays
    readable until the new one is complete.
    """
    out = Path(output_dir)
    models = [m for m in models if any(r["model"] == m for r in rows)] or list(models)
    single_mask = tuple(single_mask)
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
        "- `classes`: object classes averaged; `objects`: (class, slice) pairs behind them (one count per model, "
        "`a / b`, where the models differ);",
        "- per dataset: mean of its class means; per modality: mean of the class means of its datasets' classes;",
        "- overall: mean of all class means (the 'class mean' of the reference numbers).",
        "- oracle = best Dice of the candidate masks (the paper's choice, not deployable); deployable = highest "
        "predicted IoU. Modes decoded with a single mask score the same mask under both: their rows are printed "
        "once, as `single mask`.",
        "- ratios: Dice of each model divided by the first model's Dice.", "",
    ]
    lines += ["## Dice (%) per modality and prompt mode (COSMOS layout)", "",
              "As the COSMOS paper prints it: mean Dice x 100 per modality (class means of the modality's classes; "
              "`all` = mean of all class means) and prompt mode S1-S6; in brackets the objects ((class, slice) "
              "pairs) behind the mean." + (f" Modes marked `{SINGLE_MASK}` decode one mask: the same numbers "
                                           "under both selections." if single_mask else ""), ""]
    for sel in selections:
        lines += [f"### {sel}", ""] + cosmos_pivot(per_class, models, prompts, sel, single_mask) + [""]
    for title, level, header in (("Overall", "overall", "scope"), ("Per modality", "modality", "modality"),
                                 ("Per dataset", "dataset", "dataset"), ("Per object class", "class", "class")):
        means = grouped_means(per_class, level)
        groups = sorted({k[3] for k in means})
        lines += [f"## {title}", ""]
        lines += _side_by_side(means, models, prompts, selections, groups, header, single_mask) + [""]
    lines += ["## Efficiency", ""] + efficiency_table(eff_rows, current_invocation) + [""]
    if plots and rows:
        sel = "deployable" if "deployable" in selections else selections[0]
        plot_dice_by_modality(rows, models, prompts, selections, out / "dice_by_modality.png")
        lines += ["## Plots", "", "![Dice per modality](dice_by_modality.png)", ""]
        if plot_dice_vs_latency(rows, eff_rows, models, prompts, sel, out / "dice_vs_encoder_latency.png"):
            lines += [f"![Dice vs encoder latency ({sel})](dice_vs_encoder_latency.png)", ""]
    return write_text_atomic(out / "summary.md", "\n".join(lines))
