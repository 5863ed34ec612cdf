"""What switching cases in an image series costs in file I/O (the panel does it on the Qt thread).

Times ``ImageSeries.load`` (image + saved objects) and ``save_objects`` for a COSMOS cardiac MRI slice (PNG)
and the 48 × 512 × 512 chest CT of the shared data written as NIfTI, saving to TIFF and to NIfTI. Medians
of ``--repeats`` runs; prints a Markdown table for docs/plugin.md (Image series).

    python benchmarks/series_io.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("MINISAM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    import tifffile

    from napari_qlora_minisam.io.nifti import write_nifti
    from napari_qlora_minisam.series import ImageSeries

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="series-io-"))
    try:
        (work / "slice").mkdir()
        shutil.copy(SHARED / "cosmos_sample/data/test_data/22_Heart/images/22_Heart_2_4.png", work / "slice")
        (work / "volume").mkdir()
        spacing = json.loads((SHARED / "volumes/volumes.json").read_text())["lung1"]["spacing_xyz_mm"]
        ct = tifffile.imread(SHARED / "volumes/lung1_image.tif")
        write_nifti(work / "volume" / "lung1.nii.gz", ct, np.diag([*spacing, 1.0]))
        rows = []
        for case in ("slice", "volume"):
            for fmt in ("tiff", "nifti"):
                series = ImageSeries.from_folder(work / case, output_dir=work / f"out-{case}-{fmt}", fmt=fmt)
                data = series.load(0).layer[0]
                labels = np.zeros(data.shape, np.int32)
                labels[tuple(slice(s // 4, s // 2) for s in data.shape)] = 1
                edits = iter(range(1, 10_000))

                def save():  # a new id each time: a real write, not the unchanged-skip
                    labels.flat[0] = next(edits)
                    assert series.save_objects(0, labels) == "written"

                save_s = median_s(save, args.repeats)
                load_s = median_s(lambda: series.load(0), args.repeats)  # with its objects file
                rows.append(f"| {case} {data.shape} {data.dtype} | {fmt} | {load_s:.3f} | {save_s:.3f} |")
        print("| case | objects format | load image + objects (s) | save objects (s) |")
        print("|---|---|---|---|")
        print("\n".join(rows))
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
