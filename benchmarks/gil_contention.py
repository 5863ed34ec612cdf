"""Why a preview decode in a worker thread is slow while napari redraws: Python's GIL.

    python benchmarks/gil_contention.py

Times the same LiteMedSAM box decode (cardiac MRI sample, slice embedded) alone, next to a thread that
runs pure Python (holds the GIL, as napari's drawing code and Qt calls made from Python do), and next to
a thread busy in numpy (releases the GIL). The decoder issues ~150 torch calls, each of which needs the
GIL back, so it is only as fast as the GIL lets it be. Prints the three medians.
"""

from __future__ import annotations

import statistics
import threading
import time

import numpy as np


def main() -> None:
    from napari_qlora_minisam import MiniSamPredictor, load_model
    from napari_qlora_minisam._sample_data import heart_mri

    (image, _, _), (reference, _, _) = list(heart_mri())[:2]
    predictor = MiniSamPredictor(load_model("litemedsam"))
    predictor.set_image(image)
    ys, xs = np.nonzero(reference == 1)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)

    def decode_ms(n=15):
        for _ in range(3):
            predictor.predict(box=box, multimask=False)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            predictor.predict(box=box, multimask=False)
            times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times)

    def beside(work) -> float:
        stop = threading.Event()
        busy = threading.Thread(target=work, args=(stop,))
        busy.start()
        out = {}
        worker = threading.Thread(target=lambda: out.setdefault("ms", decode_ms()))
        worker.start()
        worker.join()
        stop.set()
        busy.join()
        return out["ms"]

    def python_loop(stop):
        x = 0
        while not stop.is_set():
            x += 1

    def numpy_loop(stop):
        a = np.random.rand(1500, 1500)
        while not stop.is_set():
            a @ a

    print(f"decode alone:                         {decode_ms():7.1f} ms")
    print(f"decode in a thread, beside pure Python: {beside(python_loop):7.1f} ms")
    print(f"decode in a thread, beside numpy:       {beside(numpy_loop):7.1f} ms")


if __name__ == "__main__":
    main()
