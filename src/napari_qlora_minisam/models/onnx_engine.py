"""LiteMedSAM's networks exported to ONNX and run by OpenVINO or ONNX Runtime on the CPU.

Two graphs can be exported from the live modules (whatever weights, LoRA layers included, they hold):

* the image encoder: ``pixels (1, 3, 256, 256)`` -> ``embedding (1, 256, 64, 64)``; a fixed shape, so the
  runtime plans its layouts once (a batch is run one image at a time);
* prompt encoder + mask decoder (:class:`PromptDecoderGraph`): every prompt as points, SAM's ONNX layout —
  ``point_coords (P, N, 2)`` and ``point_labels (P, N)`` with label 1 positive, 0 negative, 2 / 3 the
  top-left / bottom-right box corners and -1 the padding point SAM adds when there is no box —
  plus ``mask_input (1 or P, 1, 256, 256)`` with ``has_mask_input (1,)``; it returns all four masks and IoU
  scores, the multimask choice is a slice taken afterwards.

:class:`LiteMedSamBackend` runs the encoder graph (see docs/benchmarks.md, "CPU inference engine", for the
measurements that chose it). The decoder graph is measured there against the hand-written decoder
(``models/fast_decoder.py``), the default because it reuses the image-only work across prompts.

Files: ``$MINISAM_ONNX_DIR``, else ``~/.cache/napari-qlora-minisam/onnx``; one ``.onnx`` per graph and
weights, named by a hash of the module's parameters, buffers and peft adapter switches. Written atomically
(temp file + ``os.replace``); a file that a runtime cannot read is reported with :class:`OnnxCacheWarning`,
deleted and exported again; beyond :data:`MAX_BYTES` the least recently used files are deleted.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..cache_paths import user_cache_dir
from .fast_decoder import module_state_signature

ONNX_DIR_ENV = "MINISAM_ONNX_DIR"
FORMAT = "minisam-onnx/1"  # bump when a graph's inputs or outputs change: old files then miss
OPSET = 17
MAX_BYTES = 1 << 30  # the folder keeps the most recently used graphs up to this size (~40 encoder graphs)
RUNTIMES = ("openvino", "onnxruntime")
PRECISIONS = ("fp32", "bf16")
_INSTALL = {"openvino": "pip install openvino", "onnxruntime": "pip install onnxruntime"}
# Attributes of peft LoRA layers that change what the traced graph computes without touching weights.
_ADAPTER_SWITCHES = ("active_adapters", "disable_adapters", "merged")


class OnnxEngineWarning(UserWarning):
    """An exported graph could not be used; the PyTorch path runs instead."""


class OnnxCacheWarning(OnnxEngineWarning):
    """A cached ``.onnx`` file could not be read by the runtime; it is exported again."""


def onnx_dir() -> Path:
    """Where exported graphs are kept: ``$MINISAM_ONNX_DIR``, else the user's cache folder."""
    return user_cache_dir("onnx", ONNX_DIR_ENV)


def runtime_available(runtime: str) -> bool:
    """Whether ``runtime`` (one of :data:`RUNTIMES`) can be imported."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    try:
        __import__(runtime)
        return True
    except Exception:  # noqa: BLE001 - not installed (ImportError), or a broken install (e.g. OSError)
        return False


def check_runtime(runtime: str, precision: str = "fp32") -> None:
    """A clear error for an unknown or missing runtime or an unsupported precision."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if not runtime_available(runtime):
        raise ImportError(f"runtime {runtime!r} is not installed: {_INSTALL[runtime]}")
    if precision == "bf16" and runtime != "openvino":
        raise ValueError("precision 'bf16' needs runtime 'openvino' (ONNX Runtime's CPU provider runs float32 "
                         "graphs in float32)")


def exportable(module: nn.Module) -> bool:
    """True if every weight is a plain float32 tensor (bitsandbytes 4-bit layers cannot be exported)."""
    return all(t.dtype == torch.float32 and getattr(t, "quant_state", None) is None
               for t in list(module.parameters()) + list(module.buffers()) if t.is_floating_point())


def lora_in_training(module: nn.Module) -> bool:
    """True if ``module`` holds LoRA weights that still require gradients (an adapter being trained)."""
    return any(p.requires_grad for name, p in module.named_parameters() if "lora_" in name)


def weights_digest(modules: list[nn.Module], kind: str) -> str:
    """Hash of everything the exported graph of ``modules`` bakes in: tensor names and values, and the
    peft adapter switches (which adapter a LoRA layer runs, whether it is disabled or merged)."""
    h = hashlib.sha256(f"{FORMAT}/{kind}/opset{OPSET}".encode())
    for i, mod in enumerate(modules):
        for name, t in mod.state_dict(keep_vars=True).items():
            h.update(f"{i}.{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
        for name, sub in mod.named_modules():
            for attr in _ADAPTER_SWITCHES:
                if hasattr(type(sub), attr):
                    h.update(f"{i}.{name}.{attr}={getattr(sub, attr)!r}".encode())
    return h.hexdigest()[:32]


class PromptDecoderGraph(nn.Module):
    """segment-anything prompt encoder + mask decoder with every prompt given as labelled points.

    Equal to ``PromptEncoder`` + ``MaskDecoder.predict_masks``: a box is its two corners with labels 2 and 3
    (``_embed_boxes`` adds ``point_embeddings[2]`` / ``[3]`` to the corners' encodings); without a box SAM
    appends a padding point with label -1; ``has_mask_input`` picks the embedded mask or the no-mask
    embedding. The image embedding has a batch of one and is shared by the ``P`` prompts.
    """

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module):
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        pe = self.prompt_encoder
        h, w = pe.input_image_size
        xy = (point_coords + 0.5) / torch.tensor([w, h], dtype=point_coords.dtype)
        sparse = pe.pe_layer._pe_encoding(xy)
        labels = point_labels.unsqueeze(-1)
        padding = (labels == -1).to(sparse.dtype)
        sparse = sparse * (1 - padding) + pe.not_a_point_embed.weight * padding
        for i in range(pe.num_point_embeddings):
            sparse = sparse + pe.point_embeddings[i].weight * (labels == i).to(sparse.dtype)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has_mask_input * pe.mask_downscaling(mask_input) + (1 - has_mask_input) * no_mask
        return self.mask_decoder.predict_masks(image_embeddings, pe.get_dense_pe(), sparse, dense)


def prompts_as_points(points, labels, boxes):
    """``SamBackend.decode`` prompts -> ``(point_coords (P, N, 2), point_labels (P, N))`` float32 arrays."""
    coords, labs = [], []
    if points is not None:
        coords.append(points.detach().float().cpu().numpy())
        labs.append(labels.detach().float().cpu().numpy())
    if boxes is not None:
        b = boxes.detach().float().cpu().numpy().reshape(-1, 2, 2)
        coords.append(b)
        labs.append(np.broadcast_to(np.array([2.0, 3.0], np.float32), b.shape[:2]))
    elif points is not None:
        p = coords[0].shape[0]
        coords.append(np.zeros((p, 1, 2), np.float32))
        labs.append(-np.ones((p, 1), np.float32))
    if not coords:  # a mask prompt alone: SAM embeds no sparse token at all
        return np.zeros((1, 0, 2), np.float32), np.zeros((1, 0), np.float32)
    return (np.ascontiguousarray(np.concatenate(coords, axis=1), dtype=np.float32),
            np.ascontiguousarray(np.concatenate(labs, axis=1), dtype=np.float32))


# -- export and cache -------------------------------------------------------------------------------------
_SPECS = {
    # kind -> (input names, output names, dynamic axes)
    "encoder": (["pixels"], ["embedding"], None),
    "decoder": (["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"],
                ["masks", "iou_predictions"],
                {"point_coords": {0: "prompts", 1: "points"}, "point_labels": {0: "prompts", 1: "points"},
                 "mask_input": {0: "mask_batch"}, "masks": {0: "prompts"}, "iou_predictions": {0: "prompts"}}),
}


def _example_inputs(kind: str, modules: list[nn.Module]):
    if kind == "encoder":
        size = int(modules[0].img_size) if hasattr(modules[0], "img_size") else 256
        return (torch.zeros(1, 3, size, size),)
    pe = modules[0]
    h, w = pe.image_embedding_size
    # Two prompts: a trace with one would take MaskDecoder's no-repeat branch and bake that batch in.
    return (torch.zeros(1, pe.embed_dim, h, w), torch.tensor([[[10.0, 10.0], [50.0, 60.0]]] * 2),
            torch.tensor([[2.0, 3.0]] * 2), torch.zeros(1, 1, 4 * h, 4 * w), torch.zeros(1))


def export_graph(kind: str, modules: list[nn.Module], path: Path) -> None:
    """Trace ``modules`` (the encoder, or prompt encoder + mask decoder) to ``path``, atomically."""
    graph = modules[0] if kind == "encoder" else PromptDecoderGraph(*modules)
    inputs, outputs, dynamic = _SPECS[kind]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    os.close(fd)
    try:
        # inference_mode(False): the caller may be inside inference mode, where tracing cannot record ops.
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # TracerWarnings about Python ints taken from fixed shapes: the shapes are fixed here by design.
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, _example_inputs(kind, modules), tmp, dynamo=False, opset_version=OPSET,
                              input_names=inputs, output_names=outputs, dynamic_axes=dynamic)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_OV_CORE = None
_OV_CORE_LOCK = threading.Lock()


def openvino_core():
    """The one ``openvino.Core`` of this process, created on first use and never released.

    Every ``Core`` loads its own instance of OpenVINO's CPU plugin, and on Linux each instance maps an
    alternate signal stack (``sigaltstack``, room for AMX state) for the thread that creates it, restores
    the previous one when it is destroyed only if its own is still the current one, and unmaps its own
    either way. Two instances released in the order they were made (a graph compiled anew for new
    weights while the old one is still alive, then both released) leave the thread's alternate stack
    pointing at unmapped memory; the next signal whose handler runs on that stack (CPython installs
    every Python signal handler with ``SA_ONSTACK``: Ctrl-C, the SIGCHLD handler of torch's DataLoader
    when a worker exits) kills the process with SIGSEGV. One plugin instance that lives as long as the
    process never unmaps its stack (tests/core/test_onnx_engine.py,
    ``test_released_graphs_leave_signal_handling_intact``).
    """
    global _OV_CORE
    with _OV_CORE_LOCK:
        if _OV_CORE is None:
            import openvino as ov

            _OV_CORE = ov.Core()
        return _OV_CORE


class CompiledGraph:
    """One ``.onnx`` file compiled by a runtime; called with numpy feeds, returns the outputs in order.

    Calls are serialised: an OpenVINO compiled model's implicit infer request is not thread-safe, and the
    napari widget encodes from a background worker while another may be previewing.
    """

    def __init__(self, path: Path, runtime: str, precision: str = "fp32", threads: int | None = None):
        check_runtime(runtime, precision)
        threads = int(threads or torch.get_num_threads())  # torch's default: one per physical core
        self.runtime, self.precision, self.path = runtime, precision, Path(path)
        self._lock = threading.Lock()
        if runtime == "openvino":
            # The hint is set either way: OpenVINO's CPU default on bf16-capable CPUs is bf16.
            config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                      "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
            self._compiled = openvino_core().compile_model(str(path), "CPU", config)
            self._outputs = list(self._compiled.outputs)
        elif runtime == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            # No busy-waiting after a run: the next call on these cores is usually torch's (the decoder).
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            if self.runtime == "openvino":
                result = self._compiled(feeds)
                return [np.asarray(result[o]) for o in self._outputs]
            return self._session.run(None, feeds)


class ExportedModules:
    """The compiled graph of ``kind`` for the modules' current weights, exported or loaded as needed.

    A cheap signature (tensor versions, module ids, adapter switches) is checked on every call; only when
    it changes are the weights hashed to find the file (exported if missing).
    """

    def __init__(self, kind: str, runtime: str = "openvino", precision: str = "fp32"):
        if kind not in _SPECS:
            raise ValueError(f"kind must be one of {list(_SPECS)}, not {kind!r}")
        check_runtime(runtime, precision)
        self.kind, self.runtime, self.precision = kind, runtime, precision
        self.path: Path | None = None
        self._signature = None
        self._graph: CompiledGraph | None = None
        self._lock = threading.Lock()

    def graph(self, modules: list[nn.Module]) -> CompiledGraph:
        sig = module_state_signature(modules)
        with self._lock:
            if self._graph is None or sig != self._signature:
                path = onnx_dir() / f"litemedsam-{self.kind}-{weights_digest(modules, self.kind)}.onnx"
                self._graph = self._load(path, modules)
                self.path, self._signature = path, sig
            return self._graph

    def _load(self, path: Path, modules) -> CompiledGraph:
        if path.is_file():
            try:
                graph = CompiledGraph(path, self.runtime, self.precision)
                os.utime(path)  # recently used: the last to be evicted
                return graph
            except Exception as exc:  # noqa: BLE001 - ONNX Runtime's InvalidProtobuf/Fail derive from Exception
                warnings.warn(f"cached ONNX graph {path} could not be read ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200]}); exporting it again", OnnxCacheWarning,
                              stacklevel=4)
                path.unlink(missing_ok=True)
        export_graph(self.kind, modules, path)
        evict_least_recent(path.parent, keep=path)
        return CompiledGraph(path, self.runtime, self.precision)


def evict_least_recent(folder: Path, keep: Path, max_bytes: int = MAX_BYTES) -> None:
    """Delete the least recently used graphs beyond ``max_bytes`` (weights that change, e.g. an adapter
    retrained again and again, would otherwise fill the disk)."""
    files = []
    for f in folder.glob("litemedsam-*.onnx"):
        try:
            st = f.stat()
        except OSError:  # deleted meanwhile by another process
            continue
        files.append((st.st_mtime, st.st_size, f))
    total = 0
    for _, size, f in sorted(files, key=lambda t: t[0], reverse=True):
        total += size
        if total > max_bytes and f != keep:
            try:
                f.unlink()
            except OSError:  # in use (Windows) or already gone: try again after the next export
                pass


class EncoderEngine:
    """The image encoder as a compiled graph: ``(B, 3, S, S)`` float pixels -> ``(B, 256, S/4, S/4)``."""

    def __init__(self, runtime: str = "openvino", precision: str = "fp32"):
        self.exported = ExportedModules("encoder", runtime, precision)

    def __call__(self, encoder: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        graph = self.exported.graph([encoder])
        x = pixels.detach().to("cpu", torch.float32).numpy()
        out = [graph({"pixels": np.ascontiguousarray(x[i:i + 1])})[0] for i in range(x.shape[0])]
        return torch.from_numpy(np.concatenate(out) if len(out) > 1 else out[0]).to(pixels.device)


class DecoderEngine:
    """Prompt encoder + mask decoder as a compiled graph, with ``SamBackend.decode``'s contract.

    ``window`` is accepted and ignored (the whole grid is decoded, which the contract allows).
    """

    def __init__(self, runtime: str = "openvino", precision: str = "fp32"):
        self.exported = ExportedModules("decoder", runtime, precision)

    def __call__(self, prompt_encoder, mask_decoder, embeddings, points=None, labels=None, boxes=None,
                 mask_input=None, multimask=True, window=None):
        if embeddings.shape[0] != 1:
            raise ValueError(f"the exported decoder takes the embedding of one image, not {embeddings.shape[0]}")
        graph = self.exported.graph([prompt_encoder, mask_decoder])
        coords, labs = prompts_as_points(points, labels, boxes)
        h, w = embeddings.shape[-2:]
        if mask_input is None:
            mask, has_mask = np.zeros((1, 1, 4 * h, 4 * w), np.float32), np.zeros(1, np.float32)
        else:
            mask, has_mask = mask_input.detach().float().cpu().numpy(), np.ones(1, np.float32)
            if coords.shape[1] == 0:  # mask alone: one prompt per mask
                coords, labs = (np.zeros((mask.shape[0], 0, 2), np.float32),
                                np.zeros((mask.shape[0], 0), np.float32))
        masks, iou = graph({"image_embeddings": embeddings.detach().float().cpu().numpy(), "point_coords": coords,
                            "point_labels": labs, "mask_input": np.ascontiguousarray(mask),
                            "has_mask_input": has_mask})
        sel = slice(1, None) if multimask else slice(0, 1)
        return (torch.from_numpy(np.ascontiguousarray(masks[:, sel])).to(embeddings.device),
                torch.from_numpy(np.ascontiguousarray(iou[:, sel])).to(embeddings.device))
