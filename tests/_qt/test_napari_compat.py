"""What the widget assumes about napari beyond its documented API (``_qt/napari_compat.py``), checked on the
installed napari: each failure names the assumption that broke."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels, Points, Shapes

from napari_qlora_minisam._qt import napari_compat
from tests._qt.helpers import press, release

pytestmark = [pytest.mark.gui]


def marked():
    def callback(layer, event):
        yield

    return callback


@pytest.mark.parametrize("layer", [Points(np.zeros((0, 2))), Shapes(ndim=2)], ids=["points", "shapes"])
def test_a_callback_put_first_stays_first_across_mode_changes(layer):
    cb = marked()
    napari_compat.put_drag_callback_first(layer, cb)
    for mode in (["add", "select", "pan_zoom", "add"] if isinstance(layer, Points)
                 else ["add_rectangle", "select", "direct", "pan_zoom", "add_rectangle"]):
        layer.mode = mode
        assert napari_compat.has_drag_callback_first(layer), (
            f"napari changed how mode callbacks are ordered (mode {mode!r}): the gesture callback is no longer "
            "first, so clicks are no longer decoded at their press (see _qt/napari_compat.py)")
    napari_compat.put_drag_callback_first(layer, marked())  # replaces, never stacks
    assert sum(getattr(c, napari_compat.MARK, False) for c in layer.mouse_drag_callbacks) == 1
    napari_compat.remove_drag_callback(layer)
    assert not napari_compat.has_drag_callback_first(layer)


def test_points_add_mode_adds_at_the_release_with_the_feature_defaults():
    layer = Points(np.zeros((0, 2)), features={"prompt": np.array([], dtype=object)},
                   feature_defaults={"prompt": "negative"})
    layer.mode = "add"
    press(layer, (4.0, 6.0))
    assert len(layer.data) == 0, "napari now adds a point at the press: gestures.predicted_click is wrong"
    release(layer, (4.0, 6.0))
    np.testing.assert_array_equal(layer.data, [[4.0, 6.0]])
    assert layer.features["prompt"].tolist() == ["negative"]


def test_labels_history_groups_data_setitem_and_keeps_brush_order():
    layer = Labels(np.zeros((10, 10), np.int32))
    painted = []
    layer.events.paint.connect(lambda e: painted.append(1))
    with layer.block_history():
        layer.data_setitem((np.array([1, 2]), np.array([1, 2])), np.array([3, 4]))
        layer.data_setitem((np.array([5]), np.array([5])), 6)
    assert painted == [1], "data_setitem inside block_history should make one paint event / undo step"
    layer.paint((8, 8), 9)
    layer.undo()
    assert layer.data[8, 8] == 0 and layer.data[1, 1] == 3
    layer.undo()
    assert not layer.data.any()
    layer.redo()
    assert layer.data[2, 2] == 4 and layer.data[5, 5] == 6


def test_labels_contour_and_direct_colormap_with_a_default():
    from napari.utils.colormaps import DirectLabelColormap

    layer = Labels(np.zeros((10, 10), np.uint8),
                   colormap=DirectLabelColormap(color_dict={None: "#ffd400", 0: "transparent"}))
    layer.contour = 1
    assert layer.contour == 1
    colours = layer.colormap.map(np.array([0, 1, 7]))
    assert colours[0][3] == 0 and np.allclose(colours[1], colours[2])  # every preview id in one colour


def test_plugin_widgets_get_a_proxied_viewer_and_the_widget_unwraps_it(tiny_widget):
    viewer, widget, _ = tiny_widget
    assert widget.viewer is viewer  # napari gave it a proxy; compared by identity, layers must be the real ones
    assert napari_compat.unwrap(viewer) is viewer
