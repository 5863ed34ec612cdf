#!/usr/bin/env bash
# The CPU distillation recipe of docs/distillation.md, stage by stage (each stage = run_distill_experiment.sh:
# distil, evaluate teacher and student in one `minisam-train eval` run, report). All stages share one teacher
# cache, so the teacher labels every slice (and every view) once. On the idle 2-core CPU: ~32 + 36 + 30 + 27 min.
#   1. window-attention student from scratch  (random_student_256, 700 steps, lr 1e-3)
#   2. + global attention in blocks 3 and 6    (random_student_256_global, warm start from 1, 450 steps, lr 1e-3)
#   3. + three augmented views of every slice  (warm start from 2, data.views=[hflip,rot90,gamma0.7], 400 steps, lr 5e-4)
#   4. + the decoder learns too, mask-weighted (from 3, train_decoder=true, alpha 0.2, all prompts, 300 steps, lr 1e-4)
# With STAGE5=1 (a CUDA GPU; ~6 min of training on an H100):
#   5. all seven views of every slice, 1900 steps of 8 slices (from 4, as 4 otherwise), then
#   4+5: the uniform weight average of stages 4 and 5 (minisam-train average), evaluated like a stage
# Usage: experiments/run_distill_chain.sh [ROOT_DIR]   (stages go to ROOT_DIR/{1_window,2_global,3_views,4_decoder,...})
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-runs/distill_chain}
mkdir -p "$ROOT/1_window" "$ROOT/2_global" "$ROOT/3_views" "$ROOT/4_decoder"
CACHE=$(realpath "$ROOT")/teacher_cache
mkdir -p "$CACHE"
for stage in 1_window 2_global 3_views 4_decoder; do ln -sfn "$CACHE" "$ROOT/$stage/teacher_cache"; done

STEPS=700 LR=1e-3 bash experiments/run_distill_experiment.sh "$ROOT/1_window"
STEPS=450 LR=1e-3 bash experiments/run_distill_experiment.sh "$ROOT/2_global" \
  student.source=random_student_256_global student.init_encoder="$ROOT/1_window/student"
STEPS=400 LR=5e-4 bash experiments/run_distill_experiment.sh "$ROOT/3_views" \
  student.source=random_student_256_global student.init_encoder="$ROOT/2_global/student" \
  "data.views=[hflip,rot90,gamma0.7]"
STEPS=300 LR=1e-4 bash experiments/run_distill_experiment.sh "$ROOT/4_decoder" \
  student.source="$ROOT/3_views/student" student.train_decoder=true train.alpha=0.2 train.prompts_per_slice=null \
  "data.views=[hflip,rot90,gamma0.7]"

if [ "${STAGE5:-0}" = 1 ]; then
  ln -sfn "$CACHE" "$ROOT/5_views7/teacher_cache" 2>/dev/null || { mkdir -p "$ROOT/5_views7"; ln -sfn "$CACHE" "$ROOT/5_views7/teacher_cache"; }
  DEVICE=cuda STEPS=1900 BATCH=8 LR=1e-4 bash experiments/run_distill_experiment.sh "$ROOT/5_views7" \
    student.source="$ROOT/4_decoder/student" student.train_decoder=true train.alpha=0.2 train.prompts_per_slice=null \
    "data.views=[hflip,vflip,rot90,rot270,transpose,gamma0.7,gamma1.5]" train.num_workers=6 train.checkpoint_every=500
  mkdir -p "$ROOT/average_4_5"
  minisam-train average "sources=[$ROOT/4_decoder/student,$ROOT/5_views7/student]" output_dir="$ROOT/average_4_5/student"
  bash experiments/evaluate_distilled.sh "$ROOT/average_4_5"
fi
