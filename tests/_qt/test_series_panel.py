"""The Image series panel: a folder stepped through case by case, each case's objects saved on leaving it."""

from __future__ import annotations

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import tifffile

from napari_qlora_minisam.annotation.objects import features_with_names, names_from_features
from tests._qt.helpers import press_key, wait_idle

SHAPE = (28, 36)


def make_cases(tmp_path, n=3, broken=()):
    folder = tmp_path / "cases"
    folder.mkdir()
    rng = np.random.default_rng(11)
    for i in range(1, n + 1):
        if i in broken:
            (folder / f"case_{i}.png").write_bytes(b"not a png")
        else:
            iio.imwrite(folder / f"case_{i}.png", rng.integers(0, 255, SHAPE, dtype=np.uint8))
    iio.imwrite(folder / "case_1_mask.png", np.zeros(SHAPE, np.uint8))  # a label file: not a case
    return folder


def paint_object(widget, label=1, name="LV"):
    """A direct edit of the picked image's objects layer (made as a commit makes it), with a name."""
    layer = widget.images.make_now(widget.binding, "objects")
    rows, cols = np.mgrid[4:12, 6:20]
    layer.data_setitem((rows.ravel(), cols.ravel()), label)
    layer.features = features_with_names({label: name})
    return np.array(layer.data)


def images(viewer):
    from napari.layers import Image

    return [layer.name for layer in viewer.layers if isinstance(layer, Image)]


def test_next_saves_the_case_and_previous_reloads_it(tiny_widget, qtbot, tmp_path):
    viewer, widget, _ = tiny_widget
    panel, out = widget.series, tmp_path / "objects"
    assert panel.open_folder(make_cases(tmp_path), output_dir=out)
    wait_idle(qtbot, widget)
    assert images(viewer) == ["case_1"] and widget.binding.image.name == "case_1"
    assert panel.progress.text().startswith("case 1 / 3, 0 done")
    assert not panel.previous_button.isEnabled() and panel.next_button.isEnabled()
    painted = paint_object(widget)
    layers_with_objects = len(viewer.layers)

    assert panel.next_case()
    wait_idle(qtbot, widget)
    saved = out / "case_1_objects.tif"
    np.testing.assert_array_equal(tifffile.imread(saved), painted)
    assert images(viewer) == ["case_2"] and widget.binding.image.name == "case_2"
    assert widget.layers["objects"] is None  # case 2 has no objects yet
    assert len(viewer.layers) == layers_with_objects - 1  # case 1's image and objects went, one image came
    box = widget.layers["box"]
    assert viewer.layers.index(widget.binding.image) < viewer.layers.index(box)  # prompts drawn above it
    assert panel.progress.text().startswith("case 2 / 3, 1 done")
    assert f"Saved the objects of case_1 to {saved}. Case 2: case_2." in widget.message

    assert press_key(viewer, "Control-Left")  # the shortcut: back to case 1, its objects from the file
    wait_idle(qtbot, widget)
    assert images(viewer) == ["case_1"] and widget.binding.image.name == "case_1"
    reloaded = widget.layers["objects"]
    np.testing.assert_array_equal(reloaded.data, painted)
    assert names_from_features(reloaded.features)[1] == "LV"
    assert widget.objects.table.rowCount() == 1  # the objects panel lists the reloaded object
    assert not (out / "case_2_objects.tif").exists()  # nothing was drawn on case 2: nothing written
    assert panel.progress.text().startswith("case 1 / 3, 1 done")
    stamp = saved.stat().st_mtime_ns
    assert press_key(viewer, "Control-Right")
    wait_idle(qtbot, widget)
    assert saved.stat().st_mtime_ns == stamp  # unchanged objects are not written again
    assert panel.go(2) and not panel.next_button.isEnabled()
    wait_idle(qtbot, widget)


def test_closing_the_widget_or_deleting_the_image_saves_the_case(tiny_widget, qtbot, tmp_path):
    viewer, widget, _ = tiny_widget
    panel, out = widget.series, tmp_path / "objects"
    assert panel.open_folder(make_cases(tmp_path), output_dir=out, fmt="nifti")
    wait_idle(qtbot, widget)
    painted = paint_object(widget)
    viewer.layers.remove(widget.binding.image)  # by hand: the case is saved before its layer goes
    saved = nib.load(str(out / "case_1_objects.nii.gz"))
    np.testing.assert_array_equal(np.asarray(saved.dataobj).T, painted)

    assert panel.go(1)
    wait_idle(qtbot, widget)
    painted = paint_object(widget, label=3, name="RV")
    viewer.window.remove_dock_widget(widget)  # the dock closed mid-case
    saved = nib.load(str(out / "case_2_objects.nii.gz"))
    np.testing.assert_array_equal(np.asarray(saved.dataobj).T, painted)
    assert "RV" in (out / "case_2_objects.objects.csv").read_text()


def test_unwritable_output_or_unreadable_case_keeps_the_case_open(tiny_widget, qtbot, tmp_path):
    viewer, widget, _ = tiny_widget
    panel = widget.series
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the output folder should be")
    assert panel.open_folder(make_cases(tmp_path, broken=(2,)), output_dir=blocked)
    wait_idle(qtbot, widget)
    painted = paint_object(widget)

    assert not panel.next_case()
    assert "pick an output folder you can write to" in widget.message
    assert images(viewer) == ["case_1"]
    np.testing.assert_array_equal(widget.layers["objects"].data, painted)  # nothing lost
    assert panel.progress.text().startswith("case 1 / 3, 0 done")

    panel.output.setText(str(tmp_path / "objects"))
    panel.output.editingFinished.emit()
    assert not panel.next_case()  # case 1 saved now, but case 2 cannot be read
    assert "case_2.png: cannot be read as an image" in widget.message
    assert images(viewer) == ["case_1"] and (tmp_path / "objects" / "case_1_objects.tif").exists()
    np.testing.assert_array_equal(widget.layers["objects"].data, painted)
    assert panel.go(2)  # the case after it still opens
    wait_idle(qtbot, widget)
    assert images(viewer) == ["case_3"] and panel.progress.text().startswith("case 3 / 3, 1 done")


def test_next_without_a_series_says_how_to_open_one(tiny_widget):
    viewer, widget, _ = tiny_widget
    assert not widget.series.next_case()
    assert "Open a series first" in widget.message
