"""Save a registry SAM shape with a usable random encoder, as a distillation teacher for benchmarks.

transformers initialises a random SAM vision encoder to ~0 (every embedding would be zero), so the encoder
is re-initialised first, as tests/train/test_distill.py does for its tiny teachers.
Usage: python experiments/save_random_teacher.py SPEC OUT_DIR     (SPEC: random_vit_h, tiny_vit_h_shape, ...)
"""

from __future__ import annotations

import sys

from minisam_train.training.student import init_vision_encoder
from napari_qlora_minisam.models.registry import build_random_hf_sam

if __name__ == "__main__":
    spec, out = sys.argv[1], sys.argv[2]
    net = build_random_hf_sam(spec)
    init_vision_encoder(net, seed=0)
    net.save_pretrained(out)
