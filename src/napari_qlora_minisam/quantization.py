"""4-bit NF4 with double quantization, via bitsandbytes (CPU since bitsandbytes 0.50, and CUDA).

HF checkpoints on disk are quantized by transformers' own ``BitsAndBytesConfig`` path. Networks built in
memory (LiteMedSAM, random specs) get their ``nn.Linear`` layers swapped for ``bnb.nn.Linear4bit`` whose
``Params4bit`` weights bitsandbytes quantizes itself when moved to the device: no hand-written quantization.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ModelLoadError

QUANTIZATION_CHOICES = (None, "nf4")


def check_quantize(quantize) -> str | None:
    if quantize in (None, "none", "None", "", False, "fp32"):
        return None
    if quantize == "nf4":
        return "nf4"
    raise ModelLoadError(f"quantize={quantize!r} is not supported; use quantize=None or quantize='nf4'.")


def compute_dtype_for(device: torch.device | str) -> torch.dtype:
    """bf16 matmuls on CUDA; fp32 on CPU where bf16 is slow or missing."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def nf4_config(device):
    """The ``BitsAndBytesConfig`` used for every NF4 load (double quantization on)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype_for(device),
    )


def _require_bnb():
    try:
        import bitsandbytes as bnb
    except ImportError as exc:  # pragma: no cover
        raise ModelLoadError("quantize='nf4' needs bitsandbytes>=0.45: pip install bitsandbytes") from exc
    return bnb


def quantize_linear_layers(module: nn.Module, device="cpu", skip: tuple[str, ...] = ()) -> nn.Module:
    """Replace every ``nn.Linear`` in ``module`` (in place) by an NF4 ``bnb.nn.Linear4bit``.

    Args:
        module: an fp32 network.
        device: where the 4-bit weights live; quantization happens when ``Params4bit`` is moved there.
        skip: names (suffixes) of linear layers to keep in full precision.
    """
    bnb = _require_bnb()
    compute_dtype = compute_dtype_for(device)
    for parent_name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) is not nn.Linear or any(full.endswith(s) for s in skip):
                continue
            q = bnb.nn.Linear4bit(
                child.in_features, child.out_features, bias=child.bias is not None,
                compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4", device="meta",
            )
            q.weight = bnb.nn.Params4bit(
                child.weight.data.to("cpu", torch.float32), requires_grad=False,
                compress_statistics=True, quant_type="nf4",
            )
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data.clone(), requires_grad=False)
            setattr(parent, child_name, q)
    module.to(device)
    return fix_cpu_packing(module)


def fix_cpu_packing(module: nn.Module) -> nn.Module:
    """Keep bitsandbytes off its AVX512-BF16 repacking path for layers it cannot repack.

    bitsandbytes 0.50 repacks 4-bit weights for a faster CPU kernel at the first inference call, but its
    repacking assumes ``in_features`` is a multiple of the quantization block size and ``out_features`` a
    multiple of 32, and fails otherwise (LiteMedSAM's 160-wide TinyViT stage, SAM's 4-output IoU head, tiny
    test models). Those layers use the generic kernel instead.
    """
    bnb = _require_bnb()
    for m in module.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            block = getattr(m.weight.quant_state, "blocksize", 64) if m.weight.quant_state else 64
            if m.in_features % block or m.out_features % 32:
                m.support_avx512bf16_for_cpu = False
    return module
