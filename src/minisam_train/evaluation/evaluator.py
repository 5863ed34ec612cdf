"""The evaluation loop: every model x every slice x every prompt mode, scored per object.

Order of work (why): models are the outer loop so only one network is in memory at a time; each slice is
embedded once per model and all prompt modes reuse that embedding; all objects of a slice that share a
prompt shape go through the decoder in one batch. Rows are appended to ``per_object.csv`` slice by slice,
so a re-run into the same folder skips what is done (and does not even load a model whose rows are all
there).

Several processes (``accelerate launch``): each evaluator gets ``shard=(rank, N)``, deals the slices that
still have rows to compute round-robin (:func:`~.shards.assign`) and keeps its own, appends to its own shard
file and writes its timings and failures to shard files for the main process to merge (see ``shards``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_qlora_minisam.errors import InputError, ModelLoadError

from ..data.errors import DataError
from .efficiency import EFFICIENCY_COLUMNS, ModelTimer, new_invocation_id
from .metrics import dice_score, normalized_surface_dice
from .model_entries import ModelEntry, load_entry
from .point_sampling import PROMPT_MODES, SAMPLING_MODES, make_prompt, prompt_rng
from .results import FAILURE_COLUMNS, PerObjectResults, write_csv
from .shards import assign, shard_path

log = logging.getLogger(__name__)

SELECTIONS = ("oracle", "deployable")
# COSMOS S1: one automatic segmentation per slice, each object scored against its best-matching mask. There
# is no per-object prompt, hence no deployable choice: its rows are ``oracle`` only.
EVERYTHING = "everything"
EVAL_MODES = (EVERYTHING, *PROMPT_MODES)
EVERYTHING_DEFAULTS = {"mode": "auto", "points_per_side": 16, "pred_iou_thresh": 0.5, "stability_thresh": 0.7,
                       "nms_iou": 0.7, "min_area": 50, "batch": 64}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class EvalSettings:
    """How prompts are made and masks are scored.

    Attributes:
        prompts: prompt modes (:data:`~.point_sampling.PROMPT_MODES`).
        selections: ``oracle`` (best Dice of the candidates) and/or ``deployable`` (highest predicted IoU).
        sampling: ``official`` or ``random``; ``seed`` and ``box_jitter`` (pixels) apply to ``random``.
        nsd_tolerance: NSD tolerance in pixels.
        multimask_modes: modes decoded with 3 candidate masks. The others (default: the box modes, as in
            the reference numbers) give a single mask, which is then both the oracle and the deployable one.
        intensity: the predictor's intensity policy.
        device: ``auto``, ``cpu``, ``cuda``...
        progress: show a tqdm bar.
        everything: keyword arguments of :func:`napari_qlora_minisam.everything.segment_everything` for the
            ``everything`` mode (S1); missing keys take :data:`EVERYTHING_DEFAULTS`.
    """

    prompts: tuple = ("box",)
    selections: tuple = SELECTIONS
    sampling: str = "official"
    seed: int = 0
    box_jitter: int = 0
    nsd_tolerance: float = 2.0
    multimask_modes: tuple = ("point1", "point5", "point5neg5")
    intensity: str = "minmax"
    device: str = "auto"
    progress: bool = True
    everything: dict = field(default_factory=dict)

    def __post_init__(self):
        bad = [p for p in self.prompts if p not in EVAL_MODES]
        if bad or not self.prompts:
            raise ValueError(f"Unknown prompt mode(s) {bad}; choose from {', '.join(EVAL_MODES)}.")
        bad = sorted(set(self.everything) - set(EVERYTHING_DEFAULTS))
        if bad:
            raise ValueError(f"Unknown everything setting(s) {bad}; allowed: {', '.join(EVERYTHING_DEFAULTS)}.")
        bad = [s for s in self.selections if s not in SELECTIONS]
        if bad or not self.selections:
            raise ValueError(f"Unknown selection(s) {bad}; choose from {', '.join(SELECTIONS)}.")
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"Unknown sampling {self.sampling!r}; choose 'official' or 'random'.")
        if self.nsd_tolerance < 0 or self.box_jitter < 0:
            raise ValueError("nsd_tolerance and box_jitter must not be negative.")


@dataclass
class EvalOutcome:
    """What a run produced (also on disk in ``output_dir``).

    From :meth:`Evaluator.run`: no rows (they are in the files), the efficiency rows this process timed, the
    slices it could not read and the images it embedded per model. From ``tasks.evaluate.run`` (the main
    process): every row of the configuration after the merge, and the efficiency rows and failures of the
    whole run (``images_embedded`` stays the main process's own).
    """

    output_dir: Path
    rows: list = field(default_factory=list)
    efficiency: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    images_embedded: dict = field(default_factory=dict)


def check_model_sources(entries: Sequence[ModelEntry]) -> None:
    """Fail before any work if a source or adapter folder cannot exist (``load_model`` would fail later)."""
    from napari_qlora_minisam.models.registry import HF_SPECS, available_sources, named_model, renamed_spec_message

    for e in entries:
        src = e.source.strip()
        known = named_model(src) is not None or src in HF_SPECS
        if not known and renamed_spec_message(src) and not Path(src).expanduser().exists():
            raise ModelLoadError(f"Model {e.name!r}: {renamed_spec_message(src)}")
        if not (known or Path(src).expanduser().exists() or _HUB_ID.match(src)):
            raise ModelLoadError(
                f"Unknown model source {src!r} (model {e.name!r}): not a known name, an existing folder or a "
                f"checkpoint file. Known names: {', '.join(available_sources())}."
            )
        for a in e.adapters:
            if not Path(a).expanduser().is_dir():
                raise ModelLoadError(f"Adapter folder {a!r} of model {e.name!r} does not exist.")


def score_candidates(masks: np.ndarray, scores: np.ndarray, gt: np.ndarray, selections, tolerance: float) -> dict:
    """Pick and score one mask per selection rule from ``masks (M, H, W)`` with predicted IoUs ``scores (M,)``.

    Returns:
        selection -> (dice, nsd).
    """
    dices = [dice_score(m, gt) for m in masks]
    chosen = {"oracle": int(np.argmax(dices)), "deployable": int(np.argmax(scores))}
    nsd_of = {}
    out = {}
    for sel in selections:
        i = chosen[sel]
        if i not in nsd_of:
            nsd_of[i] = normalized_surface_dice(masks[i], gt, tolerance)
        out[sel] = (dices[i], nsd_of[i])
    return out


class Evaluator:
    """Runs the protocol over ``sources`` (a :class:`~minisam_train.data.SliceSources`) for ``entries``.

    Args:
        sources: the slices.
        entries: the models.
        settings: prompts, selection, sampling, tolerance, device.
        output_dir: where ``per_object.csv``, ``efficiency.csv`` and ``failures.csv`` go.
        loader: ``ModelEntry -> backend``; tests can inject a stub.
        invocation: id written into the efficiency rows timed by this run (default: start time + random tag).
        shard: ``(rank, N)``: this process's part of the work. With ``N > 1`` rows go to
            ``shards/per_object.<rank>-of-<N>.csv`` (``per_object.csv`` is read, never written), and the
            efficiency rows and failures to their shard files; with ``N == 1`` rows are appended to
            ``per_object.csv`` and the caller writes ``efficiency.csv`` and ``failures.csv``.
    """

    def __init__(self, sources, entries: Sequence[ModelEntry], settings: EvalSettings, output_dir,
                 loader: Callable | None = None, invocation: str | None = None, shard: tuple = (0, 1)):
        self.invocation = invocation or new_invocation_id()
        self.sources = sources
        self.entries = list(entries)
        self.settings = settings
        self.output_dir = Path(output_dir)
        self.loader = loader or (lambda e: load_entry(e, settings.device))
        self.rank, self.world = int(shard[0]), int(shard[1])
        assign([], self.rank, self.world)  # checks the shard
        main = self.output_dir / "per_object.csv"
        if self.world == 1:
            self.results = PerObjectResults(main)
        else:
            self.results = PerObjectResults(shard_path(self.output_dir, "per_object", self.rank, self.world),
                                            also=[main])
        self.failures: dict[tuple, dict] = {}

    # -- bookkeeping --------------------------------------------------------------------------------
    def _selections(self, mode: str) -> tuple:
        """The selections scored for ``mode``: ``everything`` has only ``oracle`` (best match per object)."""
        return ("oracle",) if mode == EVERYTHING else self.settings.selections

    def _todo_modes(self, model: str, entry) -> list[str]:
        s = self.settings
        return [p for p in s.prompts
                if not all(self.results.is_done(model, entry.dataset, entry.image_name, p, sel)
                           for sel in self._selections(p))]

    def _fail(self, entry, exc: Exception) -> None:
        key = (entry.dataset, entry.image_name)
        if key not in self.failures:
            self.failures[key] = {"dataset": entry.dataset, "image": entry.image_name, "error": str(exc)}
            msg = f"Skipping {entry.dataset}/{entry.image_name}: {exc}"
            log.warning(msg)
            try:
                from tqdm import tqdm

                tqdm.write(msg)
            except ImportError:  # pragma: no cover - tqdm is a dependency
                print(msg)

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> EvalOutcome:
        from napari_qlora_minisam.embedding_cache import EmbeddingCache
        from napari_qlora_minisam.predictor import MiniSamPredictor
        from tqdm import tqdm

        check_model_sources(self.entries)
        pairs = list(self.sources.pairs())
        efficiency, embedded = {}, {}
        for entry_model in self.entries:
            name = entry_model.name
            todo = assign([(e, reader) for e, reader in pairs if self._todo_modes(name, e)], self.rank, self.world)
            embedded[name] = 0
            if not todo:
                log.info("%s: every row is already in per_object.csv%s; nothing to do.", name,
                         f" for process {self.rank} of {self.world}" if self.world > 1 else "")
                continue
            backend = self.loader(entry_model)
            # Small cache: each slice is embedded once and used by every prompt mode right away.
            predictor = MiniSamPredictor(backend, intensity=self.settings.intensity,
                                         cache=EmbeddingCache(max_bytes=64 << 20))
            timer = ModelTimer(device=str(backend.device), invocation=self.invocation, process=self.rank,
                               processes=self.world)
            timer.start()
            desc = f"eval {name}" + (f" [{self.rank}/{self.world}]" if self.world > 1 else "")
            bar = tqdm(todo, desc=desc, unit="slice", disable=not self.settings.progress, dynamic_ncols=True,
                       position=self.rank if self.world > 1 else None)
            for entry, reader in bar:
                try:
                    record = reader.read(entry)
                except DataError as exc:
                    self._fail(entry, exc)
                    continue
                if not record.objects:
                    continue
                try:
                    misses = predictor.cache.misses
                    with timer.encoder():
                        predictor.set_image(record.image)
                    if predictor.cache.misses == misses:  # identical pixels seen before: not an encoder run
                        timer.discard_last_encoder()
                    else:
                        embedded[name] += 1
                except InputError as exc:
                    self._fail(entry, exc)
                    continue
                rows = []
                for mode in self._todo_modes(name, entry):
                    rows += self._score_mode(predictor, timer, name, record, mode)
                self.results.append(rows)
                timer.slices += 1
                bar.set_postfix(rows=self.results.count, failed=len(self.failures))
            bar.close()
            timer.finish()
            if timer.encoder_s:
                efficiency[name] = timer.row(name, backend)
            del predictor, backend
        eff_rows = [efficiency[e.name] for e in self.entries if e.name in efficiency]
        failures = list(self.failures.values())
        if self.world > 1:
            write_csv(shard_path(self.output_dir, "efficiency", self.rank, self.world), eff_rows,
                      EFFICIENCY_COLUMNS)
            write_csv(shard_path(self.output_dir, "failures", self.rank, self.world), failures, FAILURE_COLUMNS)
        return EvalOutcome(self.output_dir, [], eff_rows, failures, embedded)

    def _score_everything(self, predictor, timer, model: str, record) -> list[dict]:
        """S1: segment the slice once, then score each object against the predicted mask of best Dice."""
        from napari_qlora_minisam.everything import segment_everything

        s = self.settings
        kwargs = {**EVERYTHING_DEFAULTS, **s.everything}
        # Not added to the decoder timing: its filters and NMS would inflate "decoder ms per prompt".
        found = segment_everything(predictor, record.image, **kwargs)
        rows = []
        for obj, gt in record.objects.items():
            if found:
                masks = np.stack([f["mask"] for f in found])
                (d, nsd), = score_candidates(masks, np.zeros(len(found)), gt, ("oracle",), s.nsd_tolerance).values()
            else:  # nothing passed the filters: the object is missed
                d, nsd = 0.0, 0.0
            rows.append({"model": model, "dataset": record.dataset, "modality": record.modality, "object": obj,
                         "image": record.image_name, "prompt": EVERYTHING, "selection": "oracle",
                         "dice": float(d), "nsd": float(nsd)})
        return rows

    def _score_mode(self, predictor, timer, model: str, record, mode: str) -> list[dict]:
        s = self.settings
        if mode == EVERYTHING:
            return self._score_everything(predictor, timer, model, record)
        names = list(record.objects)
        prompts = {}
        for obj in names:
            rng = prompt_rng(s.seed, record.dataset, record.image_name, obj, mode) if s.sampling == "random" else None
            prompts[obj] = make_prompt(record.objects[obj], mode, s.sampling, rng, s.box_jitter)
        # One decoder batch per prompt shape (point counts can differ when a box has few negatives).
        groups: dict[int, list[str]] = {}
        for obj in names:
            n = 0 if prompts[obj].points is None else len(prompts[obj].points)
            groups.setdefault(n, []).append(obj)
        multimask = mode in s.multimask_modes
        rows = []
        for n_points, objs in groups.items():
            ps = [prompts[o] for o in objs]
            boxes = np.stack([p.box for p in ps]) if ps[0].box is not None else None
            points = np.stack([p.points for p in ps]) if n_points else None
            labels = np.stack([p.labels for p in ps]) if n_points else None
            with timer.decoder(len(objs)):
                masks, scores, _ = predictor.predict_batch(boxes=boxes, points=points, point_labels=labels,
                                                           multimask=multimask)
            for b, obj in enumerate(objs):
                scored = score_candidates(masks[b], scores[b], record.objects[obj], s.selections, s.nsd_tolerance)
                for sel, (d, nsd) in scored.items():
                    rows.append({"model": model, "dataset": record.dataset, "modality": record.modality,
                                 "object": obj, "image": record.image_name, "prompt": mode, "selection": sel,
                                 "dice": float(d), "nsd": float(nsd)})
        return rows
