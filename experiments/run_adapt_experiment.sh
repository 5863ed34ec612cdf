#!/usr/bin/env bash
# The adapter experiment of docs/adapters.md, on this CPU:
#   1. MRI adapter from 22_Heart adapt_train, CT adapter from 6_Pancreas + 90_LungTumour adapt_train
#      (QLoRA: NF4 LiteMedSAM + LoRA on the mask decoder, for CT also in the encoder; 10-minute guard);
#   2. cost baseline: full fine-tuning vs QLoRA (decoder, cached embeddings) vs QLoRA (encoder + decoder),
#      the same few steps each, one process each (peak memory is per process);
#   3. one `minisam-train eval` run on every test split: fp32 zero-shot, NF4 with both adapters off,
#      NF4 + CT adapter, NF4 + MRI adapter, and both adapters on the fp32 base (the plugin's default); box and point1 (PROMPTS=box,point1,point5 adds more), oracle
#      and deployable;
#   4. experiments/adapt_report.py: tables + figures for docs/adapters.md, metadata with measured scores,
#      adapters copied into src/napari_qlora_minisam/pretrained_adapters/{ct,mri}.
# Usage: bash experiments/run_adapt_experiment.sh [OUT=runs/adapt_experiment]   (run from the repo root)
# Stages can be skipped (SKIP_TRAIN=1, SKIP_COST=1, SKIP_EVAL=1) to run them in another order.
# MRI_DATASETS=22_Heart,91_BrainTumour trains the MRI adapter on both MRI datasets (default: the heart only);
# MRI_EXTRA adds overrides to the MRI run (data.split_file=src/minisam_train/conf/splits_val.json keeps `val` out).
# Another base: BASE=minisam NAME_PREFIX=minisam- REPORT_ARGS="--base minisam --doc docs/minisam.md
# --image-prefix minisam_adapt_" (the adapters are then named minisam-ct / minisam-mri).
set -euo pipefail
OUT=${1:-runs/adapt_experiment}
DATA=../shared/data
BASE=${BASE:-litemedsam}
P=${NAME_PREFIX:-}
mkdir -p "$OUT"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/experiment.log"; echo "load: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/experiment.log"; }

# Shared by both adapters: LoRA r=8 on every attention projection of the mask decoder (0.95 % of the
# parameters), embeddings of the frozen NF4 encoder cached per view, mixed box/point prompts; clicks are
# decoded through the single mask output (the one LiteMedSAM's medical training shaped), not SAM's three
# candidates, and the adapter's metadata says so, so eval and the plugin decode clicks the same way.
COMMON=(train.lora.parts=[decoder] "train.lora.target_modules=[q_proj,k_proj,v_proj,out_proj]"
        train.lr=${LR:-1e-3} train.batch_size=2 train.steps=${STEPS:-400} train.max_minutes=${MAX_MIN:-10}
        train.warmup_steps=10 train.val_every=25 train.checkpoint_every=50 train.early_stopping.patience=6
        "train.prompts.mix={box: 0.35, points: 0.45, box_points: 0.2}" train.prompts.point_multimask=false
        data.augment.views_per_image=${VIEWS:-3} logging.progress=false seed=0 base=$BASE)
# CT also gets LoRA (r=4, to stay under 1 % of the parameters) in the encoder's attention (`qkv`): NF4 costs
# CT box Dice 6 points in the *encoder* (the pancreatic mass most), which a decoder-only adapter cannot undo.
# No embedding cache then, so a step costs ~4.4 s instead of ~0.5 s; 130 steps fit the 10 minutes.
CT_EXTRA=("train.lora.parts=[encoder,decoder]" "train.lora.target_modules=[qkv,q_proj,k_proj,v_proj,out_proj]"
          train.lora.r=4 train.lora.alpha=8 train.steps=${CT_STEPS:-130})

if [ "${SKIP_TRAIN:-0}" != 1 ]; then
  log "adapt mri"
  minisam-train adapt --modality mri "data.datasets=[${MRI_DATASETS:-22_Heart}]" "${COMMON[@]}" ${MRI_EXTRA:-} \
      output_dir="$OUT/mri" adapter.out_dir="$OUT/adapters/mri" adapter.name=${P}mri 2>&1 | grep -v Warning | tee "$OUT/adapt_mri.log"
  log "adapt ct"
  minisam-train adapt --modality ct "${COMMON[@]}" "${CT_EXTRA[@]}" \
      output_dir="$OUT/ct" adapter.out_dir="$OUT/adapters/ct" adapter.name=${P}ct 2>&1 | grep -v Warning | tee "$OUT/adapt_ct.log"
fi

if [ "${SKIP_COST:-0}" != 1 ]; then
  # Same data, prompts, batch and steps; only what trains (and hence what must run backward) differs.
  COST=(train.steps=${COST_STEPS:-4} train.batch_size=2 train.val_every=1000 train.early_stopping.enabled=false
        train.resume=false data.augment.views_per_image=1 logging.progress=false seed=0)
  log "cost: full fine-tuning (fp32, every weight)"
  minisam-train adapt --modality ct train.method=full quantize=null "${COST[@]}" \
      output_dir="$OUT/cost_full" adapter.out_dir="$OUT/cost_unused" 2>&1 | grep -v Warning | tail -3
  log "cost: QLoRA encoder+decoder (NF4, no cache)"
  minisam-train adapt --modality ct "train.lora.parts=[encoder,decoder]" "${COST[@]}" \
      output_dir="$OUT/cost_qlora_encdec" adapter.out_dir="$OUT/cost_adapters/encdec" 2>&1 | grep -v Warning | tail -3
  log "cost: QLoRA decoder (NF4, cached embeddings)"
  minisam-train adapt --modality ct train.lora.parts=[decoder] "train.lora.target_modules=[q_proj,k_proj,v_proj,out_proj]" "${COST[@]}" \
      output_dir="$OUT/cost_qlora_dec" adapter.out_dir="$OUT/cost_adapters/dec" 2>&1 | grep -v Warning | tail -3
fi

if [ "${SKIP_EVAL:-0}" != 1 ]; then
  log "eval"
  CT="$OUT/adapters/ct"; MRI="$OUT/adapters/mri"
  minisam-train eval "data.roots=[$DATA/cosmos_sample,$DATA/cosmos_extra]" data.split_file=$DATA/splits.json \
      data.split_key=test "prompts=[${PROMPTS:-box,point1}]" plots=false device=cpu output_dir="$OUT/eval" \
      "models=[{source: $BASE, name: $BASE},{source: $BASE, quantize: nf4, adapters: [$CT, $MRI], adapter: null, name: nf4 adapters off},{source: $BASE, quantize: nf4, adapters: [$CT, $MRI], adapter: ${P}ct, name: nf4 + CT adapter},{source: $BASE, quantize: nf4, adapters: [$CT, $MRI], adapter: ${P}mri, name: nf4 + MRI adapter},{source: $BASE, adapters: [$CT, $MRI], adapter: ${P}ct, name: fp32 + CT adapter},{source: $BASE, adapters: [$CT, $MRI], adapter: ${P}mri, name: fp32 + MRI adapter}]" \
      2>&1 | grep -v Warning | tail -5
fi
log "report"
python experiments/adapt_report.py "$OUT" ${REPORT_ARGS:-}
log "done"
