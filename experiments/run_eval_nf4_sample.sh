#!/usr/bin/env bash
# Side-by-side example for docs/evaluation.md: LiteMedSAM fp32 vs NF4 (4-bit) on the three MRI tumour /
# lesion datasets of cosmos_extra (11 slices). Numbers from a tiny sample, NOT from COSMOS 1050K.
# Run from the repository root; re-running resumes. Ends by writing its tables into docs/evaluation.md.
set -euo pipefail
DATA=${MINISAM_SHARED_DATA:-../shared/data}
OUT=${1:-docs/eval/sample_fp32_vs_nf4}
minisam-train eval \
  "data.root=$DATA/cosmos_extra" "data.datasets=[91_BrainTumour,92_BreastLesion,93_LiverLesion]" \
  "models=[litemedsam,{source: litemedsam, quantize: nf4}]" \
  "prompts=[point1,point5,box]" \
  sampling.mode=official device=cpu \
  output_dir="$OUT" hydra.output_subdir=null hydra/job_logging=none hydra/hydra_logging=none
python experiments/eval_doc_tables.py "$OUT" --section nf4
