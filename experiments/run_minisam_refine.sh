#!/usr/bin/env bash
# Stage C of the from-scratch MiniSAM student (docs/minisam.md, "Refinement"): that student (SCRATCH=its
# folder, run_minisam_chain.sh's AB_average/student, shipped as `minisam` before the teacher-initialised one) refined against LiteMedSAM on the
# unlabelled slices plus seven augmented views of each COSMOS adapt_train image (data.views_on=cosmos), encoder
# and decoder learning, feature MSE + mask KL on one cached box prompt per slice and step. That student
# fits even its own training images worst on the evaluated anatomy (heart, pancreas), so the views go there.
#   C_refine: the refined student;  CA_average: the uniform weight average of that student and C
#   fit: all of them on the adapt_train images, which distillation saw: how well each fits its training data
#   val: the teacher, that student and both candidates on `val` -> choose there
#   test (only with CHOSEN=<stage>): the same models on `test`, once
# Usage: SCRATCH=runs/minisam/AB_average/student bash experiments/run_minisam_refine.sh [ROOT=runs/minisam_refine]
#        env: STEPS_C=1000; SKIP_TRAIN=1 (only the evaluations); CHOSEN=C_refine (test)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(realpath -m "${1:-runs/minisam_refine}")
source experiments/minisam_paths.sh
SHIPPED=${SCRATCH:?set SCRATCH to the from-scratch student folder (run_minisam_chain.sh: ROOT/AB_average/student)}
MODELS="{source: litemedsam, name: teacher_litemedsam}, {source: $SHIPPED, name: shipped_AB}, {source: $ROOT/C_refine/student, name: C_refine}, {source: $ROOT/CA_average/student, name: CA_average}"
mkdir -p "$ROOT/teacher_cache" "$ROOT/C_refine" "$ROOT/CA_average"

if [ "${SKIP_TRAIN:-0}" != 1 ]; then
  minisam-train distill teacher.source=litemedsam cache.dir="$ROOT/teacher_cache" \
    "data.folders=[$SLICES,$DATA/ultrasound_unlabelled]" \
    data.exclude_split_file=$VAL_SPLITS "data.exclude_split_key=[test,val]" \
    "data.views=[hflip,vflip,rot90,rot270,transpose,gamma0.7,gamma1.5]" data.views_on=cosmos \
    train.device=cpu train.batch_size=4 train.temperature=2.0 train.log_every=10 \
    prompts.per_image=3 prompts.proposals=8 \
    student.source="$SHIPPED" student.init_decoder=own student.train_decoder=true \
    output_dir="$ROOT/C_refine/student" train.steps=${STEPS_C:-1000} train.lr=2e-4 train.alpha=0.5 \
    train.checkpoint_every=100 train.prompts_per_slice=1 ${EXTRA_C:-}
  minisam-train average "sources=[$SHIPPED,$ROOT/C_refine/student]" output_dir="$ROOT/CA_average/student"
fi

if [ ! -f "$ROOT/fit_eval/per_object.csv" ]; then
  minisam-train eval "data.roots=[$DATA/cosmos_sample,$DATA/cosmos_extra]" \
    data.split_file=$VAL_SPLITS data.split_key=adapt_train \
    "models=[$MODELS]" "prompts=[box]" device=cpu plots=false output_dir="$ROOT/fit_eval"
fi

if [ ! -f "$ROOT/val_eval/per_object.csv" ]; then
  minisam-train eval "data.roots=[$DATA/cosmos_sample,$DATA/cosmos_extra]" \
    data.split_file=$VAL_SPLITS data.split_key=val \
    "models=[$MODELS]" "prompts=[box,point1]" device=cpu plots=false output_dir="$ROOT/val_eval"
fi

if [ -n "${CHOSEN:-}" ]; then
  minisam-train eval "data.roots=[$DATA/cosmos_sample,$DATA/cosmos_extra]" \
    data.split_file=$DATA/splits.json data.split_key=test \
    "models=[$MODELS]" "prompts=[box,point1]" device=cpu plots=false output_dir="$ROOT/test_eval"
fi
