"""Several images in one viewer: each its own layers, prompts and objects; renames followed; deleted layers
made again; helper layers made in the background (tiny random SAM, threaded)."""

from __future__ import annotations

import numpy as np
import pytest

from tests._qt.helpers import draw_boxes, wait_idle

pytestmark = [pytest.mark.gui]


def roles(widget):
    return {role: layer.name for role, layer in widget.layers.items() if layer is not None}


def test_two_images_keep_separate_layers_prompts_and_objects(tiny_widget, qtbot):
    viewer, widget, _ = tiny_widget
    a = viewer.add_image(np.random.default_rng(0).random((40, 50)), name="first")
    b = viewer.add_image(np.random.default_rng(1).random((30, 30)), name="second")
    widget.set_image_layer(a)
    wait_idle(qtbot, widget)
    assert roles(widget) == {r: f"first · {r}" for r in ("box", "points", "preview", "objects")}
    draw_boxes(qtbot, widget, [5, 5, 30, 30])
    widget.commit()
    draw_boxes(qtbot, widget, [10, 10, 40, 35])  # a prompt left on the first image
    first_layers = widget.layers

    widget.set_image_layer(b)
    assert widget.binding.missing() == ["box", "points", "preview", "objects"]  # made in later event-loop turns
    wait_idle(qtbot, widget)
    assert roles(widget) == {r: f"second · {r}" for r in ("box", "points", "preview", "objects")}
    assert viewer.layers.selection.active is widget.layers["box"]  # the picked image's box layer is active
    for role in ("box", "points", "preview"):  # only the picked image's prompts and preview are drawn
        assert not first_layers[role].visible and widget.layers[role].visible
    assert first_layers["objects"].visible  # results stay visible
    assert widget.objects.rows == [] and widget.session.prompts == []
    draw_boxes(qtbot, widget, [2, 2, 20, 20])
    widget.commit()
    assert widget.layers["objects"].data.max() == 1  # ids count per image

    widget.set_image_layer(a)
    wait_idle(qtbot, widget)
    assert widget.layers == first_layers and viewer.layers.selection.active is first_layers["box"]
    assert len(widget.session.prompts) == 1 and widget.preview is not None  # its prompt is still there
    assert [row[0] for row in widget.objects.rows] == ["1"]
    n_layers = len(viewer.layers)
    widget.set_image_layer(b)  # switching back and forth adds no layer
    widget.set_image_layer(a)
    wait_idle(qtbot, widget)
    assert len(viewer.layers) == n_layers


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
    widget.set_image_layer(flat)
    wait_idle(qtbot, widget)
    assert widget.layers["box"].ndim == 2 and widget.session.z is None
