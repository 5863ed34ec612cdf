"""Figures and numbers of the CPU distillation experiment (run by experiments/run_distill_experiment.sh).

Reads ``OUT/student`` (the distill output: distill_summary.json, logs/metrics.csv) and ``OUT/eval``
(``minisam-train eval`` with the teacher and the student: per_object.csv, efficiency.csv); measures the two
encoders' latency *interleaved* (teacher, student, teacher, ... so a busy shared CPU slows both alike) and
their memory; writes ``OUT/distill_report.json`` and ``docs/images/distill_*.png``.

Usage: python experiments/distill_report.py OUT [--teacher-name teacher_litemedsam] [--student-name student]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

DOCS_IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"


def interleaved_latency(teacher, student, reps: int = 5) -> dict:
    x = torch.rand(1, 3, 256, 256)
    times = {"teacher": [], "student": []}
    with torch.no_grad():
        for name, b in (("teacher", teacher), ("student", student)):  # warm-up
            b.encode(x.to(b.device) if b.spec.image_size == 256 else torch.rand(1, 3, b.spec.image_size,
                                                                                  b.spec.image_size))
        for _ in range(reps):
            for name, b in (("teacher", teacher), ("student", student)):
                inp = torch.rand(1, 3, b.spec.image_size, b.spec.image_size)
                t0 = time.perf_counter()
                b.encode(inp)
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"teacher_encoder_s": med["teacher"], "student_encoder_s": med["student"],
            "speedup": med["teacher"] / med["student"], "reps": reps, "all_s": times}


def read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def dice_ratios(rows, teacher: str, student: str, prompt: str = "box") -> dict:
    """Per object (slice x class) student/teacher Dice, and per-class means (deployable = single box mask)."""
    by = defaultdict(dict)
    sel = {r["selection"] for r in rows}
    use_sel = "deployable" if "deployable" in sel else sorted(sel)[0]
    for r in rows:
        if r["prompt"] != prompt or r["selection"] != use_sel:
            continue
        by[(r["dataset"], r["image"], r["object"])][r["model"]] = float(r["dice"])
    pairs = [(v[teacher], v[student], k) for k, v in by.items() if teacher in v and student in v]
    t = np.array([p[0] for p in pairs])
    s = np.array([p[1] for p in pairs])
    classes = defaultdict(lambda: ([], []))
    for tt, ss, k in pairs:
        classes[f"{k[0]}/{k[2]}"][0].append(tt)
        classes[f"{k[0]}/{k[2]}"][1].append(ss)
    per_class = {c: {"teacher": float(np.mean(a)), "student": float(np.mean(b)), "n": len(a)}
                 for c, (a, b) in sorted(classes.items())}
    tm = np.mean([v["teacher"] for v in per_class.values()])
    sm = np.mean([v["student"] for v in per_class.values()])
    return {
        "objects": len(pairs), "selection": use_sel,
        "teacher_mean_dice_objects": float(t.mean()), "student_mean_dice_objects": float(s.mean()),
        "ratio_of_object_means": float(s.mean() / t.mean()),
        "median_per_object_ratio": float(np.median(s / np.clip(t, 1e-6, None))),
        "teacher_class_mean": float(tm), "student_class_mean": float(sm), "ratio_of_class_means": float(sm / tm),
        "per_class": per_class, "pairs": [(float(a), float(b)) for a, b, _ in pairs],
    }


def loss_rows(student_dir: Path) -> list[dict]:
    """The logged loss rows: logs/metrics.csv, or the run summary's history (a run copied back without logs)."""
    metrics = student_dir / "logs" / "metrics.csv"
    if metrics.is_file():
        return read_csv(metrics)
    return json.loads((student_dir / "distill_summary.json").read_text())["history"]


def plot_loss(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = [int(float(r["step"])) for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(step, [float(r["feature_mse"]) for r in rows], label="feature MSE (normalised)")
    ax[0].set_yscale("log")
    ax[1].plot(step, [float(r["mask_kl"]) for r in rows], color="C1", label="mask KL (T=2)")
    for a in ax:
        a.set_xlabel("optimizer step")
        a.legend()
        a.grid(alpha=0.3)
    fig.suptitle("LiteMedSAM -> random_student_256 on this CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_dice_scatter(ratios, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = np.array(ratios["pairs"])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(p[:, 0], p[:, 1], s=12, alpha=0.7)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.plot([0, 1], [0, 0.9], "r:", lw=0.8, label="student = 0.9 x teacher")
    ax.set_xlabel("teacher Dice (LiteMedSAM)")
    ax.set_ylabel("student Dice")
    ax.set_title(f"box prompt, {ratios['objects']} test objects")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_example(teacher, student, shared_data: Path, path):
    """One test slice: the teacher's and the student's box mask side by side."""
    import imageio.v3 as iio
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_qlora_minisam import MiniSamPredictor
    from napari_qlora_minisam.masks import tight_box

    d = shared_data / "cosmos_sample" / "data" / "test_data" / "22_Heart"
    image = iio.imread(d / "images" / "22_Heart_4_5.png")
    label = iio.imread(d / "labels" / "22_Heart_4_5.png")
    fig, ax = plt.subplots(1, 3, figsize=(10, 3.6))
    ax[0].imshow(image, cmap="gray")
    ax[0].set_title("image + boxes (LV, RV)")
    for k, (name, b) in enumerate((("teacher", teacher), ("student", student))):
        pred = MiniSamPredictor(b)
        pred.set_image(image)
        ax[k + 1].imshow(image, cmap="gray")
        for value, color in ((85, "Reds"), (255, "Blues")):
            box = tight_box(label == value)
            masks, _, _ = pred.predict(box=box, multimask=False)
            ax[k + 1].imshow(np.ma.masked_where(~masks[0], masks[0]), cmap=color, alpha=0.5, vmin=0, vmax=1)
            if k == 0:
                ax[0].add_patch(plt.Rectangle(box[:2], *(box[2:] - box[:2]), fill=False, color="y"))
        ax[k + 1].set_title(name)
    for a in ax:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--teacher-name", default="teacher_litemedsam")
    ap.add_argument("--student-name", default="student")
    ap.add_argument("--student-dir", default=None, help="default: OUT/student")
    ap.add_argument("--shared-data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--figures", default=str(DOCS_IMAGES), help="where the figures go (default: docs/images)")
    args = ap.parse_args()
    out = Path(args.out)
    student_dir = Path(args.student_dir or out / "student")
    from napari_qlora_minisam import load_model

    teacher = load_model("litemedsam", device="cpu")
    student = load_model(str(student_dir), device="cpu")
    report = {"latency": interleaved_latency(teacher, student, args.reps)}
    report["memory"] = {
        "teacher_bytes": teacher.memory_footprint(), "student_bytes": student.memory_footprint(),
        "teacher_encoder_params": sum(p.numel() for p in teacher.image_encoder.parameters()),
        "student_encoder_params": sum(p.numel() for p in student.image_encoder.parameters()),
    }
    report["memory"]["ratio_student_over_teacher"] = report["memory"]["student_bytes"] / report["memory"]["teacher_bytes"]
    figures = Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    averaged = student_dir / "average_summary.json"
    if averaged.is_file():  # a weight average (minisam-train average): no training of its own, no loss curve
        summary = json.loads(averaged.read_text())
        report["training"] = {"averaged_from": summary["sources"], "weights": summary["weights"],
                              "sources": summary["source_summaries"]}
    else:
        summary = json.loads((student_dir / "distill_summary.json").read_text())
        report["training"] = {k: summary[k] for k in ("steps", "train_seconds", "teacher_pass_seconds",
                                                      "teacher_seconds_per_slice", "cache_read_seconds_per_slice",
                                                      "slices_used", "run_seconds") if k in summary}
        report["training"]["cache"] = summary.get("cache")
        plot_loss(loss_rows(student_dir), figures / "distill_loss.png")
    per_object = out / "eval" / "per_object.csv"
    if per_object.is_file():
        report["dice"] = dice_ratios(read_csv(per_object), args.teacher_name, args.student_name)
        plot_dice_scatter(report["dice"], figures / "distill_dice_scatter.png")
        report["dice"].pop("pairs")
    eff = out / "eval" / "efficiency.csv"
    if eff.is_file():
        report["eval_efficiency"] = read_csv(eff)
    plot_example(teacher, student, Path(args.shared_data), figures / "distill_example.png")
    (out / f"distill_report_{args.student_name}.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: v for k, v in report.items() if k != "eval_efficiency"}, indent=1, default=str))


if __name__ == "__main__":
    main()
