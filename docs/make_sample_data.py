"""Rebuild the small real sample files shipped in ``src/napari_qlora_minisam/sample_data``.

Run from the repository root with the shared data beside it::

    python docs/make_sample_data.py [--data ../shared/data]

The files are crops/copies of public, redistributable data (see ``sample_data/SOURCES.md``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

OUT = Path(__file__).resolve().parents[1] / "src" / "napari_qlora_minisam" / "sample_data"

# COSMOS label images store classes as grey levels; the json of each dataset maps class id -> grey level.
HEART = ("22_Heart", "22_Heart_4_5.png")
PANCREAS = ("6_Pancreas", "6_Pancreas_13_75_0.png")
# lung2 tumour spans slices 15..25, rows 333..398, cols 318..404: keep +-3 slices and a 192 px square.
LUNG_Z, LUNG_CENTER, LUNG_SIDE = (12, 29), (366, 361), 192
# brain1 (MRI, 0.78 mm pixels): slice 16 holds the largest tumour section (984 px).
BRAIN_Z = 16


def grey_levels_to_ids(label: np.ndarray, info: dict) -> np.ndarray:
    out = np.zeros(label.shape, np.uint8)
    for class_id, grey in info["color"].items():
        out[label == int(grey)] = int(class_id)
    return out


def cosmos_slice(data: Path, dataset: str, name: str):
    root = data / "cosmos_sample"
    info = json.loads((root / "data_infor_json" / f"{dataset}.json").read_text())
    image = iio.imread(root / "data" / "test_data" / dataset / "images" / name)
    label = iio.imread(root / "data" / "test_data" / dataset / "labels" / name)
    return image, grey_levels_to_ids(label, info)


def write(name: str, array: np.ndarray) -> None:
    tifffile.imwrite(OUT / name, array, compression="zlib", compressionargs={"level": 9})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)

    for stem, (dataset, name) in {"heart_mri": HEART, "pancreas_ct": PANCREAS}.items():
        image, labels = cosmos_slice(args.data, dataset, name)
        write(f"{stem}_image.tif", image)
        write(f"{stem}_labels.tif", labels)

    image = tifffile.imread(args.data / "volumes" / "lung2_image.tif")
    label = tifffile.imread(args.data / "volumes" / "lung2_label.tif")
    (z0, z1), (cy, cx), half = LUNG_Z, LUNG_CENTER, LUNG_SIDE // 2
    crop = (slice(z0, z1 + 1), slice(cy - half, cy + half), slice(cx - half, cx + half))
    write("lung_ct_image.tif", image[crop].astype(np.int16))
    write("lung_ct_labels.tif", label[crop].astype(np.uint8))

    image = tifffile.imread(args.data / "volumes" / "brain1_image.tif")
    label = tifffile.imread(args.data / "volumes" / "brain1_label.tif")
    write("brain_mri_image.tif", image[BRAIN_Z].astype(np.int16))
    write("brain_mri_labels.tif", label[BRAIN_Z].astype(np.uint8))
    for f in sorted(OUT.glob("*.tif")):
        print(f"{f.name}: {f.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
