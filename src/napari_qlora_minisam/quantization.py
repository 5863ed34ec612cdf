"""4-bit NF4 with double quantization, via bitsandbytes (CPU since bitsandbytes 0.50, and CUDA).

HF checkpoints on disk are quantized by transformers' own ``BitsAndBytesConfig`` path. Networks built in
memory (LiteMedSAM, random specs) get their ``nn.Linear`` layers swapped for ``bnb.nn.Linear4bit`` whose
``Params4bit`` weights bitsandbytes quantizes itself when moved to the device: no hand-written quantization.
"""

from __future__ import annotations

from fnmatch import fnmatch

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


def nf4_config(device, skip_modules=None):
    """The ``BitsAndBytesConfig`` used for every NF4 load (double quantization on).

    Args:
        device: target device (picks the compute dtype).
        skip_modules: module names transformers must leave in full precision (see :func:`misaligned_linears`).
    """
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype_for(device),
        llm_int8_skip_modules=list(skip_modules) if skip_modules else None,
    )


def _require_bnb():
    try:
        import bitsandbytes as bnb
    except ImportError as exc:  # pragma: no cover
        raise ModelLoadError("quantize='nf4' needs bitsandbytes>=0.45: pip install bitsandbytes") from exc
    return bnb


# Layers LiteMedSAM keeps in fp32 under quantize="nf4". Its TinyViT encoder is small (5.7 M parameters), so
# the 4-bit error of every layer reaches the embedding. On real slices the encoder MLP output layers (fc2)
# are the most sensitive group: keeping them in fp32 halves the Dice change of all-NF4 while the footprint
# stays under half of fp32's; keeping the whole encoder fp32 costs most of the memory saving
# (docs/quantization.md, benchmarks/nf4_quality.py).
LITEMEDSAM_FP32_LAYERS = ("image_encoder.*.mlp.fc2",)

DEFAULT_BLOCKSIZE = 64  # bitsandbytes' own default: 4-bit codes + one absmax per 64 weights
CPU_BLOCKSIZES = (64, 32)


def blocksize_for(in_features: int, device="cpu") -> int | None:
    """NF4 block size for a linear layer with ``in_features`` inputs, or ``None`` to keep it in fp32.

    bitsandbytes quantizes the flattened weight in blocks of ``blocksize`` values, but its CPU
    dequantization kernel (0.50) assumes every block lies inside one row. When ``in_features`` is not a
    multiple of the block size the two disagree and whole rows come back scaled by a neighbour's absmax
    (weight error 0.39-0.88 instead of 0.09, see docs/quantization.md). LiteMedSAM's 160-wide TinyViT
    stage is such a layer, and it is what made NF4 LiteMedSAM lose half its Dice. On the CPU we therefore
    take the largest supported block size that divides the row; the CUDA kernels index blocks over the
    flat tensor and keep bitsandbytes' default.
    """
    if torch.device(device).type != "cpu":
        return DEFAULT_BLOCKSIZE
    for size in CPU_BLOCKSIZES:
        if in_features % size == 0:
            return size
    return None


def misaligned_linears(module: nn.Module, device="cpu") -> list[str]:
    """Names of ``nn.Linear`` layers that cannot be NF4-quantized correctly on ``device`` at block size 64.

    Used to keep them in fp32 when transformers quantizes a checkpoint (its config has one block size).
    """
    return [name for name, m in module.named_modules()
            if isinstance(m, nn.Linear) and blocksize_for(m.in_features, device) != DEFAULT_BLOCKSIZE]


def quantize_linear_layers(module: nn.Module, device="cpu", skip: tuple[str, ...] = (),
                           blocksize: int | None = None) -> nn.Module:
    """Replace every ``nn.Linear`` in ``module`` (in place) by an NF4 ``bnb.nn.Linear4bit``.

    Args:
        module: an fp32 network.
        device: where the 4-bit weights live; quantization happens when ``Params4bit`` is moved there.
        skip: linear layers to keep in full precision: name suffixes (``"iou_prediction_head.layers.2"``)
            or ``fnmatch`` patterns over the full name (``"image_encoder.*.mlp.fc2"``).
        blocksize: force one NF4 block size for every layer; ``None`` (default) picks a correct one per
            layer with :func:`blocksize_for` (layers with no correct block size stay fp32).
    """
    bnb = _require_bnb()
    compute_dtype = compute_dtype_for(device)
    for parent_name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) is not nn.Linear or any(full.endswith(s) or fnmatch(full, s) for s in skip):
                continue
            size = blocksize or blocksize_for(child.in_features, device)
            if size is None:
                continue
            q = bnb.nn.Linear4bit(
                child.in_features, child.out_features, bias=child.bias is not None,
                compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4", device="meta",
            )
            q.weight = bnb.nn.Params4bit(
                child.weight.data.to("cpu", torch.float32), requires_grad=False,
                compress_statistics=True, quant_type="nf4", blocksize=size,
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


def unpack_cpu_4bit(module: nn.Module) -> int:
    """Undo bitsandbytes' CPU repacking of 4-bit layers exactly; return how many layers were unpacked.

    bitsandbytes 0.50 repacks a ``Linear4bit`` for its AVX512-BF16 CPU kernel at the first inference call,
    keeping the block scales in bf16. Its own inverse, which ``state_dict()`` runs (so every peft load or
    save of an adapter), re-quantizes those scales into a new double-quantized state and so moves every
    weight of the frozen base a little. Keeping the bf16 scales un-nested in fp32 is exact, and the next
    inference repacks to the very same kernel state: the base predicts as it did before.
    """
    bnb = _require_bnb()
    from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

    unpacked = 0
    for m in module.modules():
        qs = getattr(getattr(m, "weight", None), "quant_state", None)
        if isinstance(m, bnb.nn.Linear4bit) and qs is not None and getattr(qs, "packing_format_for_cpu", False):
            scales = qs.absmax.T.reshape(-1).float()  # repacking stored them transposed, in bf16
            qs.original_nested = False  # skip bitsandbytes' lossy re-nesting of the scales
            m.weight.data, qs = _convert_weight_packed_for_cpu_inverse(m.weight.data, qs)
            qs.absmax, qs.nested = scales, False
            m.weight.quant_state = qs
            unpacked += 1
    return unpacked

