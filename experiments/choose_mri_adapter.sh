#!/usr/bin/env bash
# Which data for MiniSAM's MRI adapter (docs/minisam.md, "Adapters for MiniSAM"): the heart alone (the recipe of
# LiteMedSAM's MRI adapter) or both MRI datasets of adapt_train (22_Heart + 91_BrainTumour). Both are trained
# with the adapter experiment's settings on the NF4 MiniSAM base, with conf/splits_val.json as the split file so
# that its `val` images stay out of training, then scored on that `val` split (MRI rows: one heart slice, 3
# objects). The one-click Dice of the MRI rows decides (the prompt the adapter target is about); box Dice is
# printed beside it. The chosen data then goes to experiments/run_adapt_experiment.sh (MRI_DATASETS, MRI_EXTRA).
# LIKE_FOR_LIKE=1 (after the choice and the test step of run_adapt_experiment.sh) also trains LiteMedSAM's MRI
# adapter on the chosen data and scores it on the MRI test objects beside MiniSAM's shipped one: the target
# compares with LiteMedSAM's shipped MRI adapter, which saw the heart only, so this says what the data gave.
# Usage: bash experiments/choose_mri_adapter.sh [OUT=runs/mri_adapter_choice]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-runs/mri_adapter_choice}")
source experiments/minisam_paths.sh
COMMON=(train.lora.parts=[decoder] "train.lora.target_modules=[q_proj,k_proj,v_proj,out_proj]"
        train.lr=1e-3 train.batch_size=2 train.steps=400 train.max_minutes=10
        train.warmup_steps=10 train.val_every=25 train.checkpoint_every=50 train.early_stopping.patience=6
        "train.prompts.mix={box: 0.35, points: 0.45, box_points: 0.2}" train.prompts.point_multimask=false
        data.augment.views_per_image=3 logging.progress=false seed=0 data.split_file=$VAL_SPLITS)
for variant in heart heart_brain; do
  datasets="[22_Heart]"; [ "$variant" = heart_brain ] && datasets="[22_Heart,91_BrainTumour]"
  [ -f "$OUT/adapters/$variant/minisam_adapter.json" ] && continue
  minisam-train adapt --modality mri "data.datasets=$datasets" "${COMMON[@]}" base=minisam output_dir="$OUT/$variant" \
    adapter.out_dir="$OUT/adapters/$variant" adapter.name=minisam-mri 2>&1 | grep -v Warning | tail -2
done
minisam-train eval "data.roots=[$DATA/cosmos_sample,$DATA/cosmos_extra]" data.split_file=$VAL_SPLITS data.split_key=val \
  "prompts=[box,point1]" plots=false device=cpu output_dir="$OUT/val_eval" \
  "models=[{source: minisam, quantize: nf4, adapters: [$OUT/adapters/heart], adapter: minisam-mri, name: heart},{source: minisam, quantize: nf4, adapters: [$OUT/adapters/heart_brain], adapter: minisam-mri, name: heart_brain}]" \
  2>&1 | tail -1
sed -n '/^### deployable/,/\*\*all\*\* | heart_brain/p' "$OUT/val_eval/summary.md"

if [ "${LIKE_FOR_LIKE:-0}" = 1 ]; then
  [ -f "$OUT/adapters/litemedsam_heart_brain/minisam_adapter.json" ] || \
    minisam-train adapt --modality mri "data.datasets=[22_Heart,91_BrainTumour]" "${COMMON[@]}" base=litemedsam \
      output_dir="$OUT/litemedsam_heart_brain" adapter.out_dir="$OUT/adapters/litemedsam_heart_brain" \
      adapter.name=mri 2>&1 | grep -v Warning | tail -2
  minisam-train eval "data.roots=[$DATA/cosmos_sample,$DATA/cosmos_extra]" data.split_file=$DATA/splits.json \
    data.split_key=test "prompts=[box,point1]" plots=false device=cpu output_dir="$OUT/like_for_like_test" \
    "models=[{source: litemedsam, quantize: nf4, adapters: [src/napari_qlora_minisam/pretrained_adapters/mri], adapter: mri, name: litemedsam + shipped mri heart only},{source: litemedsam, quantize: nf4, adapters: [$OUT/adapters/litemedsam_heart_brain], adapter: mri, name: litemedsam + mri heart and brain},{source: minisam, quantize: nf4, adapters: [src/napari_qlora_minisam/pretrained_adapters/minisam-mri], adapter: minisam-mri, name: minisam + shipped minisam-mri}]" \
    2>&1 | tail -1
  awk '/^### deployable/ {on = 1} on && /^\| (modality|mri) |^\|---/ {print} on && /^\| \*\*all/ {exit}' \
    "$OUT/like_for_like_test/summary.md"
fi
