"""``minisam-train eval``: the COSMOS 1050K protocol over any mix of COSMOS roots and 3D volumes.

Example:
    minisam-train eval data.root=../shared/data/cosmos_sample "models=[litemedsam]" "prompts=[box]" output_dir=out

Several processes, one per GPU (or N on the CPU), split the slices and merge their rows at the end:
    accelerate launch --num_processes 8 -m minisam_train eval <the same overrides>
    accelerate launch --multi_gpu --num_processes 2 -m minisam_train eval <the same overrides> device=cpu

See ``docs/evaluation.md`` for every setting and for what the outputs contain.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..data import CosmosDataset, DataError, SliceSources, VolumeDataset, split_images
from ..evaluation import distributed
from ..evaluation.efficiency import EFFICIENCY_COLUMNS, aggregate_row, cpu_count, new_invocation_id
from ..evaluation.evaluator import EvalOutcome, EvalSettings, Evaluator, check_model_sources
from ..evaluation.model_entries import parse_model_entries
from ..evaluation.report import write_report
from ..evaluation.results import FAILURE_COLUMNS, read_rows, replacing, write_csv
from ..evaluation.shards import SHARDS_DIR, merge_rows, read_shards, remove_shards, shard_files

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
        everything=_plain(cfg.get("everything")) or {},
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
        " single mask: " + (", ".join(single_mask_modes(settings)) or "none"),
        *([f"- everything (S1): one automatic segmentation per slice, each object scored against its best-Dice "
           f"mask (oracle only); settings {_everything_text(settings)}"] if "everything" in settings.prompts else []),
        f"- NSD tolerance {settings.nsd_tolerance:g} px; objects under {cfg.get('min_object_pixels', 50)} px are "
        "not evaluated on a slice; intensity policy " + f"`{settings.intensity}`",
    ])


def _everything_text(settings: EvalSettings) -> str:
    from ..evaluation.evaluator import EVERYTHING_DEFAULTS

    return ", ".join(f"{k}={v}" for k, v in {**EVERYTHING_DEFAULTS, **settings.everything}.items())


def _count_by_dataset(sources: SliceSources) -> dict:
    counts: dict[str, int] = {}
    for e in sources.entries:
        counts[e.dataset] = counts.get(e.dataset, 0) + 1
    return counts


# Settings that change a row's value: rows written under other values must not be mixed with new ones.
SCORING_KEYS = ("sampling", "nsd_tolerance", "multimask_modes", "min_object_pixels", "intensity", "everything")


def check_resumable(cfg, out: Path) -> None:
    """Refuse to resume into ``out`` if its rows were scored with other settings (they would be mixed)."""
    previous = out / "eval_config.yaml"
    if not (previous.is_file() and ((out / "per_object.csv").is_file() or shard_files(out, "per_object"))):
        return
    old = OmegaConf.load(previous)
    # a run folder from before S1 existed has no `everything` group and no everything rows: nothing to mix
    changed = [k for k in SCORING_KEYS if _plain(old.get(k)) != _plain(OmegaConf.select(cfg, k))
               and not (k == "everything" and old.get(k) is None)]
    if changed:
        raise DataError(
            f"{out} holds rows scored with other settings ({', '.join(changed)} differ from {previous}); "
            "re-running would mix them. Use a new output_dir, or the old settings to resume."
        )


def _clean_up_failed(out: Path, missing: list[Path], had_config: bool) -> None:
    """After a failed run that wrote no row: take back what this run created (a bad data root or model must
    not leave an empty ``output_dir`` behind). ``missing``: ``output_dir`` and its parents that did not exist
    before (deepest first). A folder with results (rows a rerun resumes from, or ``failures.csv`` that the
    error points to) is left alone. (Under the command line, Hydra makes the run folder before the task
    starts; ``minisam_train.cli`` removes it when it holds nothing but Hydra's records.)"""
    if any((out / name).exists() for name in ("per_object.csv", "failures.csv", "efficiency.csv", SHARDS_DIR)):
        return
    if not had_config:
        (out / "eval_config.yaml").unlink(missing_ok=True)
    if missing and missing[0] == out:
        shutil.rmtree(out, ignore_errors=True)
        for parent in missing[1:]:
            try:
                parent.rmdir()  # only when empty
            except OSError:
                break


def run(cfg, loader=None) -> EvalOutcome:
    """Run the evaluation described by ``cfg`` (see ``conf/eval.yaml``); returns what was written.

    Everything that can be checked without a model (settings, model sources, data, resumability) is checked
    before ``output_dir`` is touched; if the run fails before it wrote a result, the folder is removed again.

    Under ``accelerate launch`` every process runs this: they agree on the main process's ``output_dir`` (a
    ``${now:...}`` folder name can differ by a second between processes) and invocation id, the main process
    folds rows left by an interrupted run into ``per_object.csv``, each process evaluates its share of the
    slices (:mod:`~minisam_train.evaluation.shards`), and the main process merges the shards and writes the
    report. A plain command is process 0 of 1 and starts nothing distributed.
    """
    procs = distributed.start()
    hydra_out = Path(str(cfg.output_dir))
    agreed, invocation = procs.share((str(hydra_out), new_invocation_id()))
    out = Path(agreed)
    if out != hydra_out:
        _drop_hydra_folder(hydra_out)
    missing = [p for p in (out, *out.parents) if not p.exists()]
    had_config = (out / "eval_config.yaml").exists()
    saved_threads = torch_threads()
    try:
        settings = settings_from_cfg(cfg)
        settings = replace(settings, device=distributed.process_device(settings.device, procs))
        threads = distributed.choose_threads(cfg.get("threads"), settings.device, procs, cpu_count())
        if threads is not None:
            set_torch_threads(threads)
        _log_process(procs, settings.device)
        entries = parse_model_entries(_plain(cfg.models))
        check_model_sources(entries)
        sources = build_sources(cfg.data, int(cfg.get("min_object_pixels", 50)), cfg.get("modality"))
        check_resumable(cfg, out)
        names, units = [e.name for e in entries], _units(sources)
        if procs.is_main:
            out.mkdir(parents=True, exist_ok=True)
            with replacing(out / "eval_config.yaml") as tmp:
                OmegaConf.save(cfg, tmp, resolve=True)
            # Rows that an interrupted run (of any process count) left in shards join per_object.csv first,
            # so that every process sees the same rows and deals out the same missing slices.
            merge_rows(out, names, units, settings.prompts)
            remove_shards(out, ("efficiency", "failures"))  # timings and failures of an unfinished run
            log.info("Evaluating %d model(s) on %d slices -> %s%s", len(entries), len(sources), out,
                     f" with {procs.world} processes" if procs.world > 1 else "")
        procs.barrier()
        outcome = Evaluator(sources, entries, settings, out, loader=loader, invocation=invocation,
                            shard=(procs.rank, procs.world)).run()
        procs.barrier()
        if not procs.is_main:
            return outcome
        outcome = _merge(out, outcome, entries, settings, units, procs.world)
    except BaseException:
        if procs.is_main:
            _clean_up_failed(out, missing, had_config)
        raise
    finally:
        set_torch_threads(saved_threads)
    summary = write_report(out, outcome.rows, outcome.efficiency, outcome.failures, names,
                           list(settings.prompts), list(settings.selections), describe(cfg, settings, sources),
                           plots=bool(cfg.get("plots", True)), single_mask=single_mask_modes(settings),
                           current_invocation=invocation)
    log.info("Wrote %s", summary)
    return outcome


def _units(sources: SliceSources) -> list[tuple]:
    """(dataset, image) of every slice, in the order of the data (the canonical row order follows it)."""
    return [(e.dataset, e.image_name) for e in sources.entries]


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def set_torch_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _log_process(procs, device: str) -> None:
    """Say where this process runs, so that a launch that started fewer processes than meant is seen."""
    log.info("process %d of %d on %s, %d torch thread(s)", procs.rank, procs.world, device, torch_threads())
    # accelerate's simple launcher sets MASTER_ADDR only when it was given several processes, and then
    # starts one (with --cpu and no MPI hostfile, or without --multi_gpu where there is no GPU).
    if procs.world == 1 and distributed.launched_by_accelerate() and "MASTER_ADDR" in os.environ:
        log.warning("accelerate launch was given several processes but started only this one (it does so with "
                    "--cpu unless an MPI hostfile is given, and without --multi_gpu where there is no GPU). For N "
                    "processes on the CPU: accelerate launch --multi_gpu --num_processes N -m minisam_train eval "
                    "... device=cpu")


def _drop_hydra_folder(path: Path) -> None:
    """A process other than the main one resolved ``${now:...}`` to another second: its Hydra run folder is
    not the run's; remove it if it holds nothing but Hydra's records (``python -m minisam_train`` keeps them
    out of it on such processes)."""
    if not path.is_dir():
        return
    records = [p for p in path.iterdir()]
    if all(p.name == ".hydra" or p.suffix == ".log" for p in records):
        shutil.rmtree(path, ignore_errors=True)


def _merge(out: Path, outcome: EvalOutcome, entries, settings: EvalSettings, units: list,
           world: int) -> EvalOutcome:
    """The main process, after every process is done: one ``per_object.csv`` (shards folded in, canonical
    order), ``efficiency.csv`` (the rows timed now replace the models' older ones; with several processes one
    row per process and model plus the ``all`` row) and ``failures.csv`` (this run's)."""
    names = [e.name for e in entries]
    rows = merge_rows(out, names, units, settings.prompts)
    if world > 1:
        timed = read_shards(out, "efficiency")
        position = {u: i for i, u in enumerate(units)}
        failures = sorted(read_shards(out, "failures"),
                          key=lambda f: position.get((f["dataset"], f["image"]), len(position)))
    else:
        timed, failures = list(outcome.efficiency), list(outcome.failures)
    order = {n: i for i, n in enumerate(names)}
    previous = read_rows(out / "efficiency.csv")
    eff = []
    for name in names:
        own = [r for r in timed if r["model"] == name]
        if own:  # timed now: this run's rows replace the model's older ones
            eff += own + ([aggregate_row(own)] if world > 1 else [])
        else:
            eff += [r for r in previous if r["model"] == name]
    write_csv(out / "efficiency.csv", eff + [r for r in previous if r["model"] not in order], EFFICIENCY_COLUMNS)
    write_csv(out / "failures.csv", failures, FAILURE_COLUMNS)
    remove_shards(out)
    keep_prompts, keep_sel = set(settings.prompts), set(settings.selections)
    current = [r for r in rows if r["model"] in order and r["prompt"] in keep_prompts
               and r["selection"] in keep_sel]
    if not current:
        first = ""
        if failures:
            f = failures[0]
            first = f" (first: {f['dataset']}/{f['image']}: {f['error']})"
        raise DataError(f"Nothing was evaluated: {len(failures)} of {len(units)} slices failed{first} and no "
                        f"slice had an object of the minimum size. See failures.csv in {out}.")
    return EvalOutcome(out, current, eff, failures, outcome.images_embedded)


def single_mask_modes(settings: EvalSettings) -> tuple:
    """The prompt modes of ``settings`` decoded with one mask (oracle = deployable)."""
    return tuple(p for p in settings.prompts if p not in settings.multimask_modes and p != "everything")


def rewrite_report(output_dir, plots: bool | None = None):
    """Rewrite ``summary.md``, ``summary.csv`` and the plots of a finished run from its files alone
    (``eval_config.yaml``, ``per_object.csv``, ``efficiency.csv``, ``failures.csv``): no model is loaded. The
    data named in ``eval_config.yaml`` must still be readable (for the slice counts of the settings line).
    ``plots``: default as in ``eval_config.yaml``. Used to regenerate the shipped reports in ``docs/eval/``
    after a change of the report format."""
    out = Path(output_dir)
    cfg = OmegaConf.load(out / "eval_config.yaml")
    settings = settings_from_cfg(cfg)
    names = [e.name for e in parse_model_entries(_plain(cfg.models))]
    sources = build_sources(cfg.data, int(cfg.get("min_object_pixels", 50)), cfg.get("modality"))
    rows = [r for r in read_rows(out / "per_object.csv") if r["model"] in names
            and r["prompt"] in settings.prompts and r["selection"] in settings.selections]
    eff = read_rows(out / "efficiency.csv")
    eff = [r for n in names for r in eff if r["model"] == n]
    return write_report(out, rows, eff, read_rows(out / "failures.csv"), names,
                        list(settings.prompts), list(settings.selections), describe(cfg, settings, sources),
                        plots=bool(cfg.get("plots", True)) if plots is None else plots,
                        single_mask=single_mask_modes(settings))
