"""Weight averaging of SAM models that share one architecture and one starting point (a "model soup").

Models fine-tuned from the same weights tend to lie in one basin of the loss, so the average of their
weights is usually at least as good as each of them (Wortsman et al., 2022, "Model soups"): here, the
distillation stages of a chain that starts from one student. The average is a plain ``save_pretrained``
folder, loaded like any other model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from napari_qlora_minisam.errors import ModelLoadError

from .checkpointing import _fsync_dir

SUMMARY_FILE = "average_summary.json"


def average_state_dicts(states: list[dict], weights: list[float] | None = None) -> dict[str, torch.Tensor]:
    """Weighted mean of floating-point tensors (computed in fp32, stored in each tensor's dtype).

    Integer buffers (counters, indices) are taken from the first state. Raises ``ValueError`` naming the
    first key whose presence or shape differs.
    """
    if not states:
        raise ValueError("nothing to average: give at least one model")
    weights = _weights_or_uniform(weights, len(states))
    if len(weights) != len(states):
        raise ValueError(f"{len(weights)} weights for {len(states)} models")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {weights}")
    total = sum(weights)
    first = states[0]
    for i, st in enumerate(states[1:], start=1):
        if st.keys() != first.keys():
            extra = sorted(set(st) ^ set(first))[:3]
            raise ValueError(f"model {i} has different tensors than model 0 (e.g. {extra}): not one architecture")
        for k, t in st.items():
            if t.shape != first[k].shape:
                raise ValueError(f"{k}: shape {tuple(t.shape)} in model {i}, {tuple(first[k].shape)} in model 0")
    out = {}
    for k, t0 in first.items():
        if not t0.is_floating_point():
            out[k] = t0.clone()
            continue
        acc = torch.zeros(t0.shape, dtype=torch.float32)
        for w, st in zip(weights, states):
            acc.add_(st[k].detach().float().cpu(), alpha=w / total)
        out[k] = acc.to(t0.dtype)
    return out


def _weights_or_uniform(weights, n: int) -> list[float]:
    return [1.0] * n if weights is None else [float(w) for w in weights]


def _load_sam(source: Path):
    from transformers import SamModel

    if not (source / "config.json").is_file():
        raise ModelLoadError(f"{source} is not a save_pretrained folder (no config.json): cannot average it.")
    return SamModel.from_pretrained(str(source)).float().eval()


def average_models(sources: list, output_dir, weights: list[float] | None = None) -> dict:
    """Average the ``save_pretrained`` SAM folders ``sources`` into ``output_dir``; returns the summary.

    The files are written into a hidden folder inside ``output_dir`` and renamed into place once complete,
    so an interrupted run never leaves a half-written model, and a model already there is only replaced
    by a complete one.
    """
    sources = [Path(s) for s in sources]
    out = Path(output_dir)
    if len(sources) < 2:
        raise ValueError(f"average needs at least two models, got {len(sources)}")
    for s in sources:
        if out.resolve() == s.resolve():
            raise ValueError(f"output_dir {out} is one of the sources: choose a new folder, nothing was written")
    nets = [_load_sam(s) for s in sources]
    configs = [n.config.to_dict() for n in nets]
    for i, c in enumerate(configs[1:], start=1):
        if _shape_keys(c) != _shape_keys(configs[0]):
            raise ValueError(f"{sources[i]} has another configuration than {sources[0]}: not one architecture")
    merged = average_state_dicts([n.state_dict() for n in nets], weights)
    net = nets[0]
    net.load_state_dict(merged)
    out.mkdir(parents=True, exist_ok=True)  # Hydra may have made it already, for its .hydra record
    tmp = out / f".average.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    net.save_pretrained(str(tmp))
    summary = {
        "sources": [str(s) for s in sources],
        "weights": _weights_or_uniform(weights, len(sources)),
        "source_summaries": [_source_summary(s) for s in sources],
    }
    (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=str))
    # Every file is complete before it is renamed into place; the weights go last, so a folder that has
    # the new weights has the new config with them.
    for name in sorted(os.listdir(tmp), key=lambda n: n.endswith(".safetensors")):
        os.replace(tmp / name, out / name)
    tmp.rmdir()
    _fsync_dir(out)
    return summary


def _shape_keys(config: dict) -> dict:
    # Names and bookkeeping (transformers version, architectures) may differ; the shapes may not.
    drop = {"_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype", "_commit_hash"}

    def clean(d):
        return {k: clean(v) if isinstance(v, dict) else v for k, v in d.items() if k not in drop}

    return clean(config)


def _source_summary(source: Path) -> dict:
    """What each source says about how it was trained (distill summary, or a previous average's)."""
    for name in ("distill_summary.json", SUMMARY_FILE):
        f = source / name
        if f.is_file():
            data = json.loads(f.read_text())
            keep = ("steps", "train_seconds", "teacher_pass_seconds", "device", "mixed_precision", "sources")
            return {"file": name, **{k: data[k] for k in keep if k in data}}
    return {}
