"""``load_model``: the one entry point from a source name or path to a ready ``SamBackend``."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from .errors import ModelLoadError
from .hub_access import pretrained_kwargs
from .quantization import (
    LITEMEDSAM_FP32_LAYERS,
    check_quantize,
    fix_cpu_packing,
    nf4_config,
    quantize_linear_layers,
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin")


def resolve_device(device="auto") -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device={device!r} was asked for but CUDA is not available; use device='cpu'.")
    return dev


def load_model(source: str = "litemedsam", *, adapters=None, quantize=None, device="auto"):
    """Load a SAM-family model behind the common :class:`~.models.SamBackend` interface.

    Args:
        source: ``"litemedsam"`` (bundled, offline default); ``"minisam"`` (our distilled student, shipped
            inside the package; docs/minisam.md) or a folder holding another MiniSAM encoder
            (``encoder.safetensors``, written by ``models.minisam_student.save_encoder``); an HF hub id
            (``facebook/sam-vit-base``) or a local directory written by ``save_pretrained``; an original
            segment-anything / MedSAM ``.pth`` checkpoint; or a named random spec (``tiny_hf_sam``,
            ``random_vit_b``, ``random_student_256``...: every one is named ``random_*`` or ``tiny_*``, and
            building one warns with
            :class:`~.models.registry.RandomWeightsWarning`, since its masks mean nothing).
        adapters: one adapter directory or a list of them (peft format + ``minisam_adapter.json``); the
            first is made active. Each must have been trained on this base.
        quantize: ``None`` (fp32) or ``"nf4"`` (bitsandbytes 4-bit NF4, double quantization; CPU or CUDA).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...

    Raises:
        ModelLoadError: the source is unknown, missing, corrupt or of the wrong kind.
        AdapterError: an adapter is malformed or was made for another base.
    """
    from .models.registry import HF_SPECS, available_sources, named_model, renamed_spec_message

    quantize = check_quantize(quantize)
    dev = resolve_device(device)
    src = str(source).strip()
    path = Path(src).expanduser()

    named = named_model(src)
    if named == "litemedsam":
        backend = _litemedsam(dev, quantize)
    elif named == "minisam":
        backend = _minisam(dev, quantize, minisam_dir(), "minisam")
    elif src in HF_SPECS:
        backend = _random_hf(src, dev, quantize)
    elif renamed_spec_message(src) and not path.exists():
        raise ModelLoadError(renamed_spec_message(src))
    elif path.is_dir() and _is_minisam_folder(path):
        backend = _minisam(dev, quantize, path, src)
    elif path.is_dir():
        backend = _hf_pretrained(src, path, dev, quantize)
    elif path.suffix in CHECKPOINT_SUFFIXES or path.is_file():
        backend = _sam_checkpoint(src, path, dev, quantize)
    elif _HUB_ID.match(src):
        backend = _hf_pretrained(src, src, dev, quantize)
    else:
        raise ModelLoadError(
            f"Unknown model source {src!r}: not a known name, an existing directory or a checkpoint file. "
            f"Use one of {', '.join(available_sources())}, a folder written by save_pretrained, or a "
            "segment-anything .pth file."
        )
    if adapters:
        from .adapters import load_adapter

        paths = [adapters] if isinstance(adapters, (str, Path)) else list(adapters)
        first = None
        for p in paths:
            name = load_adapter(backend, p)
            first = first or name
        from .adapters import set_adapter

        set_adapter(backend, first)
    return backend.eval()


def _litemedsam(dev, quantize):
    from .models.litemedsam import LiteMedSamBackend, build_litemedsam_net

    net = build_litemedsam_net(pretrained=True)
    backend = LiteMedSamBackend(net)  # identity from fp32 weights, before quantization
    if quantize:
        quantize_linear_layers(net, dev, skip=LITEMEDSAM_FP32_LAYERS)
    else:
        net.to(dev)
    backend.quantization = quantize
    return backend


# Layers MiniSAM keeps in fp32 under quantize="nf4": LiteMedSAM's, whose layers MiniSAM's are a subset of
# (benchmarks/minisam_nf4.py measures the alternatives).
MINISAM_FP32_LAYERS = LITEMEDSAM_FP32_LAYERS


def minisam_dir() -> Path:
    """The MiniSAM student's folder inside the installed package (its encoder; the decoder is LiteMedSAM's)."""
    return Path(__file__).parent / "pretrained_models" / "minisam"


def _is_minisam_folder(path: Path) -> bool:
    """A folder written by ``models.minisam_student.save_encoder`` (a MiniSAM encoder, not an HF model)."""
    from .models.minisam_student import WEIGHTS_NAME

    return (path / WEIGHTS_NAME).is_file()


def _minisam(dev, quantize, where: Path, source: str):
    from .models.minisam_student import CONFIG_NAME, WEIGHTS_NAME, MiniSamBackend, build_minisam_net

    if not (where / CONFIG_NAME).is_file() or not (where / WEIGHTS_NAME).is_file():
        raise ModelLoadError(
            f"The MiniSAM weights are missing from {where} ({CONFIG_NAME} and {WEIGHTS_NAME}); reinstall "
            "napari-qlora-minisam, or use source='litemedsam'."
        )
    # The 4-bit base keeps the whole decoder: NF4 blocks of a cut layer would group its weights differently,
    # and the shipped adapters were trained on the uncut NF4 weights (the cut saves memory in fp32, where the
    # dropped units are exactly zero; experiments/prune_minisam_decoder.py).
    net = build_minisam_net(where, cut_decoder=not quantize)
    backend = MiniSamBackend(net, source)  # identity from fp32 weights, before quantization
    if quantize:
        quantize_linear_layers(net, dev, skip=MINISAM_FP32_LAYERS)
    else:
        net.to(dev)
    backend.quantization = quantize
    return backend


def _random_hf(name, dev, quantize):
    from .models.hf_sam import HfSamBackend
    from .models.registry import RandomWeightsWarning, build_random_hf_sam, random_weights_message

    # stacklevel 3: the warning points at the caller of load_model, where the name was chosen.
    warnings.warn(random_weights_message(name), RandomWeightsWarning, stacklevel=3)
    net = build_random_hf_sam(name)
    backend = HfSamBackend(net, name)
    if quantize:
        quantize_linear_layers(net, dev)
    else:
        net.to(dev)
    backend.quantization = quantize
    return backend


def _hf_pretrained(src, where, dev, quantize):
    from transformers import SamModel

    from .models.hf_sam import HfSamBackend

    if isinstance(where, Path) and not (where / "config.json").exists():
        raise ModelLoadError(
            f"Model directory {src!r} has no config.json; point to a folder written by "
            "SamModel.save_pretrained (e.g. a minisam-train distill output)."
        )
    # a hub id: from the cache without a network call, or refused at once when it cannot be downloaded
    hub = {} if isinstance(where, Path) else pretrained_kwargs(str(where))
    try:
        # float32 whatever the stored precision: transformers would otherwise keep fp16 weights (MiniSAM ships
        # them in fp16) in fp16, which the CPU runs slowly and the fast paths do not expect.
        kwargs = {"dtype": torch.float32, **hub}
        if quantize:
            skip = _misaligned_for(where, dev, hub)
            kwargs.update(quantization_config=nf4_config(dev, skip), device_map={"": str(dev)})
        net = SamModel.from_pretrained(str(where), **kwargs)
    except OSError as exc:
        raise ModelLoadError(
            f"Could not load {src!r} with SamModel.from_pretrained ({exc}). Hub ids need network access "
            "and downloaded weights; offline, use source='litemedsam' or a local save_pretrained folder."
        ) from exc
    except Exception as exc:
        raise ModelLoadError(f"{src!r} is not a loadable SAM model ({type(exc).__name__}: {exc}).") from exc
    if quantize:
        fix_cpu_packing(net)
    else:
        net.to(dev)
    return HfSamBackend(net.eval(), src, quantization=quantize)


def _misaligned_for(where, dev, hub: dict) -> list[str]:
    """Layers transformers' single NF4 block size would quantize wrongly on ``dev`` (kept fp32 instead).

    The shapes come from the config alone: the network is built on the meta device, no weights are read.
    """
    from transformers import SamConfig, SamModel

    from .quantization import misaligned_linears

    config = SamConfig.from_pretrained(str(where), **hub)
    with torch.device("meta"):
        skeleton = SamModel(config)
    return misaligned_linears(skeleton, dev)


def _sam_checkpoint(src, path, dev, quantize):
    from .models.hf_sam import HfSamBackend
    from .models.sam_checkpoint import load_sam_checkpoint

    if not path.exists():
        raise ModelLoadError(f"Checkpoint {src!r} does not exist; check the path.")
    net = load_sam_checkpoint(path, source=src)
    backend = HfSamBackend(net, src)
    if quantize:
        quantize_linear_layers(net, dev)
    else:
        net.to(dev)
    backend.quantization = quantize
    return backend
