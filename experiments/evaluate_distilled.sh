#!/usr/bin/env bash
# Evaluates a distilled student against its LiteMedSAM teacher, as docs/distillation.md reports it:
#   1. teacher and student in one `minisam-train eval` run, box prompts, on the COSMOS test split
#   2. encoder latency (interleaved) and memory of both, and the figures (experiments/distill_report.py)
# Usage: experiments/evaluate_distilled.sh OUT_DIR [--figures DIR]   (student in OUT_DIR/student; figures: docs/images)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: evaluate_distilled.sh OUT_DIR}
DATA=../shared/data
minisam-train eval "data.roots=[$DATA/cosmos_sample,$DATA/cosmos_extra]" \
  data.split_file=$DATA/splits.json data.split_key=test \
  "models=[{source: litemedsam, name: teacher_litemedsam}, {source: $OUT/student, name: student}]" \
  "prompts=[box]" device=cpu output_dir="$OUT/eval"
python experiments/distill_report.py "$OUT" --student-dir "$OUT/student" --student-name student "${@:2}"
