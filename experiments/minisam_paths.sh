# Paths shared by the MiniSAM experiment scripts; sourced after they cd to the repository root.
DATA=../shared/data
SLICES=${MINISAM_UNLABELLED_DIR:-$HOME/.cache/napari-qlora-minisam/unlabelled_slices}
VAL_SPLITS=src/minisam_train/conf/splits_val.json
