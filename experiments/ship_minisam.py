"""Ship a distilled student as the package's ``minisam`` model, with its card.

    python experiments/ship_minisam.py ROOT --stage B_decoder_loop

``ROOT`` is the folder of experiments/run_minisam_chain.sh (or, with ``--refined``, of
experiments/run_minisam_refine.sh). The stage is the one chosen on ``ROOT/val_eval``
(this script prints the val table and refuses a stage that is not the best there unless ``--force``);
``ROOT/test_eval`` (the last step of experiments/run_minisam_chain.sh, run once the stage is chosen) gives
the test figures. Writes
``src/napari_qlora_minisam/pretrained_models/minisam/``: ``config.json`` + ``model.safetensors`` (fp16) and
``minisam_card.json`` (architecture, MACs, data, recipe, val and test figures, the weights' identity). This
is the only script that writes there.
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


def scores(per_object_csv: Path) -> dict:
    """model -> prompt -> {per-object mean Dice, class means, objects} (deployable selection)."""
    from minisam_train.evaluation.results import read_rows

    rows = [r for r in read_rows(per_object_csv) if r["selection"] == "deployable"]
    if not rows:
        raise SystemExit(f"{per_object_csv}: no rows; run the evaluation first")
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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--stage", required=True)
    ap.add_argument("--teacher", default="teacher_litemedsam")
    ap.add_argument("--force", action="store_true", help="ship a stage that is not the best on val")
    ap.add_argument("--refined", action="store_true",
                    help="ROOT is a run of experiments/run_minisam_refine.sh: the new card keeps the shipped "
                         "card's training stages, which the refined student descends from")
    args = ap.parse_args(argv)
    import torch
    from transformers import SamModel

    from napari_qlora_minisam import load_model

    val = scores(args.root / "val_eval" / "per_object.csv")
    print("val (deployable), per-object mean Dice: " + ", ".join(
        f"{m} box {v['box']['dice_per_object']:.3f}" + (f" point1 {v['point1']['dice_per_object']:.3f}"
                                                      if "point1" in v else "") for m, v in val.items()))
    stages = {m: v for m, v in val.items() if m != args.teacher}
    best = max(stages, key=lambda m: stages[m]["box"]["dice_per_object"])
    if best != args.stage and not args.force:
        raise SystemExit(f"{args.stage} is not the best stage on val ({best} is); pass --force to ship it anyway")
    test = scores(args.root / "test_eval" / "per_object.csv")
    student_dir = args.root / args.stage / "student"
    # the training behind every stage of the chain (an average has none of its own)
    training = {}
    for f in sorted(args.root.glob("*/student/distill_summary.json")):
        summary = json.loads(f.read_text())
        training[f.parent.parent.name] = {k: summary.get(k) for k in (
            "slices_used", "steps", "train_seconds", "global_batch_size", "loop_rounds", "teacher_pass_seconds")}
    recipe = "experiments/run_minisam_chain.sh; docs/minisam.md"
    if args.refined:
        shipped = json.loads((DEST / "minisam_card.json").read_text())
        training = {**shipped["training"], **training}
        recipe = f"{shipped['recipe'].split(';')[0]}, then experiments/run_minisam_refine.sh; docs/minisam.md"

    DEST.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".minisam-", dir=DEST.parent))  # same file system: the rename is atomic
    try:
        net = SamModel.from_pretrained(str(student_dir), dtype=torch.float32)
        net.half().save_pretrained(str(tmp))
        backend = load_model(str(tmp), device="cpu")
        import model_flops

        flops = model_flops.count(str(tmp))
        vision = net.config.vision_config
        card = {
            "name": "minisam",
            "identity": backend.identity,
            "teacher": "litemedsam",
            "stage": args.stage,
            "architecture": {k: getattr(vision, k) for k in (
                "hidden_size", "num_hidden_layers", "num_attention_heads", "global_attn_indexes", "window_size",
                "patch_size", "mlp_dim", "image_size", "use_rel_pos")},
            "encoder_parameters": flops["encoder_params"], "parameters": flops["total_params"],
            "encoder_gmacs": flops["macs"] / 1e9, "encoder_gmacs_attention": flops["sdpa_macs"] / 1e9,
            "training": training,
            "val": val,
            "test": {
                "objects": test[args.stage]["box"]["objects"],
                "box_dice_per_object": test[args.stage]["box"]["dice_per_object"],
                "teacher_box_dice_per_object": test[args.teacher]["box"]["dice_per_object"],
                "box_dice_ratio": test[args.stage]["box"]["dice_per_object"]
                / test[args.teacher]["box"]["dice_per_object"],
                "by_model": test,
            },
            "recipe": recipe,
        }
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
    print(f"shipped {student_dir} -> {DEST.relative_to(REPO)}; test box Dice {card['test']['box_dice_per_object']:.3f} "
          f"= {card['test']['box_dice_ratio']:.3f} x the teacher's")


if __name__ == "__main__":
    main()
