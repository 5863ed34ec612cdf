"""The live preview on screen: prompt edits -> decode jobs in workers -> masks painted, with one frame per edit.

The state (generations, decoded masks, what is current) is the image's ``AnnotationSession``; this class
does the Qt part: it runs jobs and embeddings in workers, watches gestures from their press
(``gestures.py``), holds napari's canvas and layer list while a decode runs (``repaint_hold.py``) and
paints results into the image's preview layer.
"""

from __future__ import annotations

import logging

from qtpy.QtCore import QObject, QTimer, Signal

from ..annotation import Preview, PreviewJob
from . import gestures, tasks, workers
from .repaint_hold import RepaintHold, canvas_hold

log = logging.getLogger(__name__)
LIST_REPAINT_DELAY_MS = 150
# The canvas waits for the preview at most this long: long enough for a decode of the bundled model or a
# 4-bit / ViT-B one, short enough that a slow model never freezes the view; a first embedding releases it at once.
CANVAS_HOLD_MAX_MS = 120
# A drag that rests this long gets its preview decoded and painted while the button is still down. A moving
# mouse sends moves more often than this, each restarting the wait, so only a real rest starts a decode
# (benchmarks/drag_motion.py). Decoding at every move costs the drag frames without bringing the preview sooner.
DRAG_PAUSE_MS = 30


class LivePreview(QObject):
    """Previews of the picked image's prompts. ``binding`` is that image's ``ImageBinding``."""

    painted = Signal()  # a preview (or its removal) reached the preview layer
    commit_ready = Signal()  # the preview a commit waited for is painted
    failed = Signal(object)  # a decode or embedding raised (the exception)

    def __init__(self, owner, running: set, embed_bar):
        super().__init__(owner)
        self.binding = None
        self.running = running  # every worker of the widget (so closing can stop them)
        self.embed_bar = embed_bar  # a busy bar: "embedding chest CT: slice 12/18…"
        self.painted_count = 0
        self.gesture_layer = None  # the prompt layer whose mouse button is down
        self._resting = False  # that gesture is a drag whose mouse has stopped
        self._embed = None  # (session, plane, intensity, z) embedding now; pending one in _embed_next
        self._embed_next = None
        self._drag_pause = QTimer(self, singleShot=True, interval=DRAG_PAUSE_MS)
        self._drag_pause.timeout.connect(self._on_drag_paused)
        self._thumbnail = QTimer(self, singleShot=True, interval=400)
        self._thumbnail.timeout.connect(self._refresh_thumbnail)
        self.list_hold = RepaintHold(owner)  # the layer list repaints after the preview, not during its decode
        self.canvas_hold = canvas_hold(owner, CANVAS_HOLD_MAX_MS)  # the edit and its preview in one frame

    @property
    def session(self):
        return None if self.binding is None else self.binding.session

    @property
    def is_idle(self) -> bool:
        s = self.session
        return not ((s is not None and s.preview.busy) or self._embed is not None or self._embed_next is not None)

    def bind(self, binding) -> None:
        """Preview ``binding``'s image from now on; its prompt layers report their gestures here."""
        self.binding = binding
        self.gesture_layer, self._resting = None, False
        for layer in binding.prompt_layers():
            gestures.install(layer, self)

    # -- requests -------------------------------------------------------------------------------------
    def prompts_changed(self, event=None) -> None:
        """A prompt layer's data or features event."""
        action = getattr(event, "action", None)
        action = None if action is None else str(getattr(action, "value", action))
        if action in ("adding", "removing", "changing"):
            # Announced before the data changes: the matching "-ed" event follows and asks for the preview.
            # A click's point is held back from here, before napari asks the canvas to draw it, so that it
            # comes in the preview's frame (not "changing": a drag must stay visible while it moves). Not
            # while a gesture is on: napari's box being drawn is "adding" from its press.
            if action != "changing" and self.gesture_layer is None and self.session.engine is not None:
                self.canvas_hold.hold()
            return
        self.refresh()

    def refresh(self) -> None:
        """Preview the prompts as the layers hold them now (a new generation)."""
        binding = self.binding
        if binding is None:
            return
        binding.session.set_prompts(binding.read_prompts())
        self._start(binding.session.request_preview())

    def invalidate(self) -> None:
        """Slice, model, adapter or intensity changed: embed what is in view, then preview again."""
        if self.binding is None:
            return
        self.embed(self.session)
        self.refresh()

    def _start(self, outcome) -> None:
        if isinstance(outcome, Preview):
            # One edit can fire several events (data, then features), and a click's prompts were decoded at
            # its press: what is painted comes from the masks already decoded for these exact prompts.
            self._paint(outcome)
        elif isinstance(outcome, PreviewJob):
            self.list_hold.hold()
            if self.gesture_layer is None or self._resting:  # a moving drag's box must follow the mouse
                self.canvas_hold.hold()
            self._launch(self.session, outcome)
        elif self.session is not None and not self.session.preview.busy:
            self.canvas_hold.release()  # no model yet: nothing will be painted

    def _launch(self, session, job: PreviewJob) -> None:
        workers.start(tasks.preview_task, job,
                      on_yielded=lambda z: self._embedding_started(session, z),
                      on_returned=lambda decoded: self._decoded(session, job, decoded),
                      on_errored=lambda exc: self._decode_failed(session, job, exc),
                      on_finished=lambda: self._job_finished(session), keep=self.running)

    def _decoded(self, session, job, decoded) -> None:
        shown = session.finish_preview(job, decoded)
        if shown is not None and session is self.session:
            self._paint(shown)

    def _decode_failed(self, session, job, exc) -> None:
        session.finish_preview(job, None)
        self.list_hold.release()
        self.canvas_hold.release()
        self.failed.emit(exc)

    def _job_finished(self, session) -> None:
        if self._embed is None:
            self.embed_bar.setVisible(False)  # the job may have embedded its slice: that is done now
        if session is self.session and session.preview.pending:
            self.refresh()
        if session.preview.running is None:  # also when a stale result painted nothing: do not wait for the bound
            self.canvas_hold.release()
            self.list_hold.release_after(LIST_REPAINT_DELAY_MS)

    def _paint(self, preview: Preview) -> None:
        self.binding.paint(preview)
        # The canvas now shows the edit and its preview in one frame. The list is not in that frame: its row
        # repaints in a frame of its own a little later, which keeps the preview's frame short
        # (benchmarks/widget_timeline.py); a new edit meanwhile keeps holding it.
        self.canvas_hold.release()
        self.list_hold.release_after(LIST_REPAINT_DELAY_MS)
        self._thumbnail.start()  # partial paints skip the layer-list thumbnail: redo it when idle
        self.painted_count += 1
        self.painted.emit()
        if self.session.commit_requested:
            self.commit_ready.emit()

    def _refresh_thumbnail(self) -> None:
        layer = self.binding.layers.get("preview") if self.binding is not None else None
        if layer is not None:
            layer.refresh(data_displayed=False, highlight=False, extent=False)

    # -- embeddings -----------------------------------------------------------------------------------
    def embed(self, session, z=None) -> None:
        """Embed slice ``z`` (default: in view) of ``session``'s image in the background, unless cached."""
        if session is None or session.engine is None:
            return
        item = (session, session.plane(z), session.intensity, session.z if z is None else z)
        if self._embed is not None:
            self._embed_next = item  # only the newest wish waits: a scroll through slices builds no queue
            return
        self._embed = item
        session_, plane, intensity, zz = item
        workers.start(tasks.embed_task, session_.engine, plane, intensity, zz,
                      on_yielded=lambda z_: self._embedding_started(session_, z_),
                      on_errored=self.failed.emit, on_finished=self._embed_finished, keep=self.running)

    def _embed_finished(self) -> None:
        self._embed, item, self._embed_next = None, self._embed_next, None
        if item is not None:
            self.embed(item[0], item[3])
        else:
            self.embed_bar.setVisible(False)

    def _embedding_started(self, session, z) -> None:
        self.canvas_hold.release()  # an embedding takes a second: show the edit (or the new slice) now
        where = f": slice {z + 1}/{session.shape[0]}" if z is not None else ""
        self.embed_bar.setFormat(f"embedding {session.name}{where}…")
        self.embed_bar.setVisible(True)

    # -- gestures: the mouse button is down in a prompt layer (see gestures.py) -------------------------
    def gesture_pressed(self, layer, event) -> None:
        if self.binding is None or layer not in self.binding.prompt_layers():
            return
        self.gesture_layer = layer
        if layer is self.binding.layers.get("points"):
            try:
                self._decode_click_ahead(layer, event)
            except Exception:  # noqa: BLE001 - raising here would stop napari from adding the point
                log.exception("MiniSAM: decoding a click ahead failed")

    def gesture_moved(self, layer) -> None:
        self._drag_pause.start()  # napari moves the prompt after this call: look once the drag pauses
        # napari redraws the layer's thumbnail in the layer list at each move; that repaint composes the
        # whole window, and the last one would land in the rested drag's decode.
        self.list_hold.hold()
        if self._resting:  # moving again: the box must follow the mouse, not wait for a preview
            self._resting = False
            self.canvas_hold.release()
            if self.session.preview.running is not None:
                self.session.preview.invalidate()  # the rest's decode answers where the box was: stale

    def gesture_released(self, layer) -> None:
        self._drag_pause.stop()
        self.gesture_layer = None  # before napari's release emits the data event (see gestures.install)
        self._resting = False

    def _decode_click_ahead(self, layer, event) -> None:
        """Decode the prompts the click will make once the button comes up; nothing is painted."""
        predicted = gestures.predicted_click(layer, event)
        if predicted is None:
            return
        job = self.session.decode_ahead(self.binding.read_prompts(*predicted))
        if job is not None:
            self._launch(self.session, job)

    def _on_drag_paused(self) -> None:
        """Preview the prompts as the paused drag left them (a pan in add mode changes none: nothing to do)."""
        if self.gesture_layer is None or self.binding is None:
            return
        if self.session.preview.shows(self.binding.read_prompts()):
            return
        self._resting = True  # the box stands still: it and its preview can come in one frame
        self.refresh()
