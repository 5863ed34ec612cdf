#!/usr/bin/env bash
# The evaluation shown in docs/evaluation.md: bundled LiteMedSAM on the shared sample data
# (cosmos_sample + cosmos_extra), every prompt mode, oracle and deployable, official point sampling.
# These are numbers from a 55-slice sample, NOT from COSMOS 1050K.
# Run from the repository root; re-running resumes (rows already in per_object.csv are skipped).
set -euo pipefail
DATA=${MINISAM_SHARED_DATA:-../shared/data}
OUT=${1:-docs/eval/sample_litemedsam}
minisam-train eval \
  "data.roots=[$DATA/cosmos_sample,$DATA/cosmos_extra]" \
  "models=[litemedsam]" \
  "prompts=[point1,point5,point5neg5,box,box_point1]" \
  "selection=[oracle,deployable]" \
  sampling.mode=official nsd_tolerance=2 device=cpu \
  output_dir="$OUT" hydra.output_subdir=null hydra/job_logging=none hydra/hydra_logging=none
python experiments/eval_doc_tables.py "$OUT" --section sample
