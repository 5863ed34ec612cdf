#!/usr/bin/env bash
# The first MiniSAM student, distilled from scratch (docs/minisam.md, "The student distilled from scratch"):
# LiteMedSAM -> random_student_256_g1 (8.7 GMACs), on the 2-core CPU. The shipped MiniSAM comes from
# experiments/run_minisam_teacher_init.sh; this chain's students are HF SamModel folders, loadable by path.
#   A. encoder only, from scratch: feature MSE + mask KL on cached box prompts (decoder = LiteMedSAM's, frozen)
#   B. from A, the decoder learns too, mask-weighted, with prompt-in-the-loop (one corrective click per prompt)
#   AB. the uniform weight average of A and B (minisam-train average)
#   val: every stage and the teacher on the `val` split, box and one-click prompts -> choose the stage there
#   test (only with CHOSEN=<stage>): every stage on `test`, once
# Data: the unlabelled slices of scripts/gather_unlabelled.py (run it first), the ultrasound frames and the COSMOS
# adapt_train images; the test and val images and the test patients' volumes are never read.
# Usage: bash experiments/run_minisam_chain.sh [ROOT=runs/minisam]
#        env: STEPS_A=1500 STEPS_B=400; SKIP_TRAIN=1 (only the evaluations); CHOSEN=B_decoder_loop (test)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(realpath -m "${1:-runs/minisam}")
source experiments/minisam_paths.sh
STAGES="{source: $ROOT/A_encoder/student, name: A_encoder}, {source: $ROOT/B_decoder_loop/student, name: B_decoder_loop}, {source: $ROOT/AB_average/student, name: AB_average}"
mkdir -p "$ROOT/teacher_cache" "$ROOT/A_encoder" "$ROOT/B_decoder_loop" "$ROOT/AB_average"
COMMON=(teacher.source=litemedsam cache.dir="$ROOT/teacher_cache"
  "data.folders=[$SLICES,$DATA/ultrasound_unlabelled]"
  data.exclude_split_file=$VAL_SPLITS "data.exclude_split_key=[test,val]"
  train.device=cpu train.batch_size=4 train.temperature=2.0 train.log_every=10
  prompts.per_image=3 prompts.proposals=8)

if [ "${SKIP_TRAIN:-0}" != 1 ]; then
  minisam-train distill "${COMMON[@]}" student.source=random_student_256_g1 student.train_decoder=false \
    output_dir="$ROOT/A_encoder/student" train.steps=${STEPS_A:-1500} train.lr=1e-3 train.alpha=0.5 \
    train.checkpoint_every=100 train.prompts_per_slice=1
  minisam-train distill "${COMMON[@]}" student.source="$ROOT/A_encoder/student" student.train_decoder=true \
    output_dir="$ROOT/B_decoder_loop/student" train.steps=${STEPS_B:-400} train.lr=1e-4 train.alpha=0.2 \
    train.checkpoint_every=50 train.prompts_per_slice=null train.loop_rounds=1
  minisam-train average "sources=[$ROOT/A_encoder/student,$ROOT/B_decoder_loop/student]" \
    output_dir="$ROOT/AB_average/student"
fi

if [ ! -f "$ROOT/val_eval/per_object.csv" ]; then
  minisam-train eval "data.roots=[$DATA/cosmos_sample,$DATA/cosmos_extra]" \
    data.split_file=$VAL_SPLITS data.split_key=val \
    "models=[{source: litemedsam, name: teacher_litemedsam}, $STAGES]" \
    "prompts=[box,point1]" device=cpu plots=false output_dir="$ROOT/val_eval"
fi

if [ -n "${CHOSEN:-}" ]; then
  minisam-train eval "data.roots=[$DATA/cosmos_sample,$DATA/cosmos_extra]" \
    data.split_file=$DATA/splits.json data.split_key=test \
    "models=[{source: litemedsam, name: teacher_litemedsam}, $STAGES]" \
    "prompts=[box,point1]" device=cpu plots=false output_dir="$ROOT/test_eval"
fi
