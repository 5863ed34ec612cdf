"""Several images in one viewer: each its own layers, prompts and objects; renames followed; deleted layers
made again; helper layers made in the background (tiny random SAM, threaded)."""

from __future__ import annotations

import numpy as np
import pytest

from tests._qt.helpers import draw_boxes, wait_idle

pytestmark = [pytest.mark.gui]


def roles(widget):
    return {role: layer.name for role, layer in widget.layers.items() if layer is not None}


def test_two_images_keep_separate_prompts_previews_and_objects(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    a = viewer.add_image(np.random.default_rng(0).random((40, 50)), name="first")
    b = viewer.add_image(np.random.default_rng(1).random((30, 30)), name="second")
    widget.set_image_layer(a)
    wait_idle(qtbot, widget)
    assert roles(widget) == {r: f"first · {r}" for r in ("box", "points", "preview")}
    draw_boxes(qtbot, widget, [5, 5, 30, 30])
    widget.commit()  # its objects layer comes with its first object
    assert roles(widget) == {r: f"first · {r}" for r in ("box", "points", "preview", "objects")}
    draw_boxes(qtbot, widget, [10, 10, 40, 35])  # a prompt left on the first image
    first_objects, first_preview = widget.layers["objects"], widget.layers["preview"].data.copy()
    n_layers = len(viewer.layers)

    widget.set_image_layer(b)
    wait_idle(qtbot, widget)
    # The prompt layers follow the picked image: its name, its prompts (none yet), its preview only.
    assert roles(widget) == {r: f"second · {r}" for r in ("box", "points", "preview")}
    assert len(viewer.layers) == n_layers  # picking an image adds no layer
    assert viewer.layers.selection.active is widget.layers["box"]
    assert len(widget.layers["box"].data) == 0 and not widget.layers["preview"].data.any()
    assert widget.layers["preview"].data.shape == (30, 30)
    assert first_objects.visible and first_objects.name == "first · objects"  # results stay
    assert widget.objects.rows == [] and widget.session.prompts == []
    draw_boxes(qtbot, widget, [2, 2, 20, 20])
    widget.commit()
    assert widget.layers["objects"].name == "second · objects"
    assert widget.layers["objects"].data.max() == 1 and first_objects.data.max() == 1  # ids count per image

    widget.set_image_layer(a)
    wait_idle(qtbot, widget)
    assert roles(widget)["box"] == "first · box" and widget.layers["objects"] is first_objects
    assert len(widget.layers["box"].data) == 1 and len(widget.session.prompts) == 1  # its prompt came back
    np.testing.assert_array_equal(widget.layers["preview"].data, first_preview)  # and its preview, not decoded again
    assert [row[0] for row in widget.objects.rows] == ["1"]
    widget.set_image_layer(b)  # switching back and forth adds no layer
    widget.set_image_layer(a)
    wait_idle(qtbot, widget)
    assert len(viewer.layers) == n_layers + 1
    assert sum(layer.metadata.get("minisam_role") == "box" for layer in viewer.layers) == 1



def test_picking_in_the_image_box_shows_the_image_in_place_of_the_one_before(tiny_widget, qtbot):
    """Two images on top of each other: picking the lower one hides the upper one and its objects (kept), and
    picking back shows them again; images side by side, or grid mode, are left as they are."""
    viewer, widget, _ = tiny_widget
    lower = viewer.add_image(np.random.default_rng(0).random((40, 50)), name="lower")
    upper = viewer.add_image(np.random.default_rng(1).random((40, 50)), name="upper")
    apart = viewer.add_image(np.random.default_rng(2).random((40, 50)), name="apart", translate=(0, 100))
    combo = widget.ui.image
    combo.setCurrentIndex(1)  # the user's pick: "upper"
    wait_idle(qtbot, widget)
    draw_boxes(qtbot, widget, [5, 5, 30, 30])
    widget.commit()
    upper_objects = widget.layers["objects"]

    combo.setCurrentIndex(0)
    wait_idle(qtbot, widget)
    assert widget.binding.image is lower and lower.visible
    assert not upper.visible and not upper_objects.visible and upper_objects in viewer.layers
    assert "'upper' and its objects are hidden" in widget.message
    draw_boxes(qtbot, widget, [2, 2, 20, 20])
    widget.commit()
    lower_objects = widget.layers["objects"]

    combo.setCurrentIndex(1)  # back: shown again, the other one hidden in turn
    wait_idle(qtbot, widget)
    assert upper.visible and upper_objects.visible and upper_objects.data.max() == 1
    assert not lower.visible and not lower_objects.visible

    combo.setCurrentIndex(2)  # side by side: nothing to hide
    wait_idle(qtbot, widget)
    assert apart.visible and upper.visible and upper_objects.visible
    assert "hidden" not in widget.message

    viewer.grid.enabled = True
    combo.setCurrentIndex(0)
    wait_idle(qtbot, widget)
    assert lower.visible and lower_objects.visible and apart.visible  # grid mode: every image has its own cell

def test_renamed_image_keeps_its_layers_and_ids(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    image = viewer.add_image(np.random.default_rng(0).random((40, 50)), name="scan")
    widget.set_image_layer(image)
    wait_idle(qtbot, widget)
    draw_boxes(qtbot, widget, [5, 5, 30, 30])
    widget.commit()
    image.name = "patient 7"
    assert roles(widget) == {r: f"patient 7 · {r}" for r in ("box", "points", "preview", "objects")}
    assert widget.ui.image.currentText() == "patient 7"
    draw_boxes(qtbot, widget, [30, 20, 45, 38])
    widget.commit()
    assert set(np.unique(widget.layers["objects"].data)) >= {1, 2}


def test_a_deleted_objects_layer_is_made_again_and_ids_go_on(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    image = viewer.add_image(np.random.default_rng(0).random((40, 50)), name="img")
    widget.set_image_layer(image)
    wait_idle(qtbot, widget)
    draw_boxes(qtbot, widget, [5, 5, 30, 30])
    widget.commit()
    viewer.layers.remove(widget.layers["objects"])
    assert widget.layers["objects"] is None and widget.objects.rows == []
    draw_boxes(qtbot, widget, [5, 5, 30, 30])
    widget.commit()
    assert "Committed object 2" in widget.message, widget.message
    assert widget.layers["objects"].name == "img · objects" and widget.layers["objects"] in viewer.layers
    assert widget.layers["objects"].data.max() == 2


def test_a_deleted_prompt_layer_is_made_again_and_a_removed_image_is_dropped(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    a = viewer.add_image(np.random.rand(40, 50), name="a")
    widget.set_image_layer(a)
    wait_idle(qtbot, widget)
    viewer.layers.remove(widget.layers["box"])
    widget.set_image_layer(a)
    wait_idle(qtbot, widget)
    assert widget.layers["box"] in viewer.layers
    b = viewer.add_image(np.random.rand(20, 20), name="b")
    viewer.layers.remove(a)
    wait_idle(qtbot, widget)
    assert widget.binding.image is b and list(widget.images.bindings.values())[0].image is b
    assert [widget.ui.image.itemText(i) for i in range(widget.ui.image.count())] == ["b"]


def test_deleting_the_only_volume_takes_its_prompt_layers_not_its_objects(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    flat = viewer.add_image(np.random.rand(32, 32), name="slice")
    vol = viewer.add_image(np.random.rand(6, 32, 32), name="vol")
    widget.set_image_layer(vol)
    wait_idle(qtbot, widget)
    draw_boxes(qtbot, widget, [4, 4, 20, 20], z=widget.session.z)
    widget.commit()
    objects = widget.layers["objects"]
    widget.set_image_layer(flat)
    wait_idle(qtbot, widget)
    viewer.layers.remove(vol)
    qtbot.waitUntil(lambda: "vol · box" not in viewer.layers, timeout=5_000)
    wait_idle(qtbot, widget)
    names = [layer.name for layer in viewer.layers]
    assert not any(n in names for n in ("vol · box", "vol · points", "vol · preview")), names
    assert objects in viewer.layers and objects.data.any()  # the user's work stays
    assert roles(widget) == {r: f"slice · {r}" for r in ("box", "points", "preview")}
    again = viewer.add_image(np.random.rand(4, 32, 32), name="vol2")
    widget.set_image_layer(again)
    wait_idle(qtbot, widget)
    assert widget.layers["box"].ndim == 3 and widget.layers["box"].name == "vol2 · box"
    draw_boxes(qtbot, widget, [4, 4, 20, 20], z=widget.session.z)
    assert widget.preview is not None


def test_a_volume_and_a_slice_side_by_side(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    flat = viewer.add_image(np.random.rand(32, 32), name="slice")
    vol = viewer.add_image(np.random.rand(6, 32, 32), name="vol", scale=(5.0, 0.5, 0.5))
    widget.set_image_layer(vol)
    viewer.dims.set_current_step(0, 4)
    wait_idle(qtbot, widget)
    assert widget.session.z == 4 and widget.layers["box"].ndim == 3
    draw_boxes(qtbot, widget, [4, 4, 20, 20], z=4)
    widget.commit()
    assert widget.layers["objects"].data[4].any() and widget.objects.rows[0][2] == "4"
    assert widget.objects.rows[0][3].endswith("mL")  # 5 x 0.5 x 0.5 mm voxels
    box_3d = widget.layers["box"]
    widget.set_image_layer(flat)
    wait_idle(qtbot, widget)
    assert widget.layers["box"].ndim == 2 and widget.session.z is None
    assert not box_3d.visible and widget.layers["box"].visible  # one prompt set per dimensionality, one shown


def test_objects_table_names_sizes_selection_and_delete(tiny_widget, qtbot, tmp_path):
    from napari_qlora_minisam._writer import write_labels_tiff

    viewer, widget, _ = tiny_widget
    image = viewer.add_image(np.random.default_rng(0).random((40, 50)), name="img", scale=(0.5, 0.5),
                             metadata={"minisam_class_names": ["Liver", "Spleen"]})
    widget.set_image_layer(image)
    wait_idle(qtbot, widget)
    widget.ui.overwrite.setChecked(True)
    draw_boxes(qtbot, widget, [2, 2, 20, 20], [25, 20, 48, 38])
    widget.commit()
    rows = widget.objects.rows
    assert [r[:2] for r in rows] == [("1", "Liver"), ("2", "Spleen")]
    labels = widget.layers["objects"]
    assert rows[0][3] == f"{(labels.data == 1).sum() * 0.25:.1f} mm²"  # 0.5 mm pixels
    widget.objects.table.item(1, 1).setText("left kidney")  # the user edits a name in the table
    assert widget.session.names()[2] == "left kidney"
    written = write_labels_tiff(str(tmp_path / "img.tif"), labels.data, {"features": labels.features})
    assert "left kidney" in open(written[1]).read()  # the names travel with the layer and the writer
    widget.objects.select(2)
    assert labels.selected_label == 2
    widget.objects.delete_selected()
    assert not (labels.data == 2).any() and [r[0] for r in widget.objects.rows] == ["1"]
    widget.undo()
    assert (labels.data == 2).any() and widget.objects.rows[1][1] == "left kidney"
    widget.objects.table.item(0, 1).setText("  ")
    assert "cannot be empty" in widget.message and widget.objects.rows[0][1] == "Liver"


def test_an_image_the_model_cannot_take_is_explained_in_the_guidance(open_widget, qtbot, monkeypatch):
    monkeypatch.setenv("MINISAM_NAPARI_MODEL", "tiny_hf_sam")
    viewer, widget, _ = open_widget()  # opened first: the 4D image arrives while the widget is docked
    viewer.add_image(np.zeros((3, 5, 32, 32), np.uint8), name="cine")
    wait_idle(qtbot, widget)
    assert widget.binding is None
    text = widget.ui.guidance.text()
    assert "'cine' cannot be segmented" in text and "4 dimensions" in text and "3D stack" in text, text
    viewer.layers.remove("cine")  # gone: the advice goes with it
    wait_idle(qtbot, widget)
    assert "cannot be segmented" not in widget.ui.guidance.text() and "Open an image" in widget.ui.guidance.text()
    viewer.add_image(np.zeros((3, 5, 32, 32), np.uint8), name="cine")
    wait_idle(qtbot, widget)
    viewer.add_image(np.random.rand(32, 32), name="slice")  # a usable image replaces the advice
    wait_idle(qtbot, widget)
    assert widget.binding is not None and "cannot be segmented" not in widget.ui.guidance.text()


def test_the_form_scrolls_so_the_dock_fits_a_laptop_screen(tiny_widget, qtbot):
    """Every group is reachable on a 768-px-high screen: the groups scroll, the message line stays in sight."""
    viewer, widget, _ = tiny_widget
    viewer.add_image(np.random.rand(6, 32, 32), name="vol")
    wait_idle(qtbot, widget)
    ui = widget.ui
    assert widget.minimumSizeHint().height() < 300  # was the whole form's height (~1250 px)
    assert ui.form.isAncestorOf(ui.propagate) and ui.form.isAncestorOf(widget.everything)
    assert not ui.form.isAncestorOf(ui.message) and widget.isAncestorOf(ui.message)
    assert ui.form.isAncestorOf(widget.series) and ui.form.isAncestorOf(widget.precompute)
    # panels keep their places: series under the guidance line, the two job groups last
    body = ui.body
    assert body.indexOf(widget.series) == body.indexOf(ui.guidance) + 1
    assert body.indexOf(widget.precompute) < body.indexOf(widget.everything) == body.count() - 2  # then the stretch
    window = viewer.window._qt_window
    window.resize(1280, 700)
    qtbot.waitUntil(lambda: window.height() <= 700, timeout=5_000)
    ui.show_group(widget.everything)
    qtbot.wait(50)
    assert ui.scroll.verticalScrollBar().value() > 0  # scrolled down to it
    assert ui.scroll.viewport().width() >= ui.form.minimumSizeHint().width()  # nothing cut on the right


def test_saved_objects_opened_again_become_the_objects_layer(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    image = viewer.add_image(np.random.rand(40, 50), name="scan")
    widget.set_image_layer(image)
    wait_idle(qtbot, widget)
    saved = np.zeros((40, 50), np.int32)
    saved[2:8, 2:8], saved[20:30, 20:30] = 1, 5
    wrong = viewer.add_labels(np.zeros((10, 10), np.int32), name="other shape")
    assert not widget.use_labels_layer(wrong) and "shape (10, 10)" in widget.message
    assert not widget.use_labels_layer(image) and "Select a labels layer" in widget.message
    assert not widget.use_labels_layer(widget.layers["preview"]) and "a layer the widget keeps" in widget.message
    labels = viewer.add_labels(saved, name="scan_objects",
                               features={"index": [0, 1, 5], "name": ["background", "liver", "lesion"]})
    viewer.layers.selection.active = labels
    widget.ui.adopt.click()
    wait_idle(qtbot, widget)
    assert widget.layers["objects"] is labels and "now the objects layer of 'scan': 2 object(s)" in widget.message
    assert [row[:2] for row in widget.objects.rows] == [("1", "liver"), ("5", "lesion")]
    draw_boxes(qtbot, widget, [30, 2, 45, 12])
    widget.commit()
    assert set(np.unique(labels.data)) == {0, 1, 5, 6}  # the next free id; the saved objects untouched
    assert (labels.data[2:8, 2:8] == 1).all() and (labels.data[20:30, 20:30] == 5).all()
    widget.undo()
    np.testing.assert_array_equal(labels.data, saved)
    # the image's objects layer now holds objects: another labels layer is refused, nothing is lost
    widget.commit()
    other = viewer.add_labels(np.zeros((40, 50), np.int32), name="empty")
    assert not widget.use_labels_layer(other) and "already holds this image's objects" in widget.message
    assert widget.layers["objects"] is labels
