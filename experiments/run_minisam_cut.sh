#!/usr/bin/env bash
# MiniSAM with its mask decoder cut to the hidden units that fire (docs/minisam.md, "The decoder cut to the units
# that fire"): s3_w10 (the shipped encoder) unchanged, the decoder's ReLU MLPs without the units that never fire
# on the unlabelled slices (experiments/prune_minisam_decoder.py: calibrated on half of them, checked on the
# other half, in fp32 and on the NF4 base with each shipped adapter), attention biases gathered per call.
# The rules, fixed before the run: the cut passes the prune script's check (each model: mean mask IoU against
# the full decoder >= 0.995, >= 99 % of masks at IoU >= 0.95), then ship_minisam's budget rule (within 0.6 x
# LiteMedSAM's footprint, pooled box Dice on the 32 labelled objects outside `test` >= 0.97 x the teacher's).
#   fit + val: the teacher, s3_w10 and the cut model, box and one click; test (only with TEST=1): once, the cut
#   model if both rules hold. To ship it: python experiments/ship_minisam.py ROOT --candidate s3_w10_cut
#   --within-budget 0.6 --min-ratio 0.97
# Usage: bash experiments/run_minisam_cut.sh [ROOT=runs/minisam_cut]; env: TEST=1,
#   W10=s3_w10's folder (default runs/minisam_window/s3_w10/160-s3; the shipped adapters were trained on it)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(realpath -m "${1:-runs/minisam_cut}")
source experiments/minisam_paths.sh
require_w10
mkdir -p "$ROOT"
if [ ! -f "$ROOT/decoder_units.json" ]; then
  python experiments/prune_minisam_decoder.py --base "$W10" --out "$ROOT/decoder_units.json"
fi
python experiments/prune_minisam_decoder.py --base "$W10" --apply "$ROOT/decoder_units.json" --save "$ROOT/cut/160-s3"
MODELS="{source: litemedsam, name: teacher_litemedsam}, {source: $W10, name: s3_w10}"
MODELS="$MODELS, {source: $ROOT/cut/160-s3, name: s3_w10_cut}"
validate "$ROOT" "$MODELS"
if [ "${TEST:-0}" = 1 ]; then
  test_once "$ROOT" s3_w10_cut "$ROOT/cut/160-s3"
fi
