"""``minisam-train eval``: the COSMOS 1050K protocol over any mix of COSMOS roots and 3D volumes.

Example:
    minisam-train eval data.root=../shared/data/cosmos_sample "models=[litemedsam]" "prompts=[box]" output_dir=out

See ``docs/evaluation.md`` for every setting and for what the outputs contain.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..data import CosmosDataset, DataError, SliceSources, VolumeDataset, split_images
from ..evaluation.evaluator import EvalOutcome, EvalSettings, Evaluator
from ..evaluation.model_entries import parse_model_entries
from ..evaluation.report import write_report

log = logging.getLogger(__name__)


def _plain(value):
    """OmegaConf containers -> plain Python (lists, dicts), anything else unchanged."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _as_list(value) -> list:
    value = _plain(value)
    if value in (None, "", []):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _modality_map(value) -> dict | None:
    """``data.modalities``: a mapping, a path to a JSON mapping, or null (use modalities.json beside the data)."""
    value = _plain(value)
    if value in (None, "", {}):
        return None
    if isinstance(value, dict):
        return {str(k): str(v).lower() for k, v in value.items()}
    path = Path(str(value))
    if not path.is_file():
        raise DataError(f"data.modalities={value!r} is neither a mapping nor an existing JSON file.")
    return {str(k): str(v).lower() for k, v in json.loads(path.read_text()).items()}


def build_sources(data_cfg, min_object_pixels: int = 50, modality: str | None = None) -> SliceSources:
    """The slices named by the ``data`` config group (COSMOS roots, split filter, volumes), optionally
    only those of one ``modality``."""
    roots = _as_list(data_cfg.get("roots")) or _as_list(data_cfg.get("root"))
    include = None
    if data_cfg.get("split_file"):
        include = split_images(data_cfg.split_file, data_cfg.get("split_key") or "test")
    readers = []
    if roots:
        readers.append(CosmosDataset(roots, split=data_cfg.get("split") or "test_data",
                                     datasets=_as_list(data_cfg.get("datasets")) or None,
                                     modalities=_modality_map(data_cfg.get("modalities")), include=include,
                                     min_object_pixels=min_object_pixels))
    volume_root = data_cfg.get("volume_root")
    volumes = _as_list(data_cfg.get("volumes"))
    if volume_root or volumes:
        readers.append(VolumeDataset(volume_root, volumes=volumes, min_object_pixels=min_object_pixels))
    return SliceSources(readers, modality=modality)


def settings_from_cfg(cfg) -> EvalSettings:
    sampling = cfg.get("sampling") or {}
    return EvalSettings(
        prompts=tuple(_as_list(cfg.prompts)),
        selections=tuple(_as_list(cfg.get("selection")) or ("oracle", "deployable")),
        sampling=str(sampling.get("mode", "official")),
        seed=int(sampling.get("seed", cfg.get("seed", 0)) or 0),
        box_jitter=int(sampling.get("box_jitter", 0) or 0),
        nsd_tolerance=float(cfg.get("nsd_tolerance", 2.0)),
        multimask_modes=tuple(_as_list(cfg.get("multimask_modes"))),
        intensity=str(cfg.get("intensity") or "minmax"),
        device=str(cfg.get("device") or "auto"),
        progress=bool(OmegaConf.select(cfg, "logging.progress", default=True)),
    )


def describe(cfg, settings: EvalSettings, sources: SliceSources) -> str:
    datasets = ", ".join(f"{d} ({n})" for d, n in _count_by_dataset(sources).items())
    return "\n".join([
        f"- data: {datasets}; split `{cfg.data.get('split')}`"
        + (f", images listed under `{cfg.data.split_key}` in `{cfg.data.split_file}`" if cfg.data.get("split_file") else ""),
        f"- prompts: {', '.join(settings.prompts)}; point sampling `{settings.sampling}`"
        + (f" (seed {settings.seed}, box jitter {settings.box_jitter} px)" if settings.sampling == "random" else
           " (deterministic: centroid, row-major stride, 2x-box negatives)"),
        f"- decoded with 3 candidates: {', '.join(m for m in settings.prompts if m in settings.multimask_modes) or 'none'};"
        " single mask: " + (", ".join(m for m in settings.prompts if m not in settings.multimask_modes) or "none"),
        f"- NSD tolerance {settings.nsd_tolerance:g} px; objects under {cfg.get('min_object_pixels', 50)} px are "
        "not evaluated on a slice; intensity policy " + f"`{settings.intensity}`",
    ])


def _count_by_dataset(sources: SliceSources) -> dict:
    counts: dict[str, int] = {}
    for e in sources.entries:
        counts[e.dataset] = counts.get(e.dataset, 0) + 1
    return counts


# Settings that change a row's value: rows written under other values must not be mixed with new ones.
SCORING_KEYS = ("sampling", "nsd_tolerance", "multimask_modes", "min_object_pixels", "intensity")


def check_resumable(cfg, out: Path) -> None:
    """Refuse to resume into ``out`` if its rows were scored with other settings (they would be mixed)."""
    previous = out / "eval_config.yaml"
    if not (previous.is_file() and (out / "per_object.csv").is_file()):
        return
    old = OmegaConf.load(previous)
    changed = [k for k in SCORING_KEYS if _plain(old.get(k)) != _plain(OmegaConf.select(cfg, k))]
    if changed:
        raise DataError(
            f"{out} holds rows scored with other settings ({', '.join(changed)} differ from {previous}); "
            "re-running would mix them. Use a new output_dir, or the old settings to resume."
        )


def run(cfg, loader=None) -> EvalOutcome:
    """Run the evaluation described by ``cfg`` (see ``conf/eval.yaml``); returns what was written."""
    settings = settings_from_cfg(cfg)
    entries = parse_model_entries(_plain(cfg.models))
    sources = build_sources(cfg.data, int(cfg.get("min_object_pixels", 50)), cfg.get("modality"))
    out = Path(str(cfg.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    check_resumable(cfg, out)
    OmegaConf.save(cfg, out / "eval_config.yaml", resolve=True)
    log.info("Evaluating %d model(s) on %d slices -> %s", len(entries), len(sources), out)
    outcome = Evaluator(sources, entries, settings, out, loader=loader).run()
    summary = write_report(out, outcome.rows, outcome.efficiency, outcome.failures, [e.name for e in entries],
                           list(settings.prompts), list(settings.selections), describe(cfg, settings, sources),
                           plots=bool(cfg.get("plots", True)))
    log.info("Wrote %s", summary)
    return outcome
