#!/usr/bin/env bash
# A short GPU session (device tool) for the 4-bit paths on CUDA, where bitsandbytes' NF4 is meant to run:
#   C. minisam-train adapt --modality mri: QLoRA (NF4 LiteMedSAM base + peft LoRA) on the GPU, 60 steps
#   D. minisam-train distill with teacher.quantize=nf4: the ViT-H shape frozen in 4-bit -> ViT-B, bf16;
#      compare the teacher pass's peak GPU memory with part A of benchmarks/gpu_distill_session.sh (fp32 teacher)
# Needs .gpu/ from benchmarks/gpu_distill_pack.sh (it holds bitsandbytes with its CUDA 13.0 library).
# Usage (device tool): bash benchmarks/gpu_nf4_session.sh      DRY=1: a few steps on this CPU, tiny shapes.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if [ "${DRY:-0}" = 1 ]; then
  export PYTHONPATH=$PWD/src:${PYTHONPATH:-}  # the installed bitsandbytes (its CPU library) and LiteMedSAM
  DEV=cpu; MP=no; ASTEPS=2; DSTEPS=1; DSLICES=1; TEACHER_H=tiny_vit_h_shape; STUDENT_B=tiny_vit_b_shape
else
  export PYTHONPATH=$PWD/.gpu/site:$PWD/src:${PYTHONPATH:-}
  DEV=cuda; MP=bf16; ASTEPS=60; DSTEPS=20; DSLICES=12; TEACHER_H=random_vit_h; STUDENT_B=random_vit_b
fi
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
WORK=${WORK:-/tmp/gpu_work}; mkdir -p "$WORK"
DATA=$PWD/.gpu/data
PY=${PY:-python3}
T0=$(date +%s)
stamp() { echo "[$(($(date +%s) - T0)) s] $*"; }

nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null
$PY -c "import bitsandbytes as b, torch
layer = b.nn.Linear4bit(256, 256, quant_type='nf4', compress_statistics=True).to('$DEV')
print('bitsandbytes', b.__version__, 'NF4 layer on', layer.weight.device, tuple(layer(torch.randn(4, 256, device='$DEV')).shape))"

stamp "C: adapt --modality mri (QLoRA, NF4 base)"
timeout 120 $PY -m minisam_train.cli adapt --modality mri "data.roots=[$DATA/cosmos_sample]" \
  data.split_file=$DATA/splits.json train.device=$DEV train.steps=$ASTEPS adapter.out_dir="$WORK/adapter_mri" \
  output_dir="$WORK/adapt" logging.tensorboard=false logging.progress=false 2>&1 | tail -n 8
cp "$WORK/adapt/summary.json" "$OUT/adapt_nf4_summary.json" 2>/dev/null || stamp "C failed"

stamp "D: random ViT-H teacher"
$PY benchmarks/save_random_teacher.py "$TEACHER_H" "$WORK/vit_h"
stamp "D: distill, teacher in NF4"
timeout 150 $PY -m minisam_train.cli distill teacher.source="$WORK/vit_h" teacher.quantize=nf4 \
  student.source=$STUDENT_B "data.folders=[]" "data.cosmos_roots=[$DATA/cosmos_sample]" \
  data.exclude_split_file=$DATA/splits.json data.max_slices=$DSLICES cache.dir="$WORK/cache_h_nf4" \
  output_dir="$WORK/h2b_nf4" train.device=$DEV train.mixed_precision=$MP train.batch_size=4 train.steps=$DSTEPS \
  train.alpha=0.8 train.log_every=5 train.checkpoint_every=1000 train.num_workers=4 prompts.per_image=4 \
  train.prompts_per_slice=2 logging.tensorboard=false logging.progress=false 2>&1 | tail -n 8
cp "$WORK/h2b_nf4/distill_summary.json" "$OUT/h2b_nf4_summary.json" 2>/dev/null || stamp "D failed"
stamp "end"
ls -la "$OUT"
