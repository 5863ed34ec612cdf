"""Inference fast path for segment-anything's prompt encoder + mask decoder (the layout LiteMedSAM uses).

The reference ``MaskDecoder`` is written for training: every call recomputes the dense positional
encoding, copies the image embedding once per prompt, transposes it to tokens and back, and runs the
transposed-conv upscaling on all four mask tokens' feature map in NCHW. In an interactive loop the image is
fixed and only the prompt changes, so:

* everything that depends on the image alone is computed once per image and cached: the dense positional
  encoding, ``embedding + no-mask embedding`` in token layout, and in the first two-way block the keys
  and values of the token->image attention and the queries of the image->token attention (the image
  tokens only change *after* that block's image->token attention);
* with plain ``nn.Linear`` projections (no LoRA, no 4-bit), the cross attentions never project the 4096
  image tokens: the few prompt tokens are pushed through the projection weights instead (see
  :func:`token_to_image`, :func:`image_to_token`), which more than halves the cross attentions' FLOPs;
* softmax over the 7 prompt tokens runs on a middle axis (torch's last-axis softmax of width 7 is slow);
* the two stride-2 transposed convolutions are done as matmuls on the token layout (a 2x2/stride-2
  transposed conv has no overlap, so it is a per-pixel linear map to 4 sub-pixels) and the hypernetwork
  product is taken before un-shuffling the sub-pixels, so only the ``M`` final mask channels are
  re-ordered instead of 32 feature channels;
* with ``multimask=False`` only the one mask that is returned is computed, and the final token->image
  attention runs for the IoU token and the returned masks' tokens only (2 of 7 rows for a box);
* with a ``window`` (previews of a box), the upscaling and hypernetwork product, which are local to each
  grid cell, run only on the cells around the box; if the mask reaches an inner edge of the window, the
  whole grid is done after all (see :meth:`FastSamDecoder._upscale_and_project`).

peft injects LoRA layers and bitsandbytes swaps in ``Linear4bit`` in place, so a projection's weight is
only read when the module is exactly ``nn.Linear``; otherwise the module is called, and the fast path
runs whatever is there. The per-image cache is keyed on the embedding tensor and on a signature of every
parameter's version counter and of peft's adapter switches, so a weight update, an adapter switch or
``disable_adapter`` invalidates it. The results equal the reference decoder up to float32 reassociation (tested in
``tests/core/test_speed_paths.py``).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .fast_encoder import _linear

# peft's LoRA layers expose these; their values change what a module computes without touching weights.
_ADAPTER_STATE_ATTRS = ("active_adapters", "disable_adapters", "merged")
# Written outside a decode window: plainly background (SAM's mask logits stay within about +-30).
OUTSIDE_WINDOW_LOGIT = -20.0


def module_state_signature(modules) -> tuple:
    """A cheap value that changes whenever the output of ``modules`` can change for the same input.

    Tensor version counters catch in-place weight updates (optimizer steps, ``load_state_dict``); ids
    catch swapped submodules (peft injection, NF4 replacement, ``merge_and_unload``); the peft flags
    catch ``set_adapter`` and ``disable_adapter``.
    """
    sig = []
    for mod in modules:
        for sub in mod.modules():
            sig.append(id(sub))
            for t in itertools.chain(sub.parameters(recurse=False), sub.buffers(recurse=False)):
                sig.append((id(t), 0 if t.is_inference() else t._version))
            for attr in _ADAPTER_STATE_ATTRS:
                if hasattr(type(sub), attr):
                    try:
                        sig.append(repr(getattr(sub, attr)))
                    except Exception:  # a half-initialised peft layer; treat as a distinct state
                        sig.append(attr)
    return tuple(sig)


def _tensor_key(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), tuple(t.shape), 0 if t.is_inference() else t._version)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention on head-split tensors; a batch of one on either side broadcasts without a copy.

    Plain matmul + softmax rather than ``F.scaled_dot_product_attention``: with 16-wide heads and 7 prompt
    tokens on one side, torch's CPU flash kernel measured several times slower than this.
    """
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(1.0 / math.sqrt(q.shape[-1]))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _is_plain(attn: nn.Module) -> bool:
    """True if the attention's projections are untouched ``nn.Linear`` (no LoRA, no 4-bit layers)."""
    return all(type(getattr(attn, n)) is nn.Linear for n in ("q_proj", "k_proj", "v_proj", "out_proj"))


def token_to_image(attn: nn.Module, q_in: torch.Tensor, kpe: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """segment-anything ``Attention(q=q_in, k=kpe, v=keys)`` where the few prompt tokens attend the image.

    With plain linear projections the 4096-token key/value projections are never formed: per head,
    ``q_h . (W_k,h x + b_k,h)`` = ``(q_h W_k,h) . x`` + a term constant along the softmax axis, and since the
    softmax weights sum to one, ``A (x W_v^T + b_v)`` = ``(A x) W_v^T + b_v``. That is two
    (heads*tokens x C) @ (C x HW) products instead of two (HW x C) @ (C x C/2) projections.
    """
    if not _is_plain(attn):
        return FastSamDecoder.module_attention(attn, q_in, kpe, keys)
    heads = attn.num_heads
    b, n, _ = q_in.shape
    q = _split_heads(attn.q_proj(q_in), heads)  # (B, h, n, d)
    d = q.shape[-1]
    wk = attn.k_proj.weight.view(heads, d, -1)  # (h, d, C)
    qf = torch.matmul(q, wk).reshape(b, heads * n, -1)  # (B, h*n, C)
    scores = torch.matmul(qf, kpe.transpose(1, 2)).mul_(1.0 / math.sqrt(d))
    weights = torch.softmax(scores, dim=-1)  # (B', h*n, HW)
    mixed = torch.matmul(weights, keys).view(-1, heads, n, keys.shape[-1])  # (B', h, n, C)
    wv = attn.v_proj.weight.view(heads, d, -1).transpose(1, 2)  # (h, C, d)
    out = torch.matmul(mixed, wv) + attn.v_proj.bias.view(heads, 1, d)  # (B', h, n, d)
    return attn.out_proj(_merge_heads(out))


def image_to_token(attn: nn.Module, kpe: torch.Tensor, q_tok: torch.Tensor, v_tok: torch.Tensor,
                   cached_q: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                   in_place: bool = False) -> torch.Tensor:
    """segment-anything ``Attention(q=kpe, k=q_tok, v=v_tok)`` where every image token attends the prompt.

    With plain projections, the image-side query projection and the output projection are folded into
    the few prompt tokens: scores = ``x (W_q,h^T k_h^T) + b_q,h . k_h`` and the output is
    ``sum_h A_h (v_h W_o,h^T) + b_o``. ``cached_q`` (head-split image queries of the first block, which
    depend only on the image) replaces the query projection when given. With ``residual`` (the image tokens
    the block adds the result to) it returns ``residual + attention``: the sum is the GEMM's accumulator
    instead of a separate pass over the 4096 x C tokens; ``in_place`` lets it accumulate into ``residual``
    itself (a tensor the caller no longer needs), which also saves copying it.
    """
    heads = attn.num_heads
    if not _is_plain(attn):
        if cached_q is None:
            out = FastSamDecoder.module_attention(attn, kpe, q_tok, v_tok)
            return out if residual is None else residual + out
        k = _split_heads(attn.k_proj(q_tok), heads)
        v = _split_heads(attn.v_proj(v_tok), heads)
        out = attn.out_proj(_merge_heads(_attend(cached_q, k, v)))
        return out if residual is None else residual + out
    k = attn.k_proj(q_tok)  # (B, n, h*d)
    b, n, inner = k.shape
    d = inner // heads
    kh = k.view(b, n, heads, d)
    # Scores are laid out (B, h*n, HW) so the softmax runs over a middle axis of 7 with HW contiguous
    # inside it: torch's CPU softmax over a last axis this short is far slower than over this layout.
    if cached_q is None:
        wq = attn.q_proj.weight.view(heads, d, -1)  # (h, d, C)
        kf = torch.einsum("hdc,bthd->bhtc", wq, kh).reshape(b, heads * n, -1)  # W_q,h^T k_h[t] per (h, t)
        qb = torch.einsum("hd,bthd->bht", attn.q_proj.bias.view(heads, d), kh).reshape(b, heads * n, 1)
        x = kpe.expand(b, -1, -1) if kpe.shape[0] != b else kpe
        scores = torch.baddbmm(qb, kf, x.transpose(1, 2))  # (B, h*n, HW)
    else:
        scores = torch.matmul(kh.permute(0, 2, 1, 3), cached_q.transpose(-2, -1))  # (B, h, n, HW)
    scores = scores.view(scores.shape[0], heads, n, -1).mul_(1.0 / math.sqrt(d))
    weights = torch.softmax(scores, dim=2).view(scores.shape[0], heads * n, -1)  # (B, h*n, HW)
    v = attn.v_proj(v_tok).view(b, n, heads, d)
    wo = attn.out_proj.weight.view(-1, heads, d)  # (C, h, d)
    vf = torch.einsum("bthd,chd->bhtc", v, wo).reshape(b, heads * n, -1)  # (B, h*n, C)
    if residual is None or residual.dtype != vf.dtype:  # (bf16 decoder: keep the sum in the tokens' fp32)
        out = torch.baddbmm(attn.out_proj.bias.view(1, 1, -1), weights.transpose(1, 2), vf)
        return out if residual is None else residual + out
    # Each head's weights sum to one over its tokens, so b_o / heads on every row of vf adds exactly b_o.
    vf = vf + attn.out_proj.bias.view(1, 1, -1) / heads
    if in_place and residual.shape[0] == vf.shape[0]:
        return residual.baddbmm_(weights.transpose(1, 2), vf)
    if residual.shape[0] != vf.shape[0]:
        residual = residual.expand(vf.shape[0], -1, -1)
    return torch.baddbmm(residual, weights.transpose(1, 2), vf)


class _ImageState:
    """What the decoder needs from one image, independent of the prompt."""

    __slots__ = ("embedding", "key", "keys", "pe", "l0_k", "l0_v", "l0_i2t_q")


class FastSamDecoder:
    """Prompt encoder + mask decoder of a segment-anything style network, for inference.

    Args:
        prompt_encoder: segment-anything ``PromptEncoder``.
        mask_decoder: segment-anything ``MaskDecoder`` with a ``TwoWayTransformer``.
    """

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module):
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self._image: _ImageState | None = None
        self._pe: tuple | None = None  # (key, (1, HW, C) dense positional encoding)
        self.window_fallbacks = 0  # windowed decodes redone on the whole grid (the mask reached the edge)

    @staticmethod
    def supports(prompt_encoder: nn.Module, mask_decoder: nn.Module) -> bool:
        """True if the networks have the segment-anything structure this path re-implements."""
        try:
            up = mask_decoder.output_upscaling
            t = mask_decoder.transformer
            convs = (up[0], up[3])
            return (
                len(up) == 5 and all(type(c) is nn.ConvTranspose2d for c in convs)
                and all(c.kernel_size == (2, 2) and c.stride == (2, 2) and c.padding == (0, 0) for c in convs)
                and hasattr(up[1], "eps") and len(t.layers) >= 1 and t.layers[0].skip_first_layer_pe
                and hasattr(prompt_encoder, "no_mask_embed") and hasattr(prompt_encoder, "pe_layer")
            )
        except (AttributeError, IndexError, TypeError):
            return False

    def clear(self) -> None:
        """Drop the per-image cache (it also refreshes itself when the image or weights change)."""
        self._image = None
        self._pe = None

    # -- per-image state --------------------------------------------------------------------------------
    def _dense_pe(self) -> torch.Tensor:
        pe_layer = self.prompt_encoder.pe_layer
        key = module_state_signature([pe_layer])
        if self._pe is None or self._pe[0] != key:
            pe = self.prompt_encoder.get_dense_pe()  # (1, C, h, w)
            self._pe = (key, pe.flatten(2).transpose(1, 2).contiguous())
        return self._pe[1]

    def prepare(self, embeddings: torch.Tensor) -> None:
        """Compute and keep the per-image state of ``embeddings`` before the first prompt needs it."""
        self._image_state(embeddings)

    def _image_state(self, embeddings: torch.Tensor) -> _ImageState:
        t = self.mask_decoder.transformer
        layer0 = t.layers[0]
        key = (
            _tensor_key(embeddings),
            module_state_signature([self.prompt_encoder.no_mask_embed, layer0.cross_attn_token_to_image,
                                    layer0.cross_attn_image_to_token.q_proj]),
        )
        st = self._image
        # ``is`` as well as the key: a freed tensor's address can be reused by a new one.
        if st is not None and st.embedding is embeddings and st.key == key:
            return st
        st = _ImageState()
        st.embedding, st.key = embeddings, key
        st.pe = self._dense_pe()
        no_mask = self.prompt_encoder.no_mask_embed.weight.view(1, 1, -1)
        st.keys = (embeddings.flatten(2).transpose(1, 2) + no_mask).contiguous()  # (B, HW, C)
        kpe = st.keys + st.pe
        t2i, i2t = layer0.cross_attn_token_to_image, layer0.cross_attn_image_to_token
        st.l0_k = _split_heads(t2i.k_proj(kpe), t2i.num_heads)
        st.l0_v = _split_heads(t2i.v_proj(st.keys), t2i.num_heads)
        st.l0_i2t_q = _split_heads(i2t.q_proj(kpe), i2t.num_heads)
        self._image = st
        return st

    # -- decoding ---------------------------------------------------------------------------------------
    def __call__(self, embeddings, points=None, labels=None, boxes=None, mask_input=None, multimask=True,
                 window=None):
        """Same contract as ``SamBackend.decode``: ``(low_res_logits (P, M, 4h, 4w), iou (P, M))``."""
        pe_enc, md = self.prompt_encoder, self.mask_decoder
        sparse, _ = pe_enc(points=None if points is None else (points, labels), boxes=boxes, masks=None)
        n_prompts = sparse.shape[0]
        output_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(n_prompts, -1, -1), sparse], dim=1)

        pos = self._dense_pe()
        h, w = embeddings.shape[-2:]
        if mask_input is None:
            st = self._image_state(embeddings)
            queries, keys = self._block0_cached(st, tokens)
        else:
            # A mask prompt changes the image tokens before the first block: nothing to reuse.
            dense = pe_enc._embed_masks(mask_input)
            src = embeddings + dense if embeddings.shape[0] in (1, dense.shape[0]) else None
            if src is None:
                raise ValueError(f"{embeddings.shape[0]} embeddings for {dense.shape[0]} mask prompts")
            # contiguous: bitsandbytes' generic CPU 4-bit kernel mis-reads inputs whose last axis is strided
            keys = src.flatten(2).transpose(1, 2).contiguous()
            queries, keys = self._block(md.transformer.layers[0], tokens, keys, tokens, pos)
        for layer in md.transformer.layers[1:]:
            queries, keys = self._block(layer, queries, keys, tokens, pos)
        sel = range(1, md.num_mask_tokens) if multimask else range(0, 1)
        # The final attention updates each token on its own and only the IoU token and the returned masks'
        # tokens are read after it: the prompt tokens, and the unused mask tokens, are left out of it.
        rows = [0] + [1 + i for i in sel]
        final = md.transformer.final_attn_token_to_image
        q_out, t_out = queries[:, rows], tokens[:, rows]
        q_out = md.transformer.norm_final_attn(q_out + token_to_image(final, q_out + t_out, keys + pos, keys))

        hyper = torch.stack([md.output_hypernetworks_mlps[i](q_out[:, 1 + j, :]) for j, i in enumerate(sel)], dim=1)
        masks = self._upscale_and_project(keys, hyper, h, w, window)
        iou = md.iou_prediction_head(q_out[:, 0, :])
        iou = iou[:, 1:] if multimask else iou[:, :1]
        return masks, iou

    @staticmethod
    def module_attention(attn, q, k, v):
        """segment-anything ``Attention`` with every projection called as a module (LoRA / 4-bit safe)."""
        out = _attend(_split_heads(attn.q_proj(q), attn.num_heads),
                      _split_heads(attn.k_proj(k), attn.num_heads),
                      _split_heads(attn.v_proj(v), attn.num_heads))
        return attn.out_proj(_merge_heads(out))

    def _block0_cached(self, st: _ImageState, tokens):
        """The first two-way block with the image-only projections taken from the cache."""
        blk = self.mask_decoder.transformer.layers[0]
        queries = blk.norm1(self.module_attention(blk.self_attn, tokens, tokens, tokens))  # skip_first_layer_pe
        t2i = blk.cross_attn_token_to_image
        q = _split_heads(t2i.q_proj(queries + tokens), t2i.num_heads)
        queries = blk.norm2(queries + t2i.out_proj(_merge_heads(_attend(q, st.l0_k, st.l0_v))))
        queries = blk.norm3(queries + blk.mlp(queries))
        keys = blk.norm4(image_to_token(blk.cross_attn_image_to_token, None, queries + tokens, queries,
                                        cached_q=st.l0_i2t_q, residual=st.keys))
        return queries, keys

    def _block(self, blk, queries, keys, query_pe, key_pe):
        """``TwoWayAttentionBlock.forward`` with ``keys + key_pe`` computed once for both attentions."""
        if blk.skip_first_layer_pe:
            queries = self.module_attention(blk.self_attn, queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.module_attention(blk.self_attn, q, q, queries)
        queries = blk.norm1(queries)
        kpe = keys + key_pe
        queries = blk.norm2(queries + token_to_image(blk.cross_attn_token_to_image, queries + query_pe, kpe, keys))
        queries = blk.norm3(queries + blk.mlp(queries))
        # keys is the previous block's own output (never the per-image cache): it may be overwritten.
        keys = blk.norm4(image_to_token(blk.cross_attn_image_to_token, kpe, queries + query_pe, queries,
                                        residual=keys, in_place=True))
        return queries, keys

    def _upscale_and_project(self, keys, hyper, h, w, window=None):
        """Low-res mask logits ``(B, M, 4h, 4w)``: all grid cells, or only those of ``window``.

        ``window`` = ``(r0, r1, c0, c1)`` grid cells. Upscaling and the hypernetwork product map each grid
        cell to its own 4x4 logits, so inside the window the logits are exactly the full decode's; outside,
        :data:`OUTSIDE_WINDOW_LOGIT`. If the mask reaches an edge of the window that is not an edge of the
        grid, it may go on beyond it, and the whole grid is computed instead. What can differ from the full
        decode is therefore only mask that lies wholly outside the window, away from the prompted object.
        """
        if window is not None:
            r0, r1 = max(0, int(window[0])), min(h, int(window[1]))
            c0, c1 = max(0, int(window[2])), min(w, int(window[3]))
            if r1 > r0 and c1 > c0 and (r1 - r0) * (c1 - c0) < h * w:
                b, _, c = keys.shape
                inner = keys.view(b, h, w, c)[:, r0:r1, c0:c1].reshape(b, -1, c)
                part = self._upscale_tokens(inner, hyper, r1 - r0, c1 - c0)
                fg = part > 0
                open_edge = ((r0 > 0 and bool(fg[..., 0, :].any())) or (r1 < h and bool(fg[..., -1, :].any()))
                             or (c0 > 0 and bool(fg[..., :, 0].any())) or (c1 < w and bool(fg[..., :, -1].any())))
                self.window_fallbacks += open_edge
                if not open_edge:
                    out = part.new_full((b, part.shape[1], 4 * h, 4 * w), OUTSIDE_WINDOW_LOGIT)
                    out[..., 4 * r0:4 * r1, 4 * c0:4 * c1] = part
                    return out
        return self._upscale_tokens(keys, hyper, h, w)

    def _upscale_tokens(self, keys, hyper, h, w):
        """``output_upscaling`` + hypernetwork product on the token layout of an ``h x w`` grid.

        A 2x2 stride-2 transposed conv maps each input pixel to its own 2x2 output block, so on tokens it
        is one matmul to ``4 * C_out`` columns (sub-pixel major). Both upscalings are done that way, the
        hypernetwork weights are applied per sub-pixel, and only the ``M`` resulting mask channels are
        put back into image order.
        """
        up = self.mask_decoder.output_upscaling
        ct1, ln, act1, ct2, act2 = up[0], up[1], up[2], up[3], up[4]
        b, n, _ = keys.shape
        c1, c2 = ct1.out_channels, ct2.out_channels
        # ConvTranspose2d weight (C_in, C_out, 2, 2) -> (4 * C_out, C_in); columns sub-pixel major [dy, dx, C_out]
        w1 = ct1.weight.permute(2, 3, 1, 0).reshape(4 * c1, ct1.in_channels)
        w2 = ct2.weight.permute(2, 3, 1, 0).reshape(4 * c2, ct2.in_channels)
        b1 = None if ct1.bias is None else ct1.bias.repeat(4)
        b2 = None if ct2.bias is None else ct2.bias.repeat(4)
        x = _linear(keys.reshape(b * n, -1), w1, b1)
        x = act1(F.layer_norm(x.view(b * n * 4, c1), (c1,), ln.weight, ln.bias, ln.eps))
        x = _linear(x, w2, b2, act2).view(b, n * 16, c2)  # bias and GELU fused into the GEMM
        m = hyper.shape[1]
        masks = torch.bmm(x, hyper.transpose(1, 2))  # (B, [i, j, dy1, dx1, dy2, dx2], M)
        masks = masks.view(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(b, m, 4 * h, 4 * w)

