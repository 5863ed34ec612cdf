#!/usr/bin/env bash
# Re-measure the shipped CT and MRI adapters on today's NF4 base (test splits, box and 1-point prompts),
# beside the fp32 zero-shot model and the NF4 base with the adapters off. Usage: $0 [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/adapt_remeasure}
AD=src/napari_qlora_minisam/pretrained_adapters
minisam-train eval \
  "data.roots=[../shared/data/cosmos_sample,../shared/data/cosmos_extra]" \
  data.split_file=../shared/data/splits.json data.split_key=test \
  "models=[litemedsam, {source: litemedsam, quantize: nf4, adapters: [$AD/ct, $AD/mri], adapter: null, name: nf4_adapters_off}, {source: litemedsam, quantize: nf4, adapters: [$AD/ct], name: nf4_ct_adapter}, {source: litemedsam, quantize: nf4, adapters: [$AD/mri], name: nf4_mri_adapter}]" \
  "prompts=[box,point1]" output_dir="$OUT"
