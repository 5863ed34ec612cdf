"""Several processes on one evaluation: who does which slice, and one set of files at the end.

Work is split by unit, a (dataset, image) slice: for each model, the slices that still have rows to compute,
in the order of the data (datasets, then images, as the readers list them), are dealt round-robin, slice
``i`` to process ``i % N`` (:func:`assign`). All processes read the same rows before they start, so they
agree on that list without talking; each slice goes to exactly one process, which embeds it once per model
and scores every prompt mode on it. Prompts do not depend on the order of work (official prompts are
deterministic, random ones are seeded per dataset, image, object and mode), so a slice gets the same
prompts whichever process scores it.

Files, in ``output_dir``:

- ``shards/per_object.<rank>-of-<N>.csv``: each process appends its rows to its own file, image by image;
- ``shards/efficiency.<rank>-of-<N>.csv``, ``shards/failures.<rank>-of-<N>.csv``: its timings and the slices
  it could not read, written when it is done.

At the end the main process merges ``per_object.csv`` and every ``per_object`` shard (any ``N``: a rerun
with another process count also picks up the shards of an interrupted run) into ``per_object.csv``, rows in
the canonical order (:func:`canonical_order`, which does not depend on ``N``: a one-process run writes the
same file), replaces it atomically and only then deletes the merged shards.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from .results import format_rows, read_per_object, read_rows, replacing, row_id

SHARDS_DIR = "shards"
KINDS = ("per_object", "efficiency", "failures")
_SHARD_NAME = re.compile(r"^(?P<kind>[a-z_]+)\.(?P<rank>\d+)-of-(?P<world>\d+)\.csv$")


def assign(units: Sequence, rank: int, world: int) -> list:
    """The units of process ``rank`` of ``world``: every ``world``-th, from the ``rank``-th (round robin).

    Deterministic, disjoint across ranks and together covering ``units``; neighbours (the slices of one
    dataset) are spread over all processes, so each gets a similar mix of image sizes and object counts.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"process {rank} of {world} does not exist")
    return list(units)[rank::world]


def shard_path(output_dir, kind: str, rank: int, world: int) -> Path:
    """``output_dir/shards/<kind>.<rank>-of-<world>.csv``."""
    if kind not in KINDS:
        raise ValueError(f"unknown shard kind {kind!r}")
    return Path(output_dir) / SHARDS_DIR / f"{kind}.{rank}-of-{world}.csv"


def shard_files(output_dir, kind: str) -> list[Path]:
    """Every shard file of ``kind`` in ``output_dir``, whatever process count wrote it, sorted by name."""
    folder = Path(output_dir) / SHARDS_DIR
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        m = _SHARD_NAME.match(p.name)
        if m and m["kind"] == kind:
            out.append((int(m["world"]), int(m["rank"]), p))
    return [p for _, _, p in sorted(out)]


def read_shards(output_dir, kind: str) -> list[dict]:
    """The rows of every ``kind`` shard file (per-object rows: the complete ones only)."""
    reader = read_per_object if kind == "per_object" else read_rows
    return [r for p in shard_files(output_dir, kind) for r in reader(p)]


def remove_shards(output_dir, kinds: Sequence[str] = KINDS) -> None:
    """Delete the shard files of ``kinds``, and the ``shards`` folder once it is empty."""
    for kind in kinds:
        for p in shard_files(output_dir, kind):
            p.unlink(missing_ok=True)
    try:
        (Path(output_dir) / SHARDS_DIR).rmdir()
    except OSError:
        pass


def canonical_order(rows: Sequence[dict], models: Sequence[str], units: Sequence[tuple],
                    prompts: Sequence[str]) -> list[dict]:
    """``rows`` sorted by (model in the order of ``models``, slice in the order of ``units``, prompt mode in
    the order of ``prompts``); rows of one (model, slice, mode) keep their order (one process computed them
    together, in the order of the slice's objects). Rows of models, slices or modes not listed (earlier runs
    into the same folder) follow, in their order. This is the order in which one process computes a fresh
    run, so a one-process run's file needs no rewriting and an N-process run's merged file is the same."""
    m_pos = {m: i for i, m in enumerate(models)}
    u_pos = {tuple(u): i for i, u in enumerate(units)}
    p_pos = {p: i for i, p in enumerate(prompts)}

    def key(r):
        return (m_pos.get(r["model"], len(m_pos)), u_pos.get((r["dataset"], r["image"]), len(u_pos)),
                p_pos.get(r["prompt"], len(p_pos)))

    return sorted(rows, key=key)


def merge_rows(output_dir, models: Sequence[str], units: Sequence[tuple], prompts: Sequence[str]) -> list[dict]:
    """Fold every ``per_object`` shard into ``per_object.csv``: duplicates dropped (first kept: a row of
    ``per_object.csv`` over a shard's), rows in :func:`canonical_order`. ``per_object.csv`` is replaced in
    one step and the shards are deleted after that, so an interruption at any point loses no row (a rerun
    merges again). The file is left untouched when nothing changes. Returns all rows of the merged file."""
    out = Path(output_dir)
    main = read_per_object(out / "per_object.csv")
    shards = shard_files(out, "per_object")
    rows, seen = [], set()
    for r in main + [r for p in shards for r in read_per_object(p)]:
        k = row_id(r)
        if k not in seen:
            seen.add(k)
            rows.append(r)
    ordered = canonical_order(rows, models, units, prompts)
    if ordered and (shards or len(ordered) != len(main) or any(a is not b for a, b in zip(ordered, main))):
        with replacing(out / "per_object.csv") as tmp, tmp.open("w", newline="") as fh:
            fh.write(format_rows(ordered, header=True))
    for p in shards:
        p.unlink(missing_ok=True)
    return ordered
