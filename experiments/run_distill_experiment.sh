#!/usr/bin/env bash
# The CPU distillation experiment of docs/distillation.md: LiteMedSAM teacher -> random_student_256.
#   1. distil on the unlabelled slices (volumes, COSMOS non-test images, ultrasound frames; test patients out)
#   2. evaluate teacher and student in one `minisam-train eval` run, box prompts, on the COSMOS test split
#   3. measure encoder latency and memory of both, and draw the figures
# Usage: experiments/run_distill_experiment.sh [OUT_DIR] [extra distill overrides...]
#        env: STEPS, BATCH, LR, STRIDE, DEVICE (cpu; cuda for the GPU stage)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/distill_experiment}; shift || true
mkdir -p "$OUT"
uptime | tee "$OUT/uptime_start.txt"

/usr/bin/time -v minisam-train distill \
  teacher.source=litemedsam student.source=random_student_256 student.train_decoder=false \
  cache.dir="$OUT/teacher_cache" output_dir="$OUT/student" \
  train.device=${DEVICE:-cpu} train.steps=${STEPS:-700} train.batch_size=${BATCH:-4} train.lr=${LR:-1e-3} train.alpha=0.5 \
  train.temperature=2.0 train.checkpoint_every=50 train.log_every=5 train.prompts_per_slice=1 \
  prompts.per_image=3 prompts.proposals=8 data.volume_stride=${STRIDE:-1} \
  logging.tensorboard=true "$@" 2> >(tee "$OUT/distill_stderr.txt" >&2)

uptime | tee "$OUT/uptime_after_train.txt"
bash experiments/evaluate_distilled.sh "$OUT"
uptime | tee "$OUT/uptime_end.txt"
