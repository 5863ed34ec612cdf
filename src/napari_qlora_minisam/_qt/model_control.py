"""Loading models and switching adapters for the widget, with the form always showing what is in use.

A load or switch runs in a worker; the model in use keeps serving previews until the new one is ready. When
it fails, the Model, 4-bit, Device and Adapter boxes go back to what is really loaded. Reloading for the
4-bit toggle or another device keeps the active adapter.
"""

from __future__ import annotations

import os
from pathlib import Path

from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QFileDialog

from ..adapters import list_adapters
from ..annotation import SegmentationEngine
from ..embedding_cache import EmbeddingCache
from ..embedding_store import default_store
from ..models.cpu_features import bf16_is_native
from . import tasks, workers
from .controls import NO_ADAPTER

MODEL_ENV = "MINISAM_NAPARI_MODEL"  # default model source (tests may pick a tiny one)
# The project's distilled student: it meets the quality targets against LiteMedSAM (docs/minisam.md) at a
# fraction of its encoder cost; LiteMedSAM stays in the Model box.
DEFAULT_MODEL = "minisam"
# Embeddings outlive a widget and a model reload: their key covers model identity, adapter and intensity.
SHARED_CACHE = EmbeddingCache()


class ModelControl(QObject):
    """Owns the loaded model (as a ``SegmentationEngine``) and the form's Model group."""

    engine_changed = Signal(object)  # a new engine, or the same one with another adapter

    def __init__(self, ui, running: set, status, parent=None):
        super().__init__(parent)
        self.ui = ui
        self.running = running
        self.status = status  # the widget's StatusLine
        self.engine: SegmentationEngine | None = None
        self.busy = False
        ui.load.clicked.connect(lambda: self.load(ui.model.currentText()))
        # Quantization and device are properties of the loaded weights: changing them reloads the model.
        ui.quantize.toggled.connect(lambda _on: self.load(ui.model.currentText()))
        ui.device.currentIndexChanged.connect(lambda _i: self.load(ui.model.currentText()))
        # Opt-in: ~15 % faster decode with native bf16, but no measurable gain in the widget under software
        # OpenGL (canvas redraws dominate, docs/benchmarks.md), so float32 stays the default.
        ui.bf16_decoder.setEnabled(bf16_is_native())
        ui.bf16_decoder.toggled.connect(lambda _on: self._apply_decoder_precision(announce=True))
        ui.browse.clicked.connect(self._browse)
        ui.adapter.currentIndexChanged.connect(self._on_adapter_choice)
        ui.refresh_adapters.clicked.connect(self.refresh_adapters)

    @staticmethod
    def default_source() -> str:
        return os.environ.get(MODEL_ENV, DEFAULT_MODEL)

    @property
    def backend(self):
        return None if self.engine is None else self.engine.backend

    # -- loading --------------------------------------------------------------------------------------
    def load(self, source: str) -> None:
        """Load ``source`` in the background with the form's 4-bit and device settings."""
        source = (source or "").strip() or DEFAULT_MODEL
        backend = self.backend
        active = None if backend is None else backend.active_adapter
        path = None if active is None else backend.adapter_info.get(active, {}).get("_path")
        # kept across a 4-bit or device reload of the same model; another model has adapters of its own
        adapter = None if path is None or source != backend.source else (path, active)
        self.busy = True
        self.ui.load.setEnabled(False)
        workers.start(tasks.load_model_task, source, "nf4" if self.ui.quantize.isChecked() else None,
                      self.ui.device.currentText(), adapter,
                      on_yielded=self.status.info,
                      on_returned=self._loaded, on_errored=self._load_failed,
                      on_finished=self._finished, keep=self.running)

    def _loaded(self, result) -> None:
        backend, warning = result
        self.engine = SegmentationEngine(backend, cache=SHARED_CACHE, store=default_store())  # on disk too
        self._apply_decoder_precision()
        self.refresh_adapters()  # the new base's adapters (and show_in_use)
        text = f"Model {backend.name} ready ({backend.num_parameters() / 1e6:.1f} M parameters)"
        if backend.active_adapter:
            text += f", adapter {backend.active_adapter}"
        self.status.info(text + ".", clears=("model", "preview"))
        if warning:
            self.status.error("adapter", warning)
        self.engine_changed.emit(self.engine)

    def _load_failed(self, exc) -> None:
        self.show_in_use()
        self.status.error("model", exc)

    def _finished(self) -> None:
        self.busy = False
        self.ui.load.setEnabled(True)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self.ui.model, "Model checkpoint or folder", str(Path.home()),
            "SAM checkpoint (*.pth *.pt *.bin);;Hugging Face model folder (config.json)")
        if path:
            path = str(Path(path).parent) if Path(path).name == "config.json" else path
            self.ui.model.setCurrentText(path)
            self.load(path)

    def _apply_decoder_precision(self, announce: bool = False) -> None:
        """Backends whose decoder runs the fast path (LiteMedSAM, fp32 HF SAMs such as MiniSAM) follow the
        checkbox; NF4 bases and half-precision HF models ignore it."""
        backend = self.backend
        if backend is None or not hasattr(backend, "decoder_precision"):
            return
        backend.decoder_precision = "bf16" if self.ui.bf16_decoder.isChecked() else "fp32"
        if announce:
            self.engine_changed.emit(self.engine)

    # -- adapters -------------------------------------------------------------------------------------
    def refresh_adapters(self) -> None:
        combo = self.ui.adapter
        combo.blockSignals(True)
        combo.clear()
        combo.addItem(NO_ADAPTER, None)
        backend = self.backend
        for entry in list_adapters():
            # an adapter loads only onto the base it was trained on: list the loaded base's own
            if backend is None or entry.metadata.get("base_identity") == backend.identity:
                combo.addItem(f"{entry.name} ({entry.modality})", entry)
        combo.blockSignals(False)
        self.show_in_use()

    def _on_adapter_choice(self, index: int) -> None:
        if self.engine is None:
            self.show_in_use()
            return
        self.busy = True
        workers.start(tasks.switch_adapter_task, self.engine, self.ui.adapter.itemData(index),
                      on_returned=self._adapter_switched, on_errored=self._adapter_failed,
                      on_finished=self._finished, keep=self.running)

    def activate_path(self, path, announce: str | None = None) -> None:
        """Make the adapter in folder ``path`` active (after listing the folders anew); ``announce`` replaces
        the usual message once it is."""
        self.refresh_adapters()
        combo = self.ui.adapter
        for i in range(combo.count()):
            entry = combo.itemData(i)
            if entry is not None and Path(entry.path).resolve() == Path(path).resolve():
                self._announce = announce
                combo.setCurrentIndex(i)  # the switch runs in a worker, as a user's pick does
                return
        self.status.error("adapter", f"The adapter written to {path} is not in the adapters folders.")

    _announce = None

    def _adapter_switched(self, name) -> None:
        text, self._announce = self._announce, None
        self.status.info(text or f"Adapter: {name or 'none (base model)'}.", clears=("adapter", "preview"))
        self.show_in_use()
        self.engine_changed.emit(self.engine)

    def _adapter_failed(self, exc) -> None:
        self.show_in_use()
        self.status.error("adapter", exc)

    # -- the form shows what is in use ----------------------------------------------------------------
    def show_in_use(self) -> None:
        """Model, 4-bit, Device and Adapter boxes as the loaded model really is (signals held)."""
        ui, backend = self.ui, self.backend
        if backend is None:
            return
        for box in (ui.model, ui.quantize, ui.device, ui.adapter):
            box.blockSignals(True)
        try:
            ui.model.setCurrentText(backend.source)
            ui.quantize.setChecked(backend.quantization == "nf4")
            ui.device.setCurrentText(backend.device.type)
            active = backend.active_adapter
            for i in range(ui.adapter.count()):
                entry = ui.adapter.itemData(i)
                if (entry is None and active is None) or (entry is not None and entry.name == active):
                    ui.adapter.setCurrentIndex(i)
                    break
        finally:
            for box in (ui.model, ui.quantize, ui.device, ui.adapter):
                box.blockSignals(False)
