#!/usr/bin/env bash
# Installs system libraries for headless napari (Xvfb + GL) and the project with every extra.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v xvfb-run >/dev/null 2>&1 || [ ! -e /usr/lib/x86_64-linux-gnu/libxkbcommon-x11.so.0 ]; then
  apt-get update -qq
  apt-get install -y -qq xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 \
    libxcb-keysyms1 libxcb-shape0 libxcb-xinerama0 libxcb-image0 libxcb-render-util0 libxcb-randr0 \
    libdbus-1-3 >/dev/null
fi
# torchvision (pulled in by timm, which LiteMedSAM's TinyViT needs) is only published linked against the
# CUDA torch build, so pin the matching pair; it runs on CPU-only machines too.
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -c scripts/constraints.txt -e ".[napari,train,test]"
