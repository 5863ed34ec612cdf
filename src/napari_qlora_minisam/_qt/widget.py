"""The MiniSAM dock widget: prompts in napari layers -> live mask preview -> committed label objects.

Every model call runs in a worker (see ``tasks.py``); the Qt thread only reads layers and paints results.
Preview requests carry an increasing number and results of superseded requests are dropped, so a fast
drag never paints an old mask over a newer one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QFileDialog, QWidget

from ..adapters import list_adapters
from ..embedding_cache import EmbeddingCache
from ..errors import MiniSamError
from ..labels_edit import LabelEditor
from ..models.cpu_features import bf16_is_native
from ..prompts import PROMPT_FEATURE, slice_prompts
from ..volume import plane, stack_depth
from . import gestures
from . import layers as L
from . import tasks, workers
from .controls import INTENSITY_CHOICES, NO_ADAPTER, Controls
from .gl_safety import keep_triton_out
from .propagation import PropagationController
from .repaint_hold import RepaintHold, canvas_hold

LIST_REPAINT_DELAY_MS = 150
# The canvas waits for the preview at most this long (a decode of the bundled model takes ~15 ms here,
# a ViT-B or 4-bit one ~30-60 ms); a first embedding releases it at once.
CANVAS_HOLD_MAX_MS = 120
# A drag that rests this long gets its preview decoded and painted while the button is still down. A moving
# mouse sends a move every ~10-20 ms, each restarting the wait; under software OpenGL the frame of the last
# move takes ~30-50 ms, so the rest is seen right after it (benchmarks/drag_motion.py). Decoding at every
# move instead was tried: the drag lost frames and the preview came no sooner.
DRAG_PAUSE_MS = 30
AHEAD = -1  # the request number of a click decoded from its press: it answers no request, so is never painted as is

keep_triton_out()  # before any model import: see gl_safety.py

log = logging.getLogger(__name__)
MODEL_ENV = "MINISAM_NAPARI_MODEL"  # default model source (tests may pick a tiny one)

# Embeddings outlive a widget and a model reload: the key covers model identity, adapter and intensity.
SHARED_CACHE = EmbeddingCache()


def describe(exc: BaseException) -> str:
    """A message for the user: our errors already say what to do; others get their type named."""
    if isinstance(exc, MiniSamError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class MiniSamWidget(QWidget):
    """Dock widget (npe2 contribution ``napari-qlora-minisam.segmentation_widget``)."""

    preview_painted = Signal()  # after each preview (or its removal) reached the preview layer

    def __init__(self, napari_viewer, model_source: str | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.ui = Controls(self)
        self.model = None
        self.predictor = None
        self.image_layer = None
        self.points_layer = self.shapes_layer = self.preview_layer = self.objects_layer = None
        self.depth = 0  # number of leading slice axes of the image (0: 2D, 1: 3D stack)
        self.preview = None  # the latest painted tasks.PreviewResult
        self.previews_painted = 0
        self._editors: dict[int, tuple] = {}  # id(objects layer) -> (layer, its undo history)
        self._workers: set = set()
        self._request = 0
        self._preview_running = False
        self._preview_pending = False
        self._commit_when_ready = False
        self._embed_running = False
        self._embed_pending = False
        self._model_busy = False
        self.propagation = PropagationController(self)
        self._painted_z = None
        self._last_z = None
        self._last_decoded = None  # (prompt key, PreviewResult) of the newest decode, even if it was stale
        self._painted_key = None  # prompt key of the preview on screen
        self.clicks_decoded_ahead = 0  # previews painted from a decode started at the click's press
        self._gesture_layer = None  # the prompt layer whose mouse button is down (see gestures.py)
        self._drag_resting = False  # that gesture is a drag whose mouse has stopped (DRAG_PAUSE_MS)
        self._drag_pause = QTimer(self)
        self._drag_pause.setSingleShot(True)
        self._drag_pause.setInterval(DRAG_PAUSE_MS)
        self._drag_pause.timeout.connect(self._on_drag_paused)
        self._previews_suspended = False
        self._thumbnail_timer = QTimer(self)
        self._thumbnail_timer.setSingleShot(True)
        self._thumbnail_timer.setInterval(400)
        self._thumbnail_timer.timeout.connect(self._refresh_preview_thumbnail)
        self._list_hold = RepaintHold(self)  # the layer list repaints after the preview, not during its decode
        self._canvas_hold = canvas_hold(self, CANVAS_HOLD_MAX_MS)  # the edit and its preview in one frame

        ui = self.ui
        ui.image.currentIndexChanged.connect(self._on_image_choice)
        ui.load.clicked.connect(lambda: self.load_model(ui.model.currentText()))
        # Quantization and device are properties of the loaded weights: changing them reloads the model.
        ui.quantize.toggled.connect(lambda _on: self.load_model(ui.model.currentText()))
        ui.device.currentIndexChanged.connect(lambda _i: self.load_model(ui.model.currentText()))
        # Opt-in: ~15 % faster decode with native bf16, but no measurable gain in the widget under software
        # OpenGL (canvas redraws dominate, docs/benchmarks.md), so float32 stays the default.
        ui.bf16_decoder.setEnabled(bf16_is_native())
        ui.bf16_decoder.toggled.connect(lambda _on: self._apply_decoder_precision())
        ui.browse.clicked.connect(self._browse_model)
        ui.adapter.currentIndexChanged.connect(self._on_adapter_choice)
        ui.refresh_adapters.clicked.connect(self.refresh_adapters)
        ui.intensity.currentIndexChanged.connect(self._on_intensity)
        ui.box_mode.clicked.connect(self.activate_box_mode)
        ui.point_mode.clicked.connect(self.activate_point_mode)
        ui.negative.toggled.connect(self._on_negative_toggled)
        ui.clear.clicked.connect(self.clear_prompts)
        ui.commit.clicked.connect(self.commit)
        ui.undo.clicked.connect(self.undo)
        ui.redo.clicked.connect(self.redo)
        ui.propagate.clicked.connect(self.propagate)
        ui.cancel.clicked.connect(self.cancel_propagation)

        self.viewer.layers.events.inserted.connect(self._refresh_image_choices)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.viewer.dims.events.current_step.connect(self._on_slice_changed)
        self.refresh_adapters()
        self._refresh_image_choices()
        self._update_buttons()
        source = model_source or os.environ.get(MODEL_ENV, "litemedsam")
        ui.model.setCurrentText(source)
        self.load_model(source)

    # -- status ---------------------------------------------------------------------------------------
    @property
    def intensity(self) -> str:
        return INTENSITY_CHOICES[self.ui.intensity.currentText()]

    @property
    def message(self) -> str:
        return self.ui.message.text()

    @property
    def is_idle(self) -> bool:
        """No model work running or queued (tests and benchmarks wait for this)."""
        return not (self._workers or self._preview_running or self._preview_pending or self._embed_running
                    or self._embed_pending or self._model_busy)

    def show_message(self, text: str, error: bool = False) -> None:
        self.ui.message.setText(text)
        self.ui.message.setStyleSheet("color: #ff6b6b;" if error else "")
        if error:
            log.info("MiniSAM: %s", text)

    def _error(self, exc: BaseException) -> None:
        if not isinstance(exc, MiniSamError):
            log.error("MiniSAM worker failed", exc_info=exc)
        self.show_message(describe(exc), error=True)

    def _update_buttons(self) -> None:
        ui = self.ui
        editor = self.editor
        ui.undo.setEnabled(bool(editor and editor.can_undo))
        ui.redo.setEnabled(bool(editor and editor.can_redo))
        ui.propagate.setEnabled(self.depth == 1 and not self.propagation.running)
        ui.commit.setEnabled(self.image_layer is not None)

    # -- model ----------------------------------------------------------------------------------------
    def load_model(self, source: str) -> None:
        """Load a model in the background; the current one keeps working until the new one is ready."""
        source = (source or "").strip() or "litemedsam"
        quantize = "nf4" if self.ui.quantize.isChecked() else None
        self._model_busy = True
        self.ui.load.setEnabled(False)
        workers.start(tasks.load_model_task, source, quantize, self.ui.device.currentText(),
                      on_yielded=lambda text: self.show_message(text),
                      on_returned=self._model_loaded, on_errored=self._error,
                      on_finished=self._model_finished, keep=self._workers)

    def _apply_decoder_precision(self, schedule: bool = True) -> None:
        """Backends with a bf16 fast decoder (LiteMedSAM) follow the checkbox; others ignore it."""
        if self.model is None or not hasattr(self.model, "decoder_precision"):
            return
        self.model.decoder_precision = "bf16" if self.ui.bf16_decoder.isChecked() else "fp32"
        if schedule:
            self.schedule_preview()

    def _model_finished(self) -> None:
        self._model_busy = False
        self.ui.load.setEnabled(True)

    def _model_loaded(self, backend) -> None:
        from ..predictor import MiniSamPredictor

        self.model = backend
        self.predictor = MiniSamPredictor(backend, intensity=self.intensity, cache=SHARED_CACHE)
        self._apply_decoder_precision(schedule=False)
        self._request += 1  # previews from the old model are stale now
        self.refresh_adapters()
        self.show_message(f"Model {backend.name} ready ({backend.num_parameters() / 1e6:.1f} M parameters).")
        self._schedule_embedding()
        self.schedule_preview()

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Model checkpoint or folder", str(Path.home()),
            "SAM checkpoint (*.pth *.pt *.bin);;Hugging Face model folder (config.json)")
        if path:
            if Path(path).name == "config.json":
                path = str(Path(path).parent)
            self.ui.model.setCurrentText(path)
            self.load_model(path)

    def refresh_adapters(self) -> None:
        combo = self.ui.adapter
        active = self.model.active_adapter if self.model is not None else None
        combo.blockSignals(True)
        combo.clear()
        combo.addItem(NO_ADAPTER, None)
        for entry in list_adapters():
            combo.addItem(f"{entry.name} ({entry.modality})", entry)
        self._select_adapter_item(active)
        combo.blockSignals(False)

    def _select_adapter_item(self, name) -> None:
        combo = self.ui.adapter
        for i in range(combo.count()):
            entry = combo.itemData(i)
            if (entry is None and name is None) or (entry is not None and entry.name == name):
                combo.setCurrentIndex(i)
                return

    def _on_adapter_choice(self, index: int) -> None:
        if self.model is None:
            return
        entry = self.ui.adapter.itemData(index)
        self._model_busy = True
        workers.start(tasks.switch_adapter_task, self.model, entry,
                      on_returned=self._adapter_switched, on_errored=self._adapter_failed,
                      on_finished=self._model_finished, keep=self._workers)

    def _adapter_switched(self, name) -> None:
        self._request += 1
        self.show_message(f"Adapter: {name or 'none (base model)'}.")
        self._schedule_embedding()
        self.schedule_preview()

    def _adapter_failed(self, exc) -> None:
        self._error(exc)
        self.ui.adapter.blockSignals(True)
        self._select_adapter_item(self.model.active_adapter if self.model is not None else None)
        self.ui.adapter.blockSignals(False)

    def _on_intensity(self, _index=None) -> None:
        if self.predictor is not None:
            self.predictor.intensity = self.intensity
        self._request += 1
        self._schedule_embedding()
        self.schedule_preview()

    # -- image and layers -----------------------------------------------------------------------------
    def _image_layers(self):
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_image_choices(self, event=None) -> None:
        combo = self.ui.image
        current = combo.currentText()
        names = [layer.name for layer in self._image_layers()]
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(names)
        if current in names:
            combo.setCurrentText(current)
        combo.blockSignals(False)
        if names and (self.image_layer is None or self.image_layer.name not in names):
            self._on_image_choice()

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        for attr in ("points_layer", "shapes_layer", "preview_layer", "objects_layer"):
            if getattr(self, attr) is layer:
                setattr(self, attr, None)
        if layer is self.image_layer:
            self.image_layer = None
            self.depth = 0
        self._refresh_image_choices()
        self._update_buttons()

    def _on_image_choice(self, _index=None) -> None:
        name = self.ui.image.currentText()
        layer = next((lyr for lyr in self._image_layers() if lyr.name == name), None)
        if layer is not None:
            self.set_image_layer(layer)

    def set_image_layer(self, layer) -> None:
        """Segment ``layer``: check its shape, create/find the prompt, preview and objects layers."""
        try:
            depth = stack_depth(layer.data.shape, layer.rgb)
        except MiniSamError as exc:
            self.image_layer = None
            self.depth = 0
            self._update_buttons()
            self._error(exc)
            return
        self.image_layer, self.depth = layer, depth
        if self.ui.image.currentText() != layer.name:
            self.ui.image.blockSignals(True)
            self.ui.image.setCurrentText(layer.name)
            self.ui.image.blockSignals(False)
        self._ensure_layers()
        self._painted_z = None
        self._last_z = self.current_z()
        self.show_message(f"Segmenting {layer.name!r}" + (" (3D: prompts act on the slice in view)." if depth
                                                           else "."))
        self._update_buttons()
        self._schedule_embedding()
        self.schedule_preview()

    def _ensure_layers(self) -> None:
        image = self.image_layer
        shape = L.spatial_shape(image)
        created = []

        def reuse(role, make, fits):
            layer = L.find_layer(self.viewer, role, image)
            if layer is not None and fits(layer):
                return layer
            layer = make(image)
            self.viewer.add_layer(layer)
            created.append(layer)
            return layer

        self.objects_layer = reuse("objects", L.make_objects_layer, lambda lyr: lyr.data.shape == shape)
        self.preview_layer = reuse("preview", L.make_preview_layer, lambda lyr: lyr.data.shape == shape)
        self.points_layer = reuse("points", L.make_points_layer, lambda lyr: lyr.ndim == len(shape))
        self.shapes_layer = reuse("box", L.make_shapes_layer, lambda lyr: lyr.ndim == len(shape))
        for layer in (self.points_layer, self.shapes_layer):
            layer.events.data.connect(self._on_prompts_changed)
            layer.bind_key("c", lambda _layer: self.commit(), overwrite=True)
            gestures.install(layer, self)
        self.points_layer.bind_key("n", lambda _layer: self.toggle_negative(), overwrite=True)
        self.points_layer.bind_key("Shift-N", lambda _layer: self.flip_selected_points(), overwrite=True)
        self.points_layer.events.features.connect(self._on_prompts_changed)
        if created:
            self.activate_box_mode()  # LiteMedSAM is box-trained: drawing a box is the first thing to do

    @property
    def editor(self) -> LabelEditor | None:
        layer = self.objects_layer
        if layer is None:
            return None
        owner, editor = self._editors.get(id(layer), (None, None))
        if owner is not layer:  # ids of deleted layers can be reused by new ones
            editor = LabelEditor()
            self._editors[id(layer)] = (layer, editor)
        return editor

    def current_z(self) -> int | None:
        """Index of the slice in view (``None`` for a 2D image)."""
        if not self.depth or self.image_layer is None:
            return None
        data_pos = self.image_layer.world_to_data(self.viewer.dims.point)
        z = int(round(float(data_pos[0])))
        return int(np.clip(z, 0, self.image_layer.data.shape[0] - 1))

    def current_plane(self):
        return plane(self.image_layer.data, self.current_z())

    def _on_slice_changed(self, event=None) -> None:
        if self.depth and self.image_layer is not None:
            z = self.current_z()
            if z != self._last_z:
                self._last_z = z
                self._request += 1
                self._schedule_embedding()
                self.schedule_preview()

    # -- prompts --------------------------------------------------------------------------------------
    def activate_box_mode(self) -> None:
        if self.shapes_layer is not None:
            self.viewer.layers.selection.active = self.shapes_layer
            self.shapes_layer.mode = "add_rectangle"

    def activate_point_mode(self) -> None:
        if self.points_layer is not None:
            self.viewer.layers.selection.active = self.points_layer
            self.points_layer.mode = "add"

    def toggle_negative(self) -> None:
        self.ui.negative.setChecked(not self.ui.negative.isChecked())

    def _on_negative_toggled(self, negative: bool) -> None:
        # Only the next clicks change: napari keeps the last click selected, and flipping it here would
        # turn "click positive, press N, click negative" into two negatives.
        if self.points_layer is not None:
            L.set_polarity_default(self.points_layer, negative)

    def flip_selected_points(self) -> None:
        """Positive <-> negative for the selected points (Shift+N in the points layer)."""
        if self.points_layer is not None and L.flip_selected_polarity(self.points_layer):
            self.schedule_preview()

    def current_prompts(self, points=None, polarities=None):
        """The prompts on the slice in view; ``points``/``polarities`` stand in for the points layer's."""
        pts, shp = self.points_layer, self.shapes_layer
        if points is None and pts is not None:
            points = pts.data
            polarities = pts.features[PROMPT_FEATURE].tolist() if len(points) else None
        return slice_prompts(
            points, polarities,
            shp.data if shp is not None else (), shp.shape_type if shp is not None else (),
            self.current_z())

    # -- gestures: the mouse button is down in a prompt layer (see gestures.py) ------------------------
    def gesture_pressed(self, layer, event) -> None:
        if layer not in (self.points_layer, self.shapes_layer):
            return  # a prompt layer of an image segmented before
        self._gesture_layer = layer
        if layer is self.points_layer:
            try:
                self._decode_click_ahead(layer, event)
            except Exception:  # noqa: BLE001 - raising here would stop napari from adding the point
                log.exception("MiniSAM: decoding a click ahead failed")

    def gesture_moved(self, layer) -> None:
        self._drag_pause.start()  # napari moves the prompt after this call: look once the drag pauses
        # napari redraws the layer's thumbnail in the layer list at each move; that repaint composes the
        # whole window (~15 ms), and the last one would land in the rested drag's decode. The list shows
        # the thumbnail after the drag instead (the hold's bound, or shortly after the next preview).
        self._list_hold.hold()
        if self._drag_resting:  # moving again: the box must follow the mouse, not wait for a preview
            self._drag_resting = False
            self._canvas_hold.release()
            if self._preview_running:
                self._request += 1  # the rest's decode answers where the box was: stale, not painted

    def gesture_released(self, layer) -> None:
        self._drag_pause.stop()
        self._gesture_layer = None  # before napari's release emits the data event (see gestures.install)
        self._drag_resting = False

    def _decode_click_ahead(self, layer, event) -> None:
        """Decode the prompts the click will make once the button comes up; nothing is painted."""
        if self.predictor is None or self.image_layer is None or self._preview_running:
            return
        predicted = gestures.predicted_click(layer, event)
        if predicted is None:
            return
        prompts = self.current_prompts(*predicted)
        z = self.current_z()
        key = self._prompt_key(prompts, z)
        if not prompts.is_empty and not self._is_decoded(key):
            self._launch_decode(prompts, z, key, request=AHEAD)

    def _on_drag_paused(self) -> None:
        """Preview the prompts as the paused drag left them (a pan in add mode changes none: nothing to do)."""
        if self._gesture_layer is None or self.predictor is None or self.image_layer is None:
            return
        if (self.preview_is_current and not self._preview_running
                and self._painted_key == self._prompt_key(self.current_prompts(), self.current_z())):
            return
        self._drag_resting = True  # the box stands still: it and its preview can come in one frame
        self.schedule_preview()

    def clear_prompts(self) -> None:
        z = self.current_z()
        self._previews_suspended = True  # one preview update for the whole clear, not one per layer
        try:
            for layer in (self.points_layer, self.shapes_layer):
                if layer is not None:
                    L.remove_on_slice(layer, z)
        finally:
            self._previews_suspended = False
        self.schedule_preview()

    def _on_prompts_changed(self, event=None) -> None:
        if self._previews_suspended:
            return
        action = getattr(event, "action", None)
        action = None if action is None else str(getattr(action, "value", action))
        if action in ("adding", "removing", "changing"):
            # Announced before the data changes: the matching "-ed" event follows and asks for the preview.
            # A click's point is held back from here, before napari asks the canvas to draw it, so that
            # it comes in the preview's frame (not "changing": a drag must stay visible while it moves).
            # Not while a gesture is on: napari's box being drawn is "adding" from its press.
            if (action != "changing" and self._gesture_layer is None and self.predictor is not None
                    and self.image_layer is not None):
                self._canvas_hold.hold()
            return
        self.schedule_preview()

    # -- preview --------------------------------------------------------------------------------------
    def schedule_preview(self) -> None:
        """Ask for a new preview (debounced by the decode in flight).

        Leading edge: when no decode runs, one starts at once — no timer, because under a software
        OpenGL a canvas repaint queued by the same edit would otherwise run first. While a decode runs,
        requests only set "pending": when it ends, one decode runs for the newest prompts, so a drag
        never builds a backlog.
        """
        self._request += 1
        self._start_preview()

    def _start_preview(self) -> None:
        if self.predictor is None or self.image_layer is None:
            self._canvas_hold.release()
            return
        if self._preview_running:
            self._preview_pending = True  # run again with the newest prompts when this one ends
            return
        prompts = self.current_prompts()
        self._preview_pending = False
        if prompts.is_empty:
            self._paint_preview(None)
            self._painted_key = None
            return
        z = self.current_z()
        key = self._prompt_key(prompts, z)
        if self._is_decoded(key):
            # One edit can fire several events (data, then features), and a click's prompts were decoded
            # at its press: the decode already made for these exact prompts is current again, not stale.
            result = self._last_decoded[1]
            self.clicks_decoded_ahead += result.request == AHEAD
            self._last_decoded = (key, replace(result, request=self._request))
            self._on_preview(self._last_decoded[1], key)
            return
        self._list_hold.hold()
        if self._gesture_layer is None or self._drag_resting:  # a moving drag's box must follow the mouse
            self._canvas_hold.hold()
        self._launch_decode(prompts, z, key, self._request)

    def _launch_decode(self, prompts, z, key, request: int) -> None:
        self._preview_running = True

        def decoded(result, key=key):
            self._last_decoded = (key, result)
            self._on_preview(result, key)

        workers.start(tasks.preview_task, self.predictor, self.current_plane(), self.intensity, prompts,
                      request, z, on_yielded=self._on_embedding_started,
                      on_returned=decoded, on_errored=self._preview_failed,
                      on_finished=self._preview_finished, keep=self._workers)

    def _is_decoded(self, key: tuple) -> bool:
        """The newest decode (painted or not) was made for exactly these prompts."""
        return self._last_decoded is not None and self._last_decoded[0] == key

    @property
    def preview_is_current(self) -> bool:
        """The preview on screen answers the newest request (prompts, slice, model and adapter as they are)."""
        return self.preview is not None and self.preview.request == self._request

    def _prompt_key(self, prompts, z) -> tuple:
        box = None if prompts.box is None else prompts.box.tobytes()
        return (z, prompts.points_xy.tobytes(), prompts.point_labels.tobytes(), box, self.intensity,
                id(self.predictor), self.model.cache_key if self.model is not None else None,
                getattr(self.model, "decoder_precision", None),
                id(self.image_layer))

    def _on_preview(self, result: tasks.PreviewResult, key: tuple) -> None:
        if result.request != self._request:
            return  # the prompts, slice or model changed while this was computed
        self._paint_preview(result)
        self._painted_key = key
        if self._commit_when_ready:
            self._commit_when_ready = False
            self.commit()

    def _preview_failed(self, exc) -> None:
        self._commit_when_ready = False
        self._list_hold.release()
        self._canvas_hold.release()
        self._error(exc)

    def _preview_finished(self) -> None:
        self._preview_running = False
        self._hide_embedding_progress()
        if self._preview_pending:
            self._preview_pending = False
            self._start_preview()
        if not self._preview_running:  # also when a stale result painted nothing: do not wait for the bound
            self._canvas_hold.release()
            self._list_hold.release_after(LIST_REPAINT_DELAY_MS)

    def _paint_preview(self, result) -> None:
        self.preview = result
        layer = self.preview_layer
        if layer is None:
            return
        if not self.depth:
            L.paint_plane(layer, None, None if result is None else result.mask)
        else:
            old_z, new_z = self._painted_z, None if result is None else result.z
            if old_z is not None and old_z != new_z and old_z < len(layer.data):
                L.paint_plane(layer, old_z, None)  # only the slice painted last holds a preview
            if result is not None:
                L.paint_plane(layer, new_z, result.mask)
        self._painted_z = None if result is None else result.z
        # The canvas now shows the edit and its preview in one frame. The list is not in that frame: measured
        # ~8 ms faster with its row in a frame of its own, 150 ms later (benchmarks/widget_timeline.py); a new
        # edit meanwhile keeps holding it.
        self._canvas_hold.release()
        self._list_hold.release_after(LIST_REPAINT_DELAY_MS)
        self._thumbnail_timer.start()  # partial paints skip the layer-list thumbnail: redo it when idle
        self.previews_painted += 1
        self.preview_painted.emit()

    def _refresh_preview_thumbnail(self) -> None:
        if self.preview_layer is not None:
            self.preview_layer.refresh(data_displayed=False, highlight=False, extent=False)

    # -- embedding ------------------------------------------------------------------------------------
    def _schedule_embedding(self) -> None:
        if self.predictor is None or self.image_layer is None:
            return
        if self._embed_running:
            self._embed_pending = True
            return
        self._embed_pending = False
        self._embed_running = True
        workers.start(tasks.embed_task, self.predictor, self.current_plane(), self.intensity, self.current_z(),
                      on_yielded=self._on_embedding_started, on_errored=self._error,
                      on_finished=self._embedding_finished, keep=self._workers)

    def _on_embedding_started(self, info) -> None:
        self._canvas_hold.release()  # an embedding takes a second: show the edit (or the new slice) now
        _, z = info
        self.ui.embed_progress.setFormat("embedding slice %d…" % z if z is not None else "embedding image…")
        self.ui.embed_progress.setVisible(True)

    def _embedding_finished(self) -> None:
        self._embed_running = False
        if self._embed_pending:
            self._schedule_embedding()
        else:
            self._hide_embedding_progress()

    def _hide_embedding_progress(self) -> None:
        if not (self._embed_running or self._preview_running):
            self.ui.embed_progress.setVisible(False)

    # -- objects --------------------------------------------------------------------------------------
    def commit(self) -> None:
        """Write the preview into the objects layer as the next free label id."""
        if self.objects_layer is None:
            self.show_message("Pick an image layer first.", error=True)
            return
        if not self.preview_is_current:
            if not self.current_prompts().is_empty and (self._preview_running or self._preview_pending):
                self._commit_when_ready = True  # commit the preview of the newest prompts when it lands
                return
            self.show_message("Nothing to commit: draw a box or click points first.", error=True)
            return
        result = self.preview
        edit = self.editor.commit(self.objects_layer.data, result.mask, result.z,
                                  overwrite=self.ui.overwrite.isChecked())
        self.objects_layer.selected_label = edit.label_id
        self.objects_layer.refresh()
        where = f" on slice {result.z}" if result.z is not None else ""
        kept = "" if edit.pixels == int(result.mask.sum()) else " (other objects kept)"
        self.show_message(f"Committed object {edit.label_id}{where}: {edit.pixels} px{kept}.")
        self.clear_prompts()
        self._update_buttons()

    def undo(self) -> None:
        self._step_history("undo", "Undid")

    def redo(self) -> None:
        self._step_history("redo", "Redid")

    def _step_history(self, method: str, verb: str) -> None:
        editor = self.editor
        if editor is not None and (edit := getattr(editor, method)(self.objects_layer.data)) is not None:
            self.objects_layer.refresh()
            self.show_message(f"{verb} {edit.description} of object {edit.label_id}.")
        self._update_buttons()

    # -- 3D propagation (see propagation.py) -----------------------------------------------------------
    @property
    def is_propagating(self) -> bool:
        return self.propagation.running

    def propagate(self) -> None:
        """Segment the object committed on the slice in view up and down through the stack."""
        self.propagation.start()

    def cancel_propagation(self) -> None:
        self.propagation.cancel()
