"""Screenshots of the real widget for docs/plugin.md (real LiteMedSAM, shipped samples).

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py

Writes docs/images/plugin_box.png, plugin_drawing.png, plugin_points.png, plugin_objects.png,
plugin_click_adapter.png, plugin_propagation.png.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "images"
WINDOW = (1500, 900)


def pump(app, until, timeout=900.0):
    t0 = time.perf_counter()
    while not until():
        app.processEvents()
        time.sleep(0.002)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError
    for _ in range(20):  # let the canvas repaint
        app.processEvents()
        time.sleep(0.01)


def tight_box(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)


def frame(viewer, mask, zoom_margin=2.2):
    """Centre the camera on ``mask`` (2D, data pixels) and zoom so it fills a good part of the canvas."""
    ys, xs = np.nonzero(mask)
    layer = viewer.layers[0]
    sy, sx = layer.scale[-2:]
    viewer.scene.camera.center = (float(ys.mean() * sy), float(xs.mean() * sx))
    extent = max((ys.max() - ys.min()) * sy, (xs.max() - xs.min()) * sx) * zoom_margin
    canvas = viewer.window._qt_viewer.canvas.size
    viewer.scene.camera.zoom = min(canvas) / max(extent, 1)


def shoot(viewer, app, name):
    # 0.6 s of events: the preview layer's list thumbnail is redrawn 0.4 s after the last preview
    for _ in range(60):
        app.processEvents()
        time.sleep(0.01)
    OUT.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(OUT / name), canvas_only=False)
    print("wrote", OUT / name)


def open_ready(app, sample: str):
    """The demo viewer on ``sample`` at the screenshot size, once its model is loaded and idle."""
    from napari_qlora_minisam._qt.demo import open_demo

    viewer, widget = open_demo(sample)
    viewer.window._qt_window.resize(*WINDOW)
    pump(app, lambda: widget.model is not None and widget.is_idle)
    return viewer, widget


def draw_box_and_rest(app, widget, box):
    """Draw ``box`` (x0, y0, x1, y1, image pixels) with napari's own mouse bindings and keep the button down
    until the resting drag's preview is on screen; returns the release."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks

    layer = widget.shapes_layer
    widget.activate_box_mode()
    start = tuple(layer.data_to_world([box[1], box[0]]))
    end = tuple(layer.data_to_world([box[3], box[2]]))
    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=start))
    for k in np.linspace(0.2, 1.0, 5):  # the corner follows the mouse
        pos = tuple(np.add(start, k * np.subtract(end, start)))
        mouse_move_callbacks(layer, read_only_mouse_event(type="mouse_move", is_dragging=True, position=pos))
        app.processEvents()
    key = widget._prompt_key(widget.current_prompts(), widget.current_z())
    pump(app, lambda: widget.is_idle and widget._painted_key == key)

    def release():
        mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", is_dragging=True,
                                                             position=end))

    return release


def main() -> None:
    from napari.qt import get_qapp

    from napari_qlora_minisam.prompts import box_to_rectangle, xy_to_rc

    app = get_qapp()

    # 1-3: cardiac MRI slice: box prompt, points, committed objects.
    viewer, widget = open_ready(app, "heart_mri")
    ref = viewer.layers["cardiac MRI reference"].data
    lv, rv = ref == 1, ref == 3
    frame(viewer, lv | rv, 2.6)
    n = widget.previews_painted
    widget.shapes_layer.add_rectangles(box_to_rectangle(tight_box(rv)))
    pump(app, lambda: widget.previews_painted > n and widget.is_idle)
    viewer.layers.selection.active = widget.shapes_layer
    shoot(viewer, app, "plugin_box.png")

    widget.commit()
    # 1b: a box being drawn on the left ventricle: the preview follows as soon as the mouse rests.
    release = draw_box_and_rest(app, widget, tight_box(lv) + np.array([-2, -2, 2, 2]))
    shoot(viewer, app, "plugin_drawing.png")
    release()
    pump(app, lambda: widget.is_idle)
    widget.clear_prompts()
    pump(app, lambda: widget.is_idle)
    n = widget.previews_painted
    widget.shapes_layer.add_rectangles(box_to_rectangle(tight_box(lv) + np.array([-3, -3, 3, 3])))
    ys, xs = np.nonzero(lv)
    widget.activate_point_mode()
    widget.points_layer.add(xy_to_rc([[xs.mean(), ys.mean()]]))
    widget.toggle_negative()
    myo = ref == 2
    mys, mxs = np.nonzero(myo)
    far = np.argmax((mxs - xs.mean()) ** 2 + (mys - ys.mean()) ** 2 * 0 - (mys - ys.mean()) ** 2)
    widget.points_layer.add(xy_to_rc([[mxs[far], mys[far]]]))
    pump(app, lambda: widget.previews_painted > n and widget.is_idle)
    shoot(viewer, app, "plugin_points.png")

    widget.commit()
    widget.toggle_negative()
    pump(app, lambda: widget.is_idle)
    viewer.layers.selection.active = widget.objects_layer
    shoot(viewer, app, "plugin_objects.png")
    viewer.close()

    # 4: one click, with the shipped MRI adapter (LiteMedSAM alone was trained with boxes only).
    viewer, widget = open_ready(app, "heart_mri")
    combo = widget.ui.adapter
    combo.setCurrentIndex(next(i for i in range(combo.count())
                               if combo.itemData(i) is not None and combo.itemData(i).name == "mri"))
    pump(app, lambda: widget.model.active_adapter == "mri" and widget.is_idle)
    frame(viewer, lv | rv, 2.6)
    n = widget.previews_painted
    widget.activate_point_mode()
    widget.points_layer.add(xy_to_rc([[xs.mean(), ys.mean()]]))
    pump(app, lambda: widget.previews_painted > n and widget.is_idle)
    viewer.layers.selection.active = widget.points_layer
    shoot(viewer, app, "plugin_click_adapter.png")
    viewer.close()

    # 5: chest CT volume: commit on the middle tumour slice, propagate, show another slice.
    viewer, widget = open_ready(app, "lung_ct_volume")
    tumour = viewer.layers["chest CT reference"].data > 0
    zs = np.nonzero(tumour.any(axis=(1, 2)))[0]
    mid = int(zs[len(zs) // 2])
    viewer.dims.set_current_step(0, mid)
    pump(app, lambda: widget.is_idle)
    frame(viewer, tumour[mid], 3.0)
    n = widget.previews_painted
    widget.shapes_layer.add_rectangles(box_to_rectangle(tight_box(tumour[mid]), mid))
    pump(app, lambda: widget.previews_painted > n and widget.is_idle)
    widget.commit()
    widget.propagate()
    pump(app, lambda: not widget.is_propagating)
    viewer.dims.set_current_step(0, mid - 3)
    pump(app, lambda: widget.is_idle)
    viewer.layers.selection.active = widget.objects_layer
    shoot(viewer, app, "plugin_propagation.png")
    viewer.close()


if __name__ == "__main__":
    main()
