"""``QLoRAMiniSAM``: a frozen (NF4, double-quantized) SAM-family base with trainable peft LoRA adapters.

The base comes from ``load_model`` (any source, 4-bit via bitsandbytes) and the adapters from
``napari_qlora_minisam.adapters.add_lora`` (peft) or, to continue training one, ``load_adapter(...,
trainable=True)``, so what trains here is exactly what eval and the plugin load later. The same class,
with ``method="full"``, is the full fine-tuning cost baseline: every weight of the fp32 base trainable,
no adapter.
"""

from __future__ import annotations

import torch
from torch import nn

from ..adapters import add_lora, load_adapter, save_adapter
from ..errors import AdapterError
from ..quantization import unpack_cpu_4bit

METHODS = ("qlora", "full")


def use_trainable_4bit_kernels(net: nn.Module) -> dict:
    """Keep bitsandbytes on its autograd-aware 4-bit path; return each 4-bit layer's previous kernel choice.

    bitsandbytes 0.50 repacks a ``Linear4bit`` for a faster CPU inference kernel the first time it runs in
    ``eval()`` mode without grad (as validation does). That kernel has no backward, so after the first
    validation the gradients of every LoRA layer *below* a repacked layer would silently vanish (or the
    in-place bias add fails). Training must never use it; :func:`restore_4bit_kernels` gives it back.
    Layers already repacked (a model that predicted before it trains) are unpacked exactly.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:  # pragma: no cover - fp32 bases do not need bitsandbytes
        return {}
    previous = {}
    for m in net.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            previous[m] = m.support_avx512bf16_for_cpu
            m.support_avx512bf16_for_cpu = False
    if previous:
        unpack_cpu_4bit(net)
    return previous


def restore_4bit_kernels(previous: dict) -> None:
    """Undo :func:`use_trainable_4bit_kernels`: inference may repack weights for the fast CPU kernel again."""
    for m, flag in previous.items():
        m.support_avx512bf16_for_cpu = flag


class QLoRAMiniSAM(nn.Module):
    """A :class:`~napari_qlora_minisam.models.SamBackend` prepared for adapter training.

    Args:
        backend: from ``load_model`` (``quantize="nf4"`` for QLoRA).
        adapter_name: name of the LoRA adapter to train (the modality).
        method: ``"qlora"`` (frozen base + LoRA) or ``"full"`` (every base weight trains; cost baseline).
        r, alpha, dropout, target_modules, parts: the LoRA configuration (peft ``LoraConfig``).
        init_adapter: an adapter folder to continue training (its own LoRA configuration is kept; the
            settings above are then ignored). It must have been trained on this base.
    """

    def __init__(self, backend, adapter_name: str = "adapter", method: str = "qlora", r: int = 8,
                 alpha: int = 16, dropout: float = 0.05, target_modules=("qkv", "q_proj", "v_proj"),
                 parts=("encoder", "decoder"), init_adapter=None):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"train.method={method!r}; choose one of {METHODS}.")
        self.backend = backend
        self.adapter_name = adapter_name
        self.method = method
        self.parts = tuple(parts)
        if method == "full":
            if backend.quantization:
                raise AdapterError("Full fine-tuning cannot update 4-bit weights; use quantize=null with "
                                   "train.method=full.")
            for p in backend.net.parameters():
                p.requires_grad_(True)
        elif init_adapter is not None:
            load_adapter(backend, init_adapter, adapter_name, trainable=True)
        else:
            add_lora(backend, adapter_name, r=r, alpha=alpha, dropout=dropout,
                     target_modules=tuple(target_modules), parts=self.parts)
        self._inference_kernels = use_trainable_4bit_kernels(backend.net)
        self.net = backend.net  # registered so parameters(), state_dict() and .to() see the network

    # -- what trains --------------------------------------------------------------------------------
    @property
    def encoder_trains(self) -> bool:
        """Whether any trainable weight sits in the image encoder (else its output can be cached)."""
        return any(p.requires_grad for p in self.backend.image_encoder.parameters())

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.net.parameters() if p.requires_grad]

    def parameter_report(self) -> dict:
        """Trainable and total parameter counts (4-bit weights counted at their logical size)."""
        trainable = sum(p.numel() for p in self.trainable_parameters())
        total = self.backend.num_parameters()
        return {"trainable_params": int(trainable), "total_params": int(total),
                "trainable_share": trainable / max(total, 1)}

    def train(self, mode: bool = True):
        super().train(mode)
        # Frozen normalisation layers keep their statistics: with a few slices per batch, BatchNorm
        # running stats would drift and change the *base* the adapter is meant to leave untouched.
        for m in self.net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    # -- forward ------------------------------------------------------------------------------------
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backend.encode(pixels.to(self.backend.device))

    def decode(self, embedding: torch.Tensor, prompts, mask_input=None):
        dev = self.backend.device
        to = (lambda t: None if t is None else t.to(dev))
        if mask_input is None and getattr(prompts, "mask_prompts", None) is not None:
            # the decoder's low-res grid is 4x the embedding's (as MiniSamPredictor.mask_prompt)
            low = tuple(4 * s for s in embedding.shape[-2:])
            mask_input = prompts.mask_input(self.backend.spec.image_size, low).to(dev)
        return self.backend.decode(embedding.to(dev), points=to(prompts.points), labels=to(prompts.labels),
                                   boxes=to(prompts.boxes), mask_input=mask_input,
                                   multimask=prompts.multimask)

    def forward(self, embedding, prompts):
        return self.decode(embedding, prompts)

    def release(self) -> None:
        """Hand the backend back for inference: eval mode, bitsandbytes' fast CPU kernels where they were on."""
        self.eval()
        restore_4bit_kernels(self._inference_kernels)

    # -- export -------------------------------------------------------------------------------------
    def save_adapter(self, out_dir, metadata: dict):
        """Write the peft adapter + ``minisam_adapter.json`` atomically (see ``adapters.save_adapter``)."""
        if self.method != "qlora":
            raise AdapterError("Only train.method=qlora produces an adapter; full fine-tuning is a cost baseline.")
        return save_adapter(self.backend, out_dir, self.adapter_name, metadata)
