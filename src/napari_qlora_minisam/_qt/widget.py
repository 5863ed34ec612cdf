"""The MiniSAM dock widget: binds napari layers and events to one ``AnnotationSession`` per image.

State lives in the sessions (prompts, preview generations, objects; ``annotation/``) and in napari's own
layers (the labels history is the undo). The widget picks the image, hands layer events to the live
preview (``live_preview.py``) and turns buttons and shortcuts into session calls; compute runs in workers.
"""

from __future__ import annotations

from functools import partialmethod

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QWidget

from ..errors import MiniSamError
from . import layers as L
from . import workers
from .controls import Controls
from .everything_panel import EverythingPanel
from .gl_safety import keep_triton_out
from .image_registry import ImageRegistry
from .intensity_control import IntensityControl
from .lifecycle import CloseWatcher
from .live_preview import LivePreview
from .model_control import ModelControl
from .napari_compat import unwrap
from .objects_panel import ObjectsPanel
from .precompute_panel import PrecomputePanel
from .prompt_tools import PromptTools
from .series_panel import SeriesPanel
from .propagation import PropagationRun
from .shortcuts import Shortcuts, help_html
from .status import StatusLine, guidance
from .train_panel import AdapterTraining

keep_triton_out()  # before any model import: see gl_safety.py


class MiniSamWidget(QWidget):
    """Dock widget (npe2 contribution ``napari-qlora-minisam.segmentation_widget``)."""

    preview_painted = Signal()  # a preview (or its removal) reached the picked image's preview layer

    def __init__(self, napari_viewer, model_source: str | None = None):
        super().__init__()
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.ui = ui = Controls(self)
        self.status = StatusLine(ui.message)
        self.running: set = set()  # every worker this widget started
        self.binding = None  # the picked image's ImageBinding
        self.images = ImageRegistry(napari_viewer, self._on_prompts, self._on_objects_edited, self)
        self.models = ModelControl(ui, self.running, self.status, self)
        self.live = LivePreview(self, self.running, ui.embed_progress)
        self.objects = ObjectsPanel(ui.objects, self.status, self)
        self.propagation = PropagationRun.for_widget(self)  # with re-propagate ↑/↓ and its Advanced section
        self.tools = PromptTools(self)
        self.shortcuts = Shortcuts(napari_viewer, self)
        self.training = AdapterTraining(self)
        self.lifecycle = CloseWatcher(self, self.close_widget)
        self.intensity = IntensityControl(ui.intensity, self)
        # a 3D image's embeddings to disk and segment everything (workers); a folder of cases (series_panel.py)
        self.precompute, self.everything, self.series = PrecomputePanel(self), EverythingPanel(self), SeriesPanel(self)
        self._suspended = False
        self._refused = None  # why the image last picked cannot be segmented (the guidance line says it)

        self.images.layer_made.connect(self._on_layer_made)
        self.models.engine_changed.connect(self._on_engine)
        self.live.painted.connect(self._on_painted)
        self.live.commit_ready.connect(self._commit_owed)
        self.live.failed.connect(lambda exc: self.status.error("preview", exc))
        self.intensity.changed.connect(self.live.invalidate)
        self.intensity.warning.connect(self.status.warn)
        self.propagation.ended.connect(self.objects.refresh)
        self.everything.running_changed.connect(lambda _running: self._update())
        self.objects.refreshed.connect(self._update)
        self.objects.refreshed.connect(self.training.refresh)
        for signal, slot in ((ui.image.currentIndexChanged, self._on_image_choice),
                             (ui.box_mode.clicked, self.tools.activate_box_mode),
                             (ui.point_mode.clicked, self.tools.activate_point_mode), (ui.clear.clicked, self.clear_prompts),
                             (ui.commit.clicked, self.commit), (ui.redraw.clicked, lambda: self.redraw()),
                             (ui.undo.clicked, self.undo), (ui.redo.clicked, self.redo),
                             (ui.delete_object.clicked, self.objects.delete_selected),
                             (ui.adopt.clicked, lambda: self.use_labels_layer()),
                             (ui.propagate.clicked, self.propagate), (ui.cancel.clicked, self.cancel_propagation),
                             (ui.help.toggled, ui.shortcuts.setVisible)):
            signal.connect(slot)
        ui.shortcuts.setText(help_html())
        self._viewer_events = [(napari_viewer.layers.events.inserted, self._refresh_image_choices),
                               (napari_viewer.layers.events.renamed, self._refresh_image_choices),
                               (napari_viewer.layers.events.removed, self._on_layer_removed),
                               (napari_viewer.dims.events.current_step, self._on_slice_changed)]
        for emitter, callback in self._viewer_events:
            emitter.connect(callback)
        self.models.refresh_adapters()
        self._refresh_image_choices()
        self.models.load(model_source or ModelControl.default_source())
        self._update()

    # -- what tests, benchmarks and scripts read ------------------------------------------------------
    @property
    def session(self):
        return None if self.binding is None else self.binding.session

    @property
    def layers(self) -> dict:
        """The picked image's helper layers by role: ``box``, ``points``, ``preview``, ``objects``."""
        return {} if self.binding is None else dict(self.binding.layers)

    @property
    def model(self):
        return self.models.backend

    @property
    def preview(self):
        return None if self.session is None else self.session.preview.shown

    @property
    def previews_painted(self) -> int:
        return self.live.painted_count

    @property
    def message(self) -> str:
        return self.status.text

    @property
    def is_idle(self) -> bool:
        """No model work running or queued, and no helper layer waiting to be made."""
        return not (self.running or self.models.busy or self.images.making) and self.live.is_idle

    # -- images ---------------------------------------------------------------------------------------
    def _refresh_image_choices(self, event=None) -> None:
        images = self.images.fill(self.ui.image)
        if not images:
            self._refused = None  # the image it was about has gone
        if images and (self.binding is None or self.binding.image not in images):
            self.set_image_layer(images[-1])  # the image opened last

    def _on_image_choice(self, index: int) -> None:
        """The user picked an image in the Image box: segment it, shown in place of the one before."""
        images = self.images.image_layers()
        if 0 <= index < len(images):
            previous = self.binding
            self.set_image_layer(images[index])
            if self.binding is not previous and self.binding.image is images[index] and \
                    self.images.show_instead(self.binding, previous):
                self.status.info(f"{self.message.rstrip('.')}; {previous.image.name!r} and its objects are hidden "
                                 "(kept: pick it again, or click its eye icon, to show it).")

    def set_image_layer(self, layer) -> None:
        """Segment ``layer``: its session (made on first pick) and its own layers (made in the background)."""
        try:
            binding = self.images.binding_for(layer)
        except MiniSamError as exc:
            self._refused = f"{layer.name!r} cannot be segmented: {exc}"
            self.status.error("image", exc)
            self._update()
            return
        self._refused = None
        self.binding = binding
        if binding.objects is None:
            binding.find_objects()  # a layer this image had before the widget was (re)opened
        self.images.pick(binding)  # the prompt layers now show this image's prompts
        binding.session.set_engine(self.models.engine)
        self._sync_slice()
        self.intensity.apply(binding, announce=False)
        self.shortcuts.bind_image(layer)
        self.images.fill(self.ui.image)
        self.live.bind(binding)
        self.objects.show_session(binding.session)
        if binding.layers["box"] is not None:
            self.tools.activate_box_mode()
        depth = " (3D: prompts act on the slice in view)" if binding.session.depth else ""
        self.status.info(f"Segmenting {layer.name!r}{depth}.", clears=("image", "commit", "preview"))
        if not self.images.making:  # else once its layers are made: the encoder would slow each of them down
            self.live.invalidate()
        self._update()

    def _on_layer_made(self, binding, role: str) -> None:
        if binding is self.binding:
            if role in ("box", "points"):
                self.live.bind(binding)  # its gestures are watched from now on
                if role == "box":
                    self.tools.activate_box_mode()
                else:
                    self.tools.apply_polarity(binding.layers["points"])
            elif role == "preview" and self.preview is not None:
                binding.paint(self.preview)
            if not self.images.making:
                self.live.invalidate()  # embed the slice in view, preview what is prompted
        self._update()

    def _on_objects_edited(self, binding) -> None:
        if binding is self.binding:
            self.objects.schedule_refresh()

    def _on_layer_removed(self, event) -> None:
        if self.images.removed(event.value) is self.binding and self.binding is not None:
            self.binding = self.images.picked = self.live.binding = None
            self.objects.show_session(None)
        self._refresh_image_choices()
        self.objects.refresh()
        self._update()

    # -- slices ---------------------------------------------------------------------------------------
    def current_z(self) -> int | None:
        return None if self.binding is None else self.binding.slice_in_view()

    def _sync_slice(self) -> bool:
        return self.session is not None and self.session.set_slice(self.current_z())

    def _on_slice_changed(self, event=None) -> None:
        if self._sync_slice():
            self.live.invalidate()
            self._update()

    # -- model and intensity --------------------------------------------------------------------------
    def load_model(self, source: str) -> None:
        self.models.load(source)

    def _on_engine(self, engine) -> None:
        for binding in self.images.bindings.values():
            binding.session.set_engine(engine)
        self.live.invalidate()
        self._update()

    # -- prompts --------------------------------------------------------------------------------------
    def _on_prompts(self, binding, event) -> None:
        if binding is self.binding and not self._suspended:
            self.live.prompts_changed(event)
            self._update()

    def clear_prompts(self) -> None:
        if self.binding is None:
            return
        self._suspended = True  # one preview update for the whole clear, not one per layer
        try:
            self.binding.clear_prompts()
        finally:
            self._suspended = False
        self.live.refresh()
        self._update()

    # -- objects --------------------------------------------------------------------------------------
    def commit(self) -> None:
        """Write every previewed object into the image's objects layer (made again if it was deleted)."""
        if self.binding is not None and self.binding.layers["objects"] not in self.viewer.layers:
            self.images.make_now(self.binding, "objects")
        self._write_preview(lambda overwrite: self.session.commit(overwrite=overwrite), "Committing")

    def redraw(self, label_id: int | None = None) -> None:
        """The preview replaces object ``label_id`` (default: the selected one) on this slice: the correction
        before re-propagating."""
        if self.binding is not None and self.binding.layers["objects"] not in self.viewer.layers:
            self.status.error("commit", "Nothing to redraw yet: commit an object (C) first.")
            return
        if self.propagation.active:  # its result is written when it ends and would take the slice back
            self.status.error("commit", "A propagation is running: redraw once it ends (or Cancel it).")
            return
        self._write_preview(
            lambda overwrite: self.session.redraw(label_id or self.session.labels.selected_label, overwrite=overwrite),
            "Redrawing")

    def _write_preview(self, write, doing: str) -> None:
        """``write(overwrite)``: a commit or redraw of the session; then select its object and clear the prompts."""
        if self.binding is None:
            self.status.error("commit", "Open or pick an image first.")
            return
        try:
            result = write(self.ui.overwrite.isChecked())
        except MiniSamError as exc:
            self.status.error("commit", exc)
            return
        if result is None:
            self.status.info(f"{doing} as soon as the preview of these prompts is ready…")
            return
        self.session.labels.selected_label = result.selected_id
        self.status.info(result.describe(), clears=("commit", "preview"))
        self.objects.refresh()
        self.objects.select(result.selected_id)
        self.clear_prompts()

    def _commit_owed(self) -> None:
        """The preview a commit or redraw waited for is painted: do it now."""
        if self.session is not None and self.session.commit_into is not None:
            self.redraw(self.session.commit_into)  # the object picked when Redraw was pressed
        else:
            self.commit()

    def _history(self, step: str) -> None:
        labels = None if self.session is None else self.session.labels
        if labels is not None:
            getattr(labels, step)()  # napari's own history: commits, propagations and brush strokes alike
            self.objects.refresh()
            self.status.info(f"{'Undid' if step == 'undo' else 'Redid'} the last edit of {labels.name}.",
                             clears=("commit",))

    undo = partialmethod(_history, "undo")
    redo = partialmethod(_history, "redo")

    def use_labels_layer(self, layer=None) -> bool:
        """Make ``layer`` (default: the layer selected in the layer list) the picked image's objects layer, e.g.
        objects saved earlier and opened again. Refused, with the reason, when it is not a labels layer of the
        image's shape, belongs to another image, or the image's own objects layer already holds objects."""
        from napari.layers import Labels

        binding = self.binding
        layer = self.viewer.layers.selection.active if layer is None else layer
        why = None
        if binding is None:
            why = "Pick an image first."
        elif not isinstance(layer, Labels):
            why = "Select a labels layer in the layer list first (e.g. objects saved earlier and opened again)."
        elif layer is binding.layers["objects"]:
            why = f"{layer.name!r} is already the objects layer of {binding.image.name!r}."
        elif not L.fits(layer, binding.image):
            why = (f"{layer.name!r} has shape {tuple(layer.data.shape)}, {binding.image.name!r} "
                   f"{binding.session.shape}: a labels layer of the image's shape is needed.")
        elif layer.metadata.get(L.ROLE) is not None and \
                (layer.metadata[L.ROLE], layer.metadata.get(L.IMAGE_ID)) != ("objects", binding.uid):
            why = f"{layer.name!r} is a layer the widget keeps (a preview, or another image's objects)."
        elif self.propagation.active:
            why = "Wait for the propagation to end (or cancel it): it writes into the objects layer."
        elif binding.layers["objects"] is not None and np.asarray(binding.layers["objects"].data).any():
            why = (f"{binding.layers['objects'].name!r} already holds this image's objects: delete that layer "
                   "first (or paint the objects into it by hand).")
        if why is not None:
            self.status.error("objects", why)
            return False
        binding.adopt(layer)
        self.objects.refresh()
        self.status.info(f"{layer.name!r} is now the objects layer of {binding.image.name!r}: "
                         f"{len(self.objects.rows)} object(s); new commits take the next free ids.",
                         clears=("objects", "commit"))
        self._update()
        return True

    # -- 3D propagation -------------------------------------------------------------------------------
    def propagate(self) -> None:
        """Segment the object on the slice in view up and down through the stack, in a worker."""
        if self.session is not None:
            self.propagation.start(self.binding, self.ui.max_slices.value() or None, self.ui.overwrite.isChecked())
            self._update()

    def cancel_propagation(self) -> None:
        self.propagation.cancel()

    # -- what the form shows --------------------------------------------------------------------------
    def _on_painted(self) -> None:
        self.status.clear("preview", "commit")
        self.preview_painted.emit()
        self._update()

    def _update(self) -> None:
        session, ui = self.session, self.ui
        labels = None if session is None else session.labels
        ui.undo.setEnabled(labels is not None)
        ui.redo.setEnabled(labels is not None)
        ui.propagate.setEnabled(bool(session and session.depth) and not self.propagation.active)
        self.propagation.enable_buttons(bool(session and session.depth) and not self.propagation.active)
        self.precompute.start_button.setEnabled(bool(session and session.depth) and not self.precompute.active)
        ui.cancel.setEnabled(self.propagation.active)
        ui.commit.setEnabled(session is not None)
        ui.adopt.setEnabled(session is not None and not self.propagation.active)
        ui.redraw.setEnabled(labels is not None and not self.propagation.active)
        # An adapter switch changes the model that a running propagation or segment-everything is prompting,
        # slice by slice: one run, one model.
        ui.adapter.setEnabled(not (self.propagation.active or self.everything.active))
        ui.guidance.setText(guidance(session, self.models.engine is not None, ui.objects.rowCount() > 0,
                                     self._refused))

    # -- closing --------------------------------------------------------------------------------------
    def close_widget(self) -> None:
        """Disconnect every callback and key, stop every worker (the dock or napari is closing)."""
        self.lifecycle.closed = True
        self.shortcuts.unbind()
        for emitter, callback in self._viewer_events:
            emitter.disconnect(callback)
        self.images.close()
        self.intensity.close()
        for job in (self.propagation, self.training, self.precompute, self.everything, self.series):  # series: saves
            job.cancel()
        self.live.binding = None
        workers.stop_all(self.running)
        self.live.canvas_hold.release()
        self.live.list_hold.release()
