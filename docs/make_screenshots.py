"""Screenshots of the real widget for docs/plugin.md (real LiteMedSAM, pinned; shipped samples).

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshots.py [series nifti ...]

Writes docs/images/plugin_box.png, plugin_drawing.png, plugin_points.png, plugin_batch.png,
plugin_objects.png, plugin_shortcuts.png, plugin_two_images.png, plugin_click_adapter.png,
plugin_propagation.png; then, from the shared data (``$MINISAM_SHARED_DATA``, default ../shared/data),
plugin_series.png (``series``), plugin_nifti.png with plugin_precompute.png (``nifti``) and plugin_redraw.png
(``correction``); and the default model's plugin_minisam.png and plugin_minisam_click.png (``minisam``). Naming
parts makes only those.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from napari_qlora_minisam._qt.model_control import MODEL_ENV
from napari_qlora_minisam.masks import centroid, tight_box

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


def frame(viewer, mask, zoom_margin=2.2, layer=None):
    """Centre the camera on ``mask`` (2D, data pixels of ``layer``, default the first) and zoom so it fills a
    good part of the canvas."""
    ys, xs = np.nonzero(mask)
    layer = viewer.layers[0] if layer is None else layer
    sy, sx = layer.scale[-2:]
    viewer.scene.camera.center = (float(ys.mean() * sy), float(xs.mean() * sx))
    extent = max((ys.max() - ys.min()) * sy, (xs.max() - xs.min()) * sx) * zoom_margin
    canvas = viewer.window._qt_viewer.canvas.size
    viewer.scene.camera.zoom = min(canvas) / max(extent, 1)


def shoot(viewer, app, name, group=None):
    """Save the window as ``docs/images/<name>``; ``group``: a control of the widget's form to scroll into view
    (the form scrolls when the window is shorter than it)."""
    scroll = None if group is None else group.parentWidget()
    while scroll is not None and not hasattr(scroll, "ensureWidgetVisible"):
        scroll = scroll.parentWidget()
    if scroll is not None:
        scroll.ensureWidgetVisible(group, 0, 0)
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

    layer = widget.layers["box"]
    widget.tools.activate_box_mode()
    start = tuple(layer.data_to_world([box[1], box[0]]))
    end = tuple(layer.data_to_world([box[3], box[2]]))
    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=start))
    for k in np.linspace(0.2, 1.0, 5):  # the corner follows the mouse
        pos = tuple(np.add(start, k * np.subtract(end, start)))
        mouse_move_callbacks(layer, read_only_mouse_event(type="mouse_move", is_dragging=True, position=pos))
        app.processEvents()
    pump(app, lambda: widget.is_idle and widget.session.preview.shows(widget.binding.read_prompts()))

    def release():
        mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", is_dragging=True,
                                                             position=end))

    return release


def add_boxes(app, widget, *boxes, z=None):
    from napari_qlora_minisam.prompts import box_to_rectangle

    n = widget.previews_painted
    widget.layers["box"].add_rectangles([box_to_rectangle(b, z) for b in boxes])
    pump(app, lambda: widget.previews_painted > n and widget.is_idle)


def click_with_adapter(app, adapter: str, name: str):
    """The heart sample with ``adapter`` picked in the Adapter box and one click at the left ventricle's
    centroid, shot as ``name``; returns the open viewer and widget."""
    from napari_qlora_minisam.prompts import xy_to_rc

    viewer, widget = open_ready(app, "heart_mri")
    ref = viewer.layers["cardiac MRI reference"].data
    lv, rv = ref == 1, ref == 3
    combo = widget.ui.adapter
    combo.setCurrentIndex(next(i for i in range(combo.count())
                               if combo.itemData(i) is not None and combo.itemData(i).name == adapter))
    pump(app, lambda: widget.model.active_adapter == adapter and widget.is_idle)
    frame(viewer, lv | rv, 2.6)
    n = widget.previews_painted
    widget.tools.activate_point_mode()
    widget.layers["points"].add(xy_to_rc(centroid(lv)[None]))
    pump(app, lambda: widget.previews_painted > n and widget.is_idle)
    viewer.layers.selection.active = widget.layers["points"]
    shoot(viewer, app, name)
    return viewer, widget


def main() -> None:
    from napari.qt import get_qapp

    from napari_qlora_minisam._sample_data import brain_mri
    from napari_qlora_minisam.prompts import xy_to_rc

    app = get_qapp()

    # Cardiac MRI slice: a box, a box being drawn, clicks, a batch of boxes, the objects and the shortcuts.
    viewer, widget = open_ready(app, "heart_mri")
    ref = viewer.layers["cardiac MRI reference"].data
    lv, rv = ref == 1, ref == 3
    frame(viewer, lv | rv, 2.6)
    add_boxes(app, widget, tight_box(rv))
    viewer.layers.selection.active = widget.layers["box"]
    shoot(viewer, app, "plugin_box.png")

    widget.clear_prompts()
    pump(app, lambda: widget.is_idle)
    release = draw_box_and_rest(app, widget, tight_box(lv) + np.array([-2, -2, 2, 2]))
    shoot(viewer, app, "plugin_drawing.png")
    release()
    pump(app, lambda: widget.is_idle)
    widget.clear_prompts()
    pump(app, lambda: widget.is_idle)
    add_boxes(app, widget, tight_box(lv) + np.array([-3, -3, 3, 3]))
    ys, xs = np.nonzero(lv)
    widget.tools.activate_point_mode()
    n = widget.previews_painted
    widget.layers["points"].add(xy_to_rc(centroid(lv)[None]))
    widget.tools.toggle_negative()
    myo = ref == 2
    mys, mxs = np.nonzero(myo)
    far = np.argmax((mxs - xs.mean()) ** 2 + (mys - ys.mean()) ** 2 * 0 - (mys - ys.mean()) ** 2)
    widget.layers["points"].add(xy_to_rc([[mxs[far], mys[far]]]))
    pump(app, lambda: widget.previews_painted > n and widget.is_idle)
    shoot(viewer, app, "plugin_points.png")
    widget.tools.toggle_negative()
    widget.clear_prompts()
    pump(app, lambda: widget.is_idle)

    # A batch: both ventricles, each box one object; the second is renamed in the table as a user would.
    add_boxes(app, widget, tight_box(lv), tight_box(rv))
    widget.tools.activate_box_mode()
    shoot(viewer, app, "plugin_batch.png")
    widget.commit()
    pump(app, lambda: widget.is_idle)
    widget.objects.table.item(1, 1).setText("RightVentricle")
    viewer.layers.selection.active = widget.layers["objects"]
    shoot(viewer, app, "plugin_objects.png", widget.ui.objects)
    widget.ui.help.setChecked(True)
    shoot(viewer, app, "plugin_shortcuts.png", widget.ui.shortcuts)
    widget.ui.help.setChecked(False)

    # A second image in the same viewer: the brain MRI slice (0.78 mm pixels: areas in mm²).
    viewer.layers["cardiac MRI"].visible = False
    viewer.layers["cardiac MRI · objects"].visible = False
    for data, kwargs, kind in brain_mri():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget.set_image_layer(viewer.layers["brain MRI"])
    pump(app, lambda: widget.is_idle)
    tumour = viewer.layers["brain MRI reference"].data > 0
    frame(viewer, tumour, 6.0, viewer.layers["brain MRI"])
    add_boxes(app, widget, tight_box(tumour))
    widget.commit()
    pump(app, lambda: widget.is_idle)
    viewer.layers.selection.active = widget.layers["objects"]
    shoot(viewer, app, "plugin_two_images.png", widget.ui.objects)
    viewer.close()

    # One click, with the shipped MRI adapter (LiteMedSAM alone was trained with boxes only).
    viewer, widget = click_with_adapter(app, "mri", "plugin_click_adapter.png")
    viewer.close()

    # Chest CT volume: commit on the middle tumour slice, propagate, show another slice.
    viewer, widget = open_ready(app, "lung_ct_volume")
    tumour = viewer.layers["chest CT reference"].data > 0
    zs = np.nonzero(tumour.any(axis=(1, 2)))[0]
    mid = int(zs[len(zs) // 2])
    viewer.dims.set_current_step(0, mid)
    pump(app, lambda: widget.is_idle)
    frame(viewer, tumour[mid], 3.0)
    add_boxes(app, widget, tight_box(tumour[mid]), z=mid)
    widget.commit()
    widget.propagate()
    pump(app, lambda: not widget.propagation.active)
    viewer.dims.set_current_step(0, mid - 3)
    pump(app, lambda: widget.is_idle)
    viewer.layers.selection.active = widget.layers["objects"]
    shoot(viewer, app, "plugin_propagation.png", widget.ui.propagate)
    viewer.close()


SHARED_DATA = Path(os.environ.get("MINISAM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def open_plugin(app, setup=None):
    """An empty viewer at the screenshot size with the widget docked (default model), ``setup(viewer)`` first."""
    import napari

    from napari_qlora_minisam._qt.demo import PLUGIN, WIDGET

    viewer = napari.Viewer(title="napari-qlora-minisam")
    viewer.window._qt_window.resize(*WINDOW)
    if setup is not None:
        setup(viewer)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    pump(app, lambda: widget.model is not None and widget.is_idle)
    return viewer, widget


def shoot_series(app) -> None:
    """Four cardiac MRI slices (COSMOS layout) as a series: LV committed on case 1, Next, a box on case 2."""
    import shutil
    import tempfile

    import imageio.v3 as iio

    heart = SHARED_DATA / "cosmos_sample" / "data" / "test_data" / "22_Heart"
    work = Path(tempfile.gettempdir()) / "heart-series"  # a short path: the panel and the message show it
    shutil.rmtree(work, ignore_errors=True)
    names = ("22_Heart_2_4", "22_Heart_2_8", "22_Heart_2_9", "22_Heart_2_10")
    (work / "cases").mkdir(parents=True)
    for name in names:
        shutil.copy(heart / "images" / f"{name}.png", work / "cases")
    lv = {name: iio.imread(heart / "labels" / f"{name}.png") == 85 for name in names[:2]}  # 85: LV in 22_Heart.json
    viewer, widget = open_plugin(app)
    widget.series.open_folder(work / "cases", output_dir=work / "objects")
    pump(app, lambda: widget.is_idle)
    add_boxes(app, widget, tight_box(lv[names[0]]) + np.array([-3, -3, 3, 3]))
    widget.commit()
    pump(app, lambda: widget.is_idle)
    widget.series.next_case()
    pump(app, lambda: widget.is_idle)
    frame(viewer, lv[names[1]], 5.0, widget.binding.image)
    add_boxes(app, widget, tight_box(lv[names[1]]) + np.array([-3, -3, 3, 3]))
    viewer.layers.selection.active = widget.layers["box"]
    shoot(viewer, app, "plugin_series.png")
    viewer.close()
    shutil.rmtree(work)


def shoot_nifti(app) -> None:
    """A chest CT volume written as NIfTI and opened with the plugin's reader (mm scale); then precompute."""
    import json
    import shutil
    import tempfile

    import tifffile

    from napari_qlora_minisam.io.nifti import write_nifti

    volumes = SHARED_DATA / "volumes"
    spacing = json.loads((volumes / "volumes.json").read_text())["lung1"]["spacing_xyz_mm"]
    work = Path(tempfile.mkdtemp(prefix="minisam-nifti-"))
    os.environ["MINISAM_EMBEDDINGS_DIR"] = str(work / "embeddings")  # empty: precompute has all to do
    path = write_nifti(work / "lung1.nii.gz", tifffile.imread(volumes / "lung1_image.tif"),
                       np.diag([*spacing, 1.0]))
    tumour = tifffile.imread(volumes / "lung1_label.tif") > 0
    mid = int(np.median(np.nonzero(tumour.any(axis=(1, 2)))[0]))

    def setup(viewer):
        [image] = viewer.open(path, plugin="napari-qlora-minisam")
        viewer.dims.set_current_step(0, mid)
        image.contrast_limits = (-1350, 150)  # the lung window the model is given below
        # the scale the reader gave, in mm (napari's scale bar would say "pixel": the layer names no unit)
        overlays = viewer.canvas.overlays
        overlays["text"].visible = True
        overlays["text"].font_size, overlays["text"].position = 10, "top_left"
        overlays["text"].text = (f"{Path(path).name}: scale (z, y, x) = "
                                 f"({', '.join(f'{s:.4g}' for s in image.scale)}) mm")

    viewer, widget = open_plugin(app, setup)
    widget.ui.intensity.setCurrentText("CT lung (W1500 L−600)")
    pump(app, lambda: widget.is_idle)
    frame(viewer, tumour[mid], 12.0, widget.binding.image)
    add_boxes(app, widget, tight_box(tumour[mid]) + np.array([-2, -2, 2, 2]), z=mid)
    widget.commit()
    pump(app, lambda: widget.is_idle)
    viewer.layers.selection.active = widget.binding.image
    shoot(viewer, app, "plugin_nifti.png")

    panel = widget.precompute
    panel.start_button.click()
    pump(app, lambda: panel.progress.value() >= 6 or not panel.active)
    shoot(viewer, app, "plugin_precompute.png", panel)
    panel.cancel()
    pump(app, lambda: not panel.active)
    viewer.close()
    shutil.rmtree(work)


def shoot_correction(app) -> None:
    """brain1 (shared MRI volume): the middle tumour slice committed from its box and propagated; slice 15, where
    propagation went wrong, boxed and redrawn (Shift+R), re-propagated up, and the run's leak past the tumour's
    last slice erased from there (plugin_redraw.png). Prints Dice and the leaked slices."""
    import json

    import tifffile

    from napari_qlora_minisam.masks import dice

    os.environ[MODEL_ENV] = "litemedsam"  # the caption's figures (the minisam part, run before, sets its own)
    volumes = SHARED_DATA / "volumes"
    image = tifffile.imread(volumes / "brain1_image.tif")
    tumour = tifffile.imread(volumes / "brain1_label.tif") > 0
    spacing = json.loads((volumes / "volumes.json").read_text())["brain1"]["spacing_xyz_mm"]
    zs = [int(z) for z in np.nonzero(tumour.any(axis=(1, 2)))[0]]
    mid, fix = zs[len(zs) // 2], zs[len(zs) // 2] + 1
    viewer, widget = open_plugin(app, lambda v: v.add_image(image, name="brain1", scale=spacing[::-1]))

    def object_dice():
        objects = widget.layers["objects"].data
        return np.mean([dice(objects[z] == 1, tumour[z]) for z in zs])

    viewer.dims.set_current_step(0, mid)
    pump(app, lambda: widget.is_idle)
    add_boxes(app, widget, tight_box(tumour[mid]), z=mid)
    widget.commit()
    widget.propagate()
    pump(app, lambda: not widget.propagation.active and widget.is_idle)
    objects = widget.layers["objects"].data
    print(f"propagated: Dice (object) {object_dice():.3f}; slice {fix} {dice(objects[fix] == 1, tumour[fix]):.3f}")
    viewer.dims.set_current_step(0, fix)
    pump(app, lambda: widget.is_idle)
    frame(viewer, tumour[fix], 5.0, widget.binding.image)
    add_boxes(app, widget, tight_box(tumour[fix]), z=fix)
    widget.redraw()
    pump(app, lambda: widget.is_idle)
    print(f"redrawn slice {fix}: {dice(objects[fix] == 1, tumour[fix]):.3f}")
    widget.propagation.options.buttons[1].click()
    pump(app, lambda: not widget.propagation.active and widget.is_idle)
    leaked = [z for z in range(len(image)) if z not in zs and (objects[z] == 1).any()]
    print(f"re-propagated up: Dice (object) {object_dice():.3f}, leaked slices {leaked}")
    viewer.dims.set_current_step(0, zs[-1])  # the tumour's last slice: the object ends here
    pump(app, lambda: widget.is_idle)
    widget.propagation.options.erase_buttons[1].click()
    pump(app, lambda: widget.is_idle)
    leaked = [z for z in range(len(image)) if z not in zs and (objects[z] == 1).any()]
    print(f"erased above slice {zs[-1]}: leaked slices {leaked}")
    viewer.layers.selection.active = widget.layers["objects"]
    shoot(viewer, app, "plugin_redraw.png", widget.propagation.options)
    viewer.close()


def shoot_minisam(app) -> None:
    """The plugin's default model, MiniSAM: both ventricles committed from their boxes, then one click on the
    left ventricle with its shipped ``minisam-mri`` adapter (plugin_minisam.png, plugin_minisam_click.png).
    Prints each mask's Dice against the sample's reference."""
    from napari_qlora_minisam import MiniSamPredictor, load_model
    from napari_qlora_minisam.masks import dice

    os.environ[MODEL_ENV] = "minisam"
    viewer, widget = open_ready(app, "heart_mri")
    assert widget.model.name == "minisam", widget.model.name
    ref = viewer.layers["cardiac MRI reference"].data
    lv, rv = ref == 1, ref == 3
    frame(viewer, lv | rv, 2.6)
    add_boxes(app, widget, tight_box(lv), tight_box(rv))
    widget.commit()
    pump(app, lambda: widget.is_idle)
    objects = widget.layers["objects"].data
    print(f"MiniSAM boxes: LV Dice {dice(objects == 1, lv):.3f}, RV Dice {dice(objects == 2, rv):.3f}")
    widget.objects.table.item(1, 1).setText("RightVentricle")  # new ids take the sample's label names
    teacher = MiniSamPredictor(load_model("litemedsam", device="cpu"))  # the same boxes, for the caption
    teacher.set_image(viewer.layers["cardiac MRI"].data)
    lv_t, rv_t = (teacher.predict(box=tight_box(m), multimask=False)[0][0] for m in (lv, rv))
    print(f"LiteMedSAM, same boxes: LV Dice {dice(lv_t, lv):.3f}, RV Dice {dice(rv_t, rv):.3f}")
    viewer.layers.selection.active = widget.layers["objects"]
    shoot(viewer, app, "plugin_minisam.png")
    viewer.close()

    viewer, widget = click_with_adapter(app, "minisam-mri", "plugin_minisam_click.png")
    widget.commit()  # the preview shown is what Commit writes
    pump(app, lambda: widget.is_idle)
    print(f"MiniSAM + minisam-mri, one click: LV Dice {dice(widget.layers['objects'].data == 1, lv):.3f}")
    viewer.close()


PARTS = {"series": shoot_series, "nifti": shoot_nifti, "minisam": shoot_minisam, "correction": shoot_correction}

if __name__ == "__main__":
    import sys

    from napari.qt import get_qapp

    # The docs' figures and captions are LiteMedSAM's (with its "mri" adapter), not the plugin default's.
    os.environ[MODEL_ENV] = "litemedsam"

    if len(sys.argv) == 1:
        main()
    for part in sys.argv[1:] or PARTS:
        PARTS[part](get_qapp())
