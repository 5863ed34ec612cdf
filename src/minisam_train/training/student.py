"""Build the ``StudentSAM``: a dense HF ``SamModel`` whose encoder learns the teacher's embeddings.

Like MobileSAM, the student is a drop-in: same prompt encoder and mask decoder as the teacher, a smaller
image encoder behind them. Starting the decoder from the teacher's weights means the encoder only has to
reproduce the teacher's embedding space for the masks to come out right, which is what the feature loss
teaches; the mask loss then lets the decoder absorb what the encoder still gets wrong.

Sources for the student:
    * a named spec of ``napari_qlora_minisam.models.registry`` (random, seeded): ``random_student_256``,
      ``random_vit_b``, tiny test shapes... A student is random until it is trained, so building one here
      does not warn (``load_model`` does, where a random network would be used to segment);
    * an HF hub id or ``save_pretrained`` folder (``facebook/sam-vit-base``): starts from those weights;
    * an inline shape (``student.config``: the fields of ``HfSamSpec``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from napari_qlora_minisam.errors import ModelLoadError
from napari_qlora_minisam.hub_access import pretrained_kwargs

DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.", "shared_image_embedding.")
# The affine of the encoder's last LayerNorm sets each embedding channel's scale and offset. Taking the
# teacher's puts a fresh student on the teacher's scale at step 0 (LiteMedSAM's channels are ~0.14 wide,
# a fresh LayerNorm's 1.0: a 50x feature loss the optimiser would otherwise spend hundreds of steps on).
EMBEDDING_NORM = ("vision_encoder.neck.layer_norm2.weight", "vision_encoder.neck.layer_norm2.bias")
_ORIGINAL_NORM = ("image_encoder.neck.3.weight", "image_encoder.neck.3.bias")  # segment-anything / LiteMedSAM


_INSTEAD = ("give student.source a save_pretrained folder or a named spec (e.g. tiny_vit_b_shape), or set "
            "student.config (the student's shape)")


def check_student_source(source: str | None, config: dict | None) -> None:
    """Raise now what :func:`build_student_net` would raise about a hub id that cannot be downloaded: the
    distillation builds its student after the teacher pass, which can take hours."""
    from napari_qlora_minisam.models.registry import HF_SPECS

    if config or not source or source in HF_SPECS or Path(source).exists():
        return
    pretrained_kwargs(str(source), _INSTEAD)


def build_student_net(source: str | None = None, config: dict | None = None, seed: int = 0):
    """The student ``SamModel`` (fp32, CPU, train mode), from a spec name, a pretrained source or a shape."""
    from transformers import SamModel

    from napari_qlora_minisam.models.registry import (
        HF_SPECS,
        HfSamSpec,
        build_hf_sam,
        build_random_hf_sam,
        renamed_spec_message,
    )

    if config:
        spec = HfSamSpec(**{k: (tuple(v) if k == "global_attn_indexes" else v) for k, v in dict(config).items()})
        net = build_hf_sam(spec, seed=seed)
        init_vision_encoder(net, seed)
    elif source in HF_SPECS:
        net = build_random_hf_sam(source, seed=seed)
        init_vision_encoder(net, seed)
    elif source and renamed_spec_message(source) and not Path(source).exists():
        raise ModelLoadError(f"student.source: {renamed_spec_message(source)}")
    elif source:
        if Path(source).is_dir() and not (Path(source) / "config.json").is_file():
            raise ModelLoadError(f"student.source={source!r} has no config.json (not a save_pretrained folder).")
        # a hub id: from the cache without a network call, or refused at once when it cannot be downloaded
        hub = {} if Path(source).exists() else pretrained_kwargs(str(source), _INSTEAD)
        try:
            net = SamModel.from_pretrained(str(source), **hub)
        except OSError as exc:
            raise ModelLoadError(
                f"student.source={source!r} could not be loaded ({exc}). Use a named spec "
                f"({', '.join(HF_SPECS)}), a save_pretrained folder, or a hub id with network access."
            ) from exc
    else:
        raise ModelLoadError("Set student.source (a spec name, hub id or folder) or student.config (a shape).")
    return net.float().train()


def warm_start_encoder(student, source) -> dict:
    """Copy the vision-encoder weights of another student (a ``save_pretrained`` folder) where they fit.

    Lets a run grow a trained student instead of starting over: e.g. the same ViT with some blocks
    switched to global attention keeps every weight except those blocks' relative position tables, whose
    size depends on the attention span (they start at zero, i.e. "no positional bias"). Returns the
    tensors copied and the names skipped because of a shape change.
    """
    from transformers import SamModel

    src = Path(source)
    if not (src / "config.json").is_file():
        raise ModelLoadError(f"student.init_encoder={source!r} is not a save_pretrained folder (no config.json).")
    donor = SamModel.from_pretrained(str(src)).vision_encoder.state_dict()
    own = student.vision_encoder.state_dict()
    copied, skipped = {}, []
    for name, value in donor.items():
        if name in own and own[name].shape == value.shape:
            copied[name] = value
        elif name in own:
            skipped.append(name)
    if not copied:
        raise ModelLoadError(f"student.init_encoder={source!r}: no encoder weight fits this student's shape.")
    student.vision_encoder.load_state_dict(copied, strict=False)
    return {"copied": len(copied), "of": len(own), "skipped": skipped}


def init_vision_encoder(net, seed: int = 0) -> None:
    """Give a randomly built encoder a trainable start (ViT practice: truncated normal, std 0.02).

    ``transformers``' SAM initialises the vision encoder with ``initializer_range=1e-10``, meant to be
    overwritten by pretrained weights: left as is, every weight is ~0, the embedding is all zeros and the
    gradients vanish, so a from-scratch student would not learn.
    """
    g = torch.Generator().manual_seed(int(seed) + 1)
    with torch.no_grad():
        for module in net.vision_encoder.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                w = module.weight
                w.copy_((torch.randn(w.shape, generator=g) * 0.02).clamp_(-0.04, 0.04))
                if module.bias is not None:
                    module.bias.zero_()
        pos = getattr(net.vision_encoder, "pos_embed", None)
        if pos is not None:
            pos.copy_((torch.randn(pos.shape, generator=g) * 0.02).clamp_(-0.04, 0.04))


def teacher_decoder_state(teacher) -> dict[str, torch.Tensor]:
    """The teacher's prompt encoder + mask decoder (+ Fourier features) in HF ``SamModel`` key names.

    LiteMedSAM (and original segment-anything nets) hold SAM's standard decoder under the original names,
    which ``models.sam_checkpoint.convert_state_dict`` maps into HF's layout. A 4-bit teacher's linear layers
    are dequantized first, so the student starts from fp32 weights.
    """
    net = teacher.net
    if getattr(teacher, "peft_model", None) is not None:
        raise ModelLoadError("Give the student a teacher without LoRA adapters (merge them first).")
    state = _float_state_dict(net)
    if teacher.kind == "hf":
        return {k: v for k, v in state.items() if k.startswith(DECODER_PREFIXES) or k in EMBEDDING_NORM}
    from napari_qlora_minisam.models.sam_checkpoint import convert_state_dict

    original = {k: v for k, v in state.items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    out = {k: v for k, v in convert_state_dict(original).items() if k.startswith(DECODER_PREFIXES)}
    if all(k in state for k in _ORIGINAL_NORM):
        out.update({hf: state[orig] for hf, orig in zip(EMBEDDING_NORM, _ORIGINAL_NORM)})
    return out


def _float_state_dict(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with bitsandbytes 4-bit weights turned back into fp32 tensors."""
    state = {k: v for k, v in net.state_dict().items()}
    for name, module in net.named_modules():
        weight = getattr(module, "weight", None)
        quant_state = getattr(weight, "quant_state", None)
        if quant_state is None:
            continue
        import bitsandbytes.functional as bnbf

        state[f"{name}.weight"] = bnbf.dequantize_4bit(weight.data, quant_state).float().cpu()
        # bitsandbytes also puts its quantization statistics into the state dict: not model tensors.
        for k in [k for k in state if k.startswith(f"{name}.weight.") and k != f"{name}.weight"]:
            del state[k]
    return {k: v.detach().float().cpu() if torch.is_floating_point(v) else v for k, v in state.items()}


def init_decoder_from_teacher(student, teacher) -> int:
    """Copy the teacher's prompt encoder and mask decoder into the student; returns the tensors copied.

    Raises:
        ModelLoadError: the decoders differ in shape (e.g. another embedding width).
    """
    return load_decoder_state(student, teacher_decoder_state(teacher))


def load_decoder_state(student, src: dict) -> int:
    """Load a decoder state in HF layout (see :func:`teacher_decoder_state`) into the student."""
    dst = student.state_dict()
    wanted = [k for k in dst if k.startswith(DECODER_PREFIXES)]
    missing = [k for k in wanted if k not in src]
    wrong = [k for k in wanted if k in src and tuple(src[k].shape) != tuple(dst[k].shape)]
    if missing or wrong:
        raise ModelLoadError(
            f"The teacher's decoder does not fit the student's (missing {missing[:3]}, wrong shape {wrong[:3]}); "
            "give the student the teacher's embedding width (output_channels=256) or set "
            "student.init_decoder=own."
        )
    norm = [k for k in EMBEDDING_NORM if k in src and k in dst and src[k].shape == dst[k].shape]
    student.load_state_dict({k: src[k] for k in wanted + norm}, strict=False)
    return len(wanted) + len(norm)


def set_trainable(student, train_decoder: bool = True) -> None:
    """The encoder always learns; the prompt encoder and decoder only when ``train_decoder``."""
    for name, p in student.named_parameters():
        p.requires_grad_(train_decoder or not name.startswith(DECODER_PREFIXES))
    # The Fourier features are a fixed random projection in SAM; training them only adds noise.
    for p in student.shared_image_embedding.parameters():
        p.requires_grad_(False)


class StudentForDistillation(torch.nn.Module):
    """One forward for encoder + decoder, so DDP sees a single call per step.

    ``forward(pixels (B,3,S,S), boxes [B x (P_i, 4)]) -> (embeddings (B,C,h,w), [B x logits (P_i, 1, 4h, 4w)])``
    with boxes in the student's input frame.
    """

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, pixels, boxes, loop=None):
        """``loop``: a :class:`~.prompt_loop.LoopInputs`; then the logits of its corrective prompts follow each
        slice's box logits, and the teacher's logits for them come back as a third value (inside one forward,
        so DDP sees every decoder call)."""
        # Not get_image_embeddings(): transformers runs it under no_grad, the encoder would never learn.
        emb = self.student.vision_encoder(pixels)[0]
        logits = []
        for i, b in enumerate(boxes):
            out = self.student(image_embeddings=emb[i: i + 1], input_boxes=b[None], multimask_output=False)
            logits.append(out.pred_masks[0])
        if loop is None:
            return emb, logits
        s_extra, t_extra = loop.prompts.extra_masks(self.student, emb, boxes, logits, loop.teacher_embedding,
                                                    loop.teacher_logits, loop.generator)
        return emb, [torch.cat([a, b]) for a, b in zip(logits, s_extra)], t_extra
