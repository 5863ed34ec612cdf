"""The interface every backend (HF SamModel, LiteMedSAM) offers to the predictor and the trainers.

Like MobileSAM's drop-in encoder: the rest of the system never knows which network it runs.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager

import torch
from torch import nn

from ..transforms import PreprocessSpec


class SamBackend:
    """A SAM-family network with an image encoder, a prompt encoder and a mask decoder.

    Subclasses implement :meth:`encode` and :meth:`decode`. Prompts given to :meth:`decode` are already in
    the network's input frame (see ``transforms.scale_coords``).

    Attributes:
        net: the ``nn.Module`` (LoRA layers are injected in place by peft, so ``net`` runs them).
        source: what ``load_model`` was given.
        spec: pixel preprocessing this network expects.
        quantization: ``None`` or ``"nf4"``.
        peft_model: the ``peft.PeftModel`` wrapping ``net`` once adapters are attached, else ``None``.
        adapter_info: adapter name -> metadata dict (modality, base identity, scores...).
    """

    kind = "abstract"

    def __init__(self, net: nn.Module, source: str, spec: PreprocessSpec, quantization: str | None = None):
        self.net = net
        self.source = str(source)
        self.spec = spec
        self.quantization = quantization
        self.peft_model = None
        self.adapter_info: dict[str, dict] = {}
        self.active_adapter: str | None = None
        self.trainable_adapters: set[str] = set()  # made here by add_lora (loaded ones stay frozen)
        self.identity = fingerprint(self.fingerprint_tensors())
        self.fast_paths = True  # False: always run the network's own modules (the reference path)
        self.decoder_precision = "fp32"  # or "bf16" (opt-in, full-precision bases only)
        self._fast_decoder: tuple | None = None  # (modules it was bound to, FastSamDecoder or None)

    # Inference caches bound to one process and one set of modules (a compiled encoder graph holds a lock and
    # native handles): a copy or a pickle leaves them out and builds its own on first use. The widget trains
    # adapters on a ``copy.deepcopy`` of the backend in use.
    _RUNTIME_CACHES = ("_fast_decoder",)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in self._RUNTIME_CACHES:
            state[name] = None
        return state

    # -- to implement -------------------------------------------------------------------------------
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` preprocessed pixels -> image embeddings ``(B, 256, 64, 64)``."""
        raise NotImplementedError

    def decode(self, embeddings, points=None, labels=None, boxes=None, mask_input=None, multimask=True,
               window=None):
        """Run prompt encoder + mask decoder for a batch of ``P`` prompts on one image.

        Args:
            embeddings: ``(1, C, h, w)`` embedding of one image (or ``(P, C, h, w)``).
            points: ``(P, N, 2)`` float (x, y) in the network frame, or ``None``.
            labels: ``(P, N)`` int, 1 positive, 0 negative.
            boxes: ``(P, 4)`` float, or ``None``.
            mask_input: ``(P, 1, 256, 256)`` low-res logits from an earlier call, or ``None``.
            multimask: three candidate masks per prompt if True, else one.
            window: ``(r0, r1, c0, c1)`` embedding-grid cells where the mask is wanted, or ``None``. A speed
                hint: a backend may compute the mask only there (same logits inside, background outside,
                the whole grid whenever the mask reaches the window's edge) or ignore it.

        Returns:
            ``(low_res_logits (P, M, 256, 256), iou_predictions (P, M))``.
        """
        raise NotImplementedError

    def fingerprint_tensors(self) -> list[torch.Tensor]:
        """Tensors that identify the base weights and are never quantized (convs, embeddings)."""
        raise NotImplementedError

    @property
    def image_encoder(self) -> nn.Module:
        raise NotImplementedError

    @property
    def mask_decoder(self) -> nn.Module:
        raise NotImplementedError

    def _decoder_modules(self) -> tuple:
        """The modules a fast decoder is bound to (a merge or a new network replaces them)."""
        return ()

    def _sam_layout(self) -> tuple | None:
        """``(prompt_encoder, mask_decoder)`` under segment-anything's names, or None: no fast decoder."""
        return None

    # -- shared -------------------------------------------------------------------------------------
    def _use_fast(self) -> bool:
        # Training needs autograd through every op and may update weights between calls: reference path.
        return self.fast_paths and not torch.is_grad_enabled() and not self.net.training

    def fast_decoder(self):
        """The decoder's inference path (``models/fast_decoder.py``) bound to the current modules, or None."""
        from .fast_decoder import FastSamDecoder

        key = (id(self.net),) + tuple(id(m) for m in self._decoder_modules())
        if self._fast_decoder is None or self._fast_decoder[0] != key:
            layout = self._sam_layout()
            fd = FastSamDecoder(*layout) if layout is not None and FastSamDecoder.supports(*layout) else None
            self._fast_decoder = (key, fd)
        return self._fast_decoder[1]

    def fast_decode(self, embeddings, points=None, labels=None, boxes=None, mask_input=None, multimask=True,
                    window=None):
        """:meth:`decode` through the fast decoder, or None where only the modules can run (gradients,
        training mode, ``fast_paths=False``, a decoder of another structure)."""
        if not self._use_fast():
            return None
        fd = self.fast_decoder()
        if fd is None:
            return None
        with self._decoder_precision(embeddings) as bf16:
            masks, iou = fd(embeddings, points, labels, boxes, mask_input, multimask, window)
        return (masks.float(), iou.float()) if bf16 else (masks, iou)

    def prepare_decoder(self, embeddings) -> None:
        """Do the fast decoder's per-image work for ``embeddings`` now (it keeps it for the image's prompts), so
        the first prompt on an image costs what the next ones do; the predictor calls this when it sets an
        image, in the thread that embedded it. A no-op where the fast decoder does not run."""
        if not self._use_fast():
            return
        fd = self.fast_decoder()
        if fd is None:
            return
        with self._decoder_precision(embeddings):
            fd.prepare(embeddings)

    @contextmanager
    def _decoder_precision(self, embeddings):
        """Autocast to bf16 for ``decoder_precision="bf16"`` (full-precision bases only); yields whether it did."""
        if self.decoder_precision not in ("fp32", "bf16"):
            raise ValueError(f"decoder_precision must be 'fp32' or 'bf16', not {self.decoder_precision!r}")
        if self.decoder_precision == "bf16" and not self.quantization:
            with torch.autocast(embeddings.device.type, dtype=torch.bfloat16):
                yield True
        else:
            yield False

    @property
    def point_multimask(self) -> bool:
        """Whether prompts made of points alone should be decoded as SAM's three candidate masks.

        False while an adapter trained to answer clicks through the single mask output is active
        (``minisam-train adapt train.prompts.point_multimask=false`` records this in its metadata):
        LiteMedSAM's single output is the one medical training shaped; its candidate outputs are SAM's.
        """
        info = self.adapter_info.get(self.active_adapter or "", {})
        return bool(info.get("point_multimask", True))

    @property
    def device(self) -> torch.device:
        for p in self.net.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def name(self) -> str:
        suffix = f"+{self.quantization}" if self.quantization else ""
        return f"{self.source}{suffix}"

    def num_parameters(self) -> int:
        """Parameter count of the base (packed 4-bit weights counted as their logical size)."""
        total = 0
        for p in self.net.parameters():
            shape = getattr(getattr(p, "quant_state", None), "shape", None)
            total += int(torch.Size(shape).numel()) if shape is not None else p.numel()
        return total

    def memory_footprint(self) -> int:
        """Bytes held by parameters and buffers, 4-bit quantization statistics included."""
        total = 0
        for t in list(self.net.parameters()) + list(self.net.buffers()):
            total += t.numel() * t.element_size()
            qs = getattr(t, "quant_state", None)
            if qs is not None:
                for stat in (getattr(qs, "absmax", None), getattr(getattr(qs, "state2", None), "absmax", None)):
                    if isinstance(stat, torch.Tensor):
                        total += stat.numel() * stat.element_size()
        return total

    @contextmanager
    def adapter_disabled(self):
        """Run the bare base model even if an adapter is active."""
        if self.peft_model is None or self.active_adapter is None:
            yield
            return
        with self.peft_model.disable_adapter():
            yield

    @property
    def cache_key(self) -> tuple:
        """Everything that changes the image embedding (the adapter may patch the encoder)."""
        return (self.identity, self.quantization, self.active_adapter, str(self.device))

    def eval(self) -> "SamBackend":
        self.net.eval()
        return self


def fingerprint(tensors: list[torch.Tensor]) -> str:
    """Short hash of tensor values, used to tell base models apart (adapter compatibility)."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
