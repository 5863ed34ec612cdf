"""Screenshots of *Train adapter* in the widget, on the shared unlabelled ultrasound frames (docs/adapters.md).

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_training_screenshots.py [--data ../shared/data]

No ultrasound image with masks exists here, so the frames are annotated in the widget for this
demonstration, as a user would: a box round each structure with the bundled LiteMedSAM (no adapter),
committed, and named in the objects table: the two views of a lymph node (US1_UNCR) and of the bladder
(gdcm-US-ALOKA-16). *Train adapter* then trains on both images with the default 2-minute budget, and one
click on a bladder is previewed with the base and with the new adapter. The held-back scores the widget
reports are measured against these box-made annotations, not against an expert's.

Writes docs/images/adapters_train_during.png, adapters_train_after.png, adapters_us_click_base.png and
adapters_us_click_adapter.png; the adapter goes to a temporary adapters folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_screenshots import WINDOW, pump, shoot  # noqa: E402 - the shared screenshot helpers

# (x0, y0, x1, y1) boxes round each structure, read off the frames; names as a user would type them.
FRAMES = {
    "US1_UNCR": ("lymph node US", [((90, 160, 302, 292), "LymphNode"), ((318, 148, 548, 290), "LymphNode")]),
    "gdcm-US-ALOKA-16": ("pelvis US", [((34, 88, 242, 218), "Bladder"), ((342, 96, 604, 218), "Bladder")]),
}
CLICK = ("pelvis US", (470, 160))  # (x, y): one click inside the right view's bladder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--minutes", type=float, default=2.0)
    args = parser.parse_args(argv)
    os.environ["MINISAM_ADAPTERS_DIR"] = tempfile.mkdtemp(prefix="us-demo-adapters-")
    from napari_qlora_minisam._qt.model_control import MODEL_ENV

    os.environ[MODEL_ENV] = "litemedsam"  # the figures in docs/adapters.md are LiteMedSAM's
    import napari
    import tifffile
    from napari.qt import get_qapp

    from napari_qlora_minisam.prompts import box_to_rectangle, xy_to_rc

    app = get_qapp()
    viewer = napari.Viewer(title="napari-qlora-minisam: train an adapter", show=True)
    viewer.window._qt_window.resize(*WINDOW)
    for stem, (name, _) in FRAMES.items():
        data = tifffile.imread(args.data / "ultrasound_unlabelled" / f"{stem}.tif")
        viewer.add_image(data, name=name, rgb=data.ndim == 3, visible=False)
    _, widget = viewer.window.add_plugin_dock_widget("napari-qlora-minisam", "MiniSAM segmentation")
    pump(app, lambda: widget.model is not None and widget.is_idle)
    for stem, (name, objects) in FRAMES.items():
        for layer in viewer.layers:
            layer.visible = layer.name.startswith(name)
        widget.set_image_layer(viewer.layers[name])
        pump(app, lambda: widget.is_idle)
        n = widget.previews_painted
        widget.layers["box"].add_rectangles([box_to_rectangle(box) for box, _ in objects])
        pump(app, lambda: widget.previews_painted > n and widget.is_idle)
        widget.commit()
        pump(app, lambda: widget.is_idle)
        for row, (_, label) in enumerate(objects):
            widget.objects.table.item(row, 1).setText(label)
    viewer.reset_view()
    widget.ui.train_name.setText("ultrasound-demo")
    widget.ui.train_minutes.setValue(args.minutes)
    widget.ui.train_others.setChecked(True)
    widget.ui.train.click()
    t0 = time.perf_counter()
    pump(app, lambda: time.perf_counter() - t0 > 0.4 * 60 * args.minutes)
    shoot(viewer, app, "adapters_train_during.png", widget.ui.train)
    pump(app, lambda: not widget.training.active and widget.is_idle, timeout=60 * args.minutes + 900)
    shoot(viewer, app, "adapters_train_after.png", widget.ui.train)
    print(widget.message)

    # One click on a bladder: the base (no adapter) against the adapter just trained.
    name, (x, y) = CLICK
    widget.set_image_layer(viewer.layers[name])
    viewer.layers[f"{name} · objects"].visible = False  # the click's preview alone
    pump(app, lambda: widget.is_idle)
    combo = widget.ui.adapter
    for adapter, shot in ((None, "adapters_us_click_base.png"), ("ultrasound-demo", "adapters_us_click_adapter.png")):
        combo.setCurrentIndex(next(i for i in range(combo.count())
                                   if (combo.itemData(i) is None and adapter is None)
                                   or (combo.itemData(i) is not None and combo.itemData(i).name == adapter)))
        pump(app, lambda: widget.model.active_adapter == adapter and widget.is_idle)
        widget.clear_prompts()
        pump(app, lambda: widget.is_idle)
        widget.tools.activate_point_mode()
        n = widget.previews_painted
        widget.layers["points"].add(xy_to_rc([[x, y]]))
        pump(app, lambda: widget.previews_painted > n and widget.is_idle)
        shoot(viewer, app, shot)
    viewer.close()


if __name__ == "__main__":
    main()
