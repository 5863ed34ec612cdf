#!/usr/bin/env bash
# The GPU figures of the docs, on any CUDA machine with the project installed (pip install -e ".[train]")
# and the shared data beside the repository (DATA=../shared/data, or set DATA):
#   1. inference: LiteMedSAM and MiniSAM, fp32 and NF4, on CUDA, peak GPU memory and prompts per second end to end
#      (a new slice embedded, then box prompts decoded, as in the plugin)
#   2. adapt: minisam-train adapt --modality mri on CUDA (QLoRA, NF4 base), 60 steps
#   3. distill: the ViT-H -> ViT-B recipe on random weights of the real shapes, bf16, with the teacher in
#      fp32 and in NF4: step time and peak GPU memory
# Figures go to $OUT (default runs/gpu_check): inference.json, *_summary.json, and the tail of each log.
# Usage: bash benchmarks/gpu_check.sh            SMOKE=1: a few steps on tiny shapes, also on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/gpu_check}; mkdir -p "$OUT"
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
PY=${PY:-python}
if [ "${SMOKE:-0}" = 1 ]; then
  DEV=cpu; MP=no; ASTEPS=2; DSTEPS=1; DSLICES=1; TEACHER=tiny_vit_h_shape; STUDENT=tiny_vit_b_shape; PROMPTS=3
else
  DEV=cuda; MP=bf16; ASTEPS=60; DSTEPS=30; DSLICES=16; TEACHER=random_vit_h; STUDENT=random_vit_b; PROMPTS=200
fi
T0=$(date +%s)
stamp() { echo "[$(($(date +%s) - T0)) s] $*"; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

stamp "1: inference"
$PY benchmarks/gpu_inference.py --models litemedsam minisam --quantize none nf4 --device "$DEV" \
  --prompts "$PROMPTS" --rounds 3 --out "$OUT/inference.json"

stamp "2: adapt --modality mri (QLoRA, NF4 base)"
$PY -m minisam_train.cli adapt --modality mri "data.roots=[$DATA/cosmos_sample]" data.split_file="$DATA/splits.json" \
  train.device=$DEV train.steps=$ASTEPS adapter.out_dir="$WORK/adapter_mri" output_dir="$WORK/adapt" \
  logging.tensorboard=false logging.progress=false 2>&1 | tail -n 8 | tee "$OUT/adapt.log"
cp "$WORK/adapt/summary.json" "$OUT/adapt_summary.json" 2>/dev/null || stamp "adapt failed"

stamp "3: ViT-H -> ViT-B distillation, random weights of the real shapes"
$PY experiments/save_random_teacher.py "$TEACHER" "$WORK/vit_h"
for TQ in null nf4; do
  stamp "3: teacher.quantize=$TQ"
  $PY -m minisam_train.cli distill teacher.source="$WORK/vit_h" teacher.quantize=$TQ student.source=$STUDENT \
    "data.folders=[]" "data.cosmos_roots=[$DATA/cosmos_sample]" data.exclude_split_file="$DATA/splits.json" \
    data.max_slices=$DSLICES cache.dir="$WORK/cache_$TQ" output_dir="$WORK/distill_$TQ" \
    train.device=$DEV train.mixed_precision=$MP train.batch_size=4 train.steps=$DSTEPS train.alpha=0.8 \
    train.log_every=5 prompts.per_image=4 train.prompts_per_slice=2 \
    logging.tensorboard=false logging.progress=false 2>&1 | tail -n 8 | tee "$OUT/distill_teacher_$TQ.log"
  cp "$WORK/distill_$TQ/distill_summary.json" "$OUT/distill_teacher_${TQ}_summary.json" 2>/dev/null || stamp "distill failed"
done
stamp "end"
ls -la "$OUT"
