"""Training an adapter from the committed objects inside the widget (tiny random SAM, tiny budgets, threaded)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_qlora_minisam.adapters import list_adapters, read_adapter_metadata
from tests._qt.helpers import MODEL_TIMEOUT_MS, draw_boxes, wait_idle

pytestmark = [pytest.mark.gui]


@pytest.fixture
def volume_with_objects(tiny_widget, qtbot, tmp_path, monkeypatch):
    """The chest CT sample with an object committed on two of its slices."""
    from napari_qlora_minisam._sample_data import lung_ct_volume

    monkeypatch.setenv("MINISAM_ADAPTERS_DIR", str(tmp_path / "adapters"))
    viewer, widget, _ = tiny_widget
    for data, kwargs, kind in lung_ct_volume():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget.set_image_layer(viewer.layers["chest CT"])
    wait_idle(qtbot, widget)
    tumour = viewer.layers["chest CT reference"].data > 0
    zs = np.nonzero(tumour.any(axis=(1, 2)))[0]
    assert "Commit at least 2" in widget.ui.train_summary.text() and not widget.ui.train.isEnabled()
    for k, z in enumerate((zs[2], zs[-3])):
        viewer.dims.set_current_step(0, int(z))
        wait_idle(qtbot, widget)
        ys, xs = np.nonzero(tumour[z])
        draw_boxes(qtbot, widget, [xs.min(), ys.min(), xs.max(), ys.max()], z=int(z))
        widget.commit()
        if k == 0:
            widget.training.refresh()
            assert "1 object on 1 slice" in widget.ui.train_summary.text() and not widget.ui.train.isEnabled()
    return viewer, widget, tmp_path / "adapters"


def test_train_an_adapter_from_committed_objects(volume_with_objects, qtbot):
    viewer, widget, adapters_dir = volume_with_objects
    base = widget.model
    assert "2 objects on 2 slices" in widget.ui.train_summary.text() or \
        "1 object on 2 slices" in widget.ui.train_summary.text()
    assert widget.ui.train.isEnabled()
    widget.ui.train_name.setText("lung-test")
    widget.ui.train_minutes.setValue(0.1)
    steps = []
    widget.training.progress.connect(lambda p: steps.append(p.step))
    widget.ui.train.click()
    assert widget.training.active and not widget.ui.train_progress.isHidden()
    qtbot.waitUntil(lambda: not widget.training.active, timeout=MODEL_TIMEOUT_MS)
    wait_idle(qtbot, widget)
    assert steps and steps[-1] >= 1, widget.message
    assert "lung-test trained" in widget.message and "held-back" in widget.message, widget.message
    assert widget.model is base and widget.model.active_adapter == "lung-test"  # the base was not reloaded
    assert widget.ui.adapter.currentText() == "lung-test (annotated)"
    meta = read_adapter_metadata(adapters_dir / "lung-test")
    assert meta["training_images"][0]["name"] == "chest CT" and meta["training_images"][0]["labelled_slices"] == 2
    assert meta["training"]["max_minutes"] == pytest.approx(0.1) and "box" in meta["scores"]
    assert any(e.name == "lung-test" for e in list_adapters())
    draw_boxes(qtbot, widget, [60, 60, 120, 120], z=widget.session.z)  # previews go on with the adapter
    assert widget.preview is not None


def test_cancel_mid_run_leaves_a_whole_adapter_or_none(volume_with_objects, qtbot):
    viewer, widget, adapters_dir = volume_with_objects
    widget.ui.train_name.setText("cancelled-run")
    widget.ui.train_minutes.setValue(5.0)
    started = []
    widget.training.progress.connect(lambda p: started.append(p.step))
    widget.ui.train.click()
    qtbot.waitUntil(lambda: len(started) >= 2, timeout=MODEL_TIMEOUT_MS)  # training steps are running
    widget.ui.train_cancel.click()
    qtbot.waitUntil(lambda: not widget.training.active, timeout=MODEL_TIMEOUT_MS)
    wait_idle(qtbot, widget)
    folder = adapters_dir / "cancelled-run"
    if folder.exists():  # the best weights so far, written whole and made active
        assert read_adapter_metadata(folder)["training"]["stopped"] == "cancelled"
        assert {"adapter_config.json", "adapter_model.safetensors"} <= {f.name for f in folder.iterdir()}
        assert widget.model.active_adapter == "cancelled-run"
    leftovers = sorted(p.name for p in adapters_dir.glob(".*")) if adapters_dir.exists() else []
    assert leftovers == []  # no half-written folder


def test_training_refuses_too_few_objects_and_a_missing_active_adapter(tiny_widget, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("MINISAM_ADAPTERS_DIR", str(tmp_path))
    viewer, widget, _ = tiny_widget
    widget.set_image_layer(viewer.add_image(np.random.rand(40, 50), name="img"))
    wait_idle(qtbot, widget)
    widget.training.start()
    assert "at least 2 committed objects" in widget.message
    draw_boxes(qtbot, widget, [2, 2, 20, 20], [25, 20, 48, 38])
    widget.ui.overwrite.setChecked(True)
    widget.commit()
    widget.ui.train_start.setCurrentIndex(1)  # continue the active adapter: there is none
    widget.training.start()
    assert "No adapter is active" in widget.message and not widget.training.active
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_train_after_previews_with_the_real_model(open_widget, qtbot, tmp_path, monkeypatch):
    """With a full-precision real model the previews have run its compiled encoder graph by the time the user
    trains: the copy the worker trains must still be made (the graph is not copied)."""
    from napari_qlora_minisam._sample_data import heart_mri
    from napari_qlora_minisam.masks import tight_box

    monkeypatch.setenv("MINISAM_ADAPTERS_DIR", str(tmp_path / "adapters"))
    viewer, widget, (image, reference) = open_widget(heart_mri)
    backend = widget.model
    assert backend.quantization is None and backend.encoder_engine() is not None  # the graph has encoded
    draw_boxes(qtbot, widget, tight_box(reference.data == 1), tight_box(reference.data == 3))
    widget.commit()
    widget.training.refresh()
    assert widget.ui.train.isEnabled(), widget.ui.train_summary.text()
    widget.ui.train_name.setText("heart-test")
    widget.ui.train_minutes.setValue(0.1)
    widget.ui.train.click()
    qtbot.waitUntil(lambda: not widget.training.active, timeout=MODEL_TIMEOUT_MS)
    wait_idle(qtbot, widget)
    assert "heart-test trained" in widget.message, widget.message
    assert widget.model is backend and backend.active_adapter == "heart-test"
    assert backend.encoder_engine() is not None  # the model in use kept its graph


@pytest.mark.slow
def test_another_model_loaded_while_training_keeps_the_adapter_for_its_base(volume_with_objects, qtbot):
    viewer, widget, adapters_dir = volume_with_objects
    widget.ui.train_name.setText("tiny-run")
    widget.ui.train_minutes.setValue(0.2)  # outlasts the load below
    widget.ui.train.click()
    assert widget.training.active
    widget.models.load("litemedsam")  # the user loads another base before the run ends
    qtbot.waitUntil(lambda: not widget.training.active and widget.model.source == "litemedsam",
                    timeout=MODEL_TIMEOUT_MS)
    wait_idle(qtbot, widget)
    assert "tiny-run trained" in widget.message and "not active" in widget.message, widget.message
    assert "Load tiny_hf_sam to use it" in widget.message, widget.message
    assert widget.model.active_adapter is None and widget.ui.adapter.currentText() == "none"
    assert not any(widget.ui.adapter.itemText(i).startswith("tiny-run") for i in range(widget.ui.adapter.count()))
    assert (adapters_dir / "tiny-run" / "minisam_adapter.json").is_file()
