"""``per_object.csv``: one row per (model, dataset, modality, object, image, prompt, selection), appended
image by image so an interrupted run loses at most one image and a re-run resumes where it stopped.

Each image's rows are written with one ``write`` call and flushed, so a killed process leaves whole lines
(a torn last line, if the OS ever left one, is dropped when the file is read back: :func:`complete_rows`)."""

from __future__ import annotations

import csv
import io
import os
from contextlib import contextmanager
from pathlib import Path

PER_OBJECT_COLUMNS = ("model", "dataset", "modality", "object", "image", "prompt", "selection", "dice", "nsd")
FAILURE_COLUMNS = ("dataset", "image", "error")


def read_rows(path) -> list[dict]:
    """Rows of a CSV file as dicts (``dice`` / ``nsd`` as floats); empty when the file is absent."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for key in ("dice", "nsd"):
            if key in r and r[key] not in (None, ""):
                r[key] = float(r[key])
    return rows


def row_id(row: dict) -> tuple:
    """What makes a per-object row unique: (model, dataset, image, prompt, selection, object)."""
    return (row["model"], row["dataset"], row["image"], row["prompt"], row["selection"], row["object"])


def complete_rows(rows: list[dict]) -> list[dict]:
    """The rows that have every column and a number for ``dice`` and ``nsd`` (drops a torn last line)."""
    return [r for r in rows if all(r.get(k) not in (None, "") for k in PER_OBJECT_COLUMNS)
            and isinstance(r["dice"], float) and isinstance(r["nsd"], float)]


def format_rows(rows: list[dict], header: bool = False) -> str:
    """``rows`` as CSV text in :data:`PER_OBJECT_COLUMNS` order, ``dice`` / ``nsd`` with 6 decimals."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=PER_OBJECT_COLUMNS)
    if header:
        writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{r[k]:.6f}" if k in ("dice", "nsd") else r[k]) for k in PER_OBJECT_COLUMNS})
    return buf.getvalue()


def read_per_object(path) -> list[dict]:
    """The complete rows of a ``per_object.csv`` (or of a shard of it); error if its columns are others."""
    rows = read_rows(path)
    if rows and tuple(rows[0]) != PER_OBJECT_COLUMNS:
        raise ValueError(f"{path} has columns {list(rows[0])}, not {list(PER_OBJECT_COLUMNS)}; "
                         "choose another output_dir.")
    return complete_rows(rows)


class PerObjectResults:
    """Append-only ``per_object.csv`` that knows which (model, dataset, image, prompt, selection) are done.

    It keeps the done keys, not the rows (a process of a COSMOS-sized run would otherwise hold millions of
    them): per (model, dataset, image) the set of (prompt, selection) done, identical sets shared.

    Args:
        path: the file this process appends to (``per_object.csv``, or its own shard file).
        also: files whose rows count as done too (a shard's process also skips what ``per_object.csv`` holds).
    """

    def __init__(self, path, also=()):
        self.path = Path(path)
        self.done: dict[tuple, frozenset] = {}
        self._sets: dict[frozenset, frozenset] = {}
        self.count = 0  # rows in the files
        for p in (*also, self.path):
            self._add(read_per_object(p))

    def _add(self, rows) -> None:
        for r in rows:
            key = (r["model"], r["dataset"], r["image"])
            pair = (r["prompt"], r["selection"])
            old = self.done.get(key, frozenset())
            if pair not in old:
                new = old | {pair}
                self.done[key] = self._sets.setdefault(new, new)
            self.count += 1

    @staticmethod
    def key(row: dict) -> tuple:
        return (row["model"], row["dataset"], row["image"], row["prompt"], row["selection"])

    def is_done(self, model: str, dataset: str, image: str, prompt: str, selection: str) -> bool:
        return (prompt, selection) in self.done.get((model, dataset, image), ())

    def append(self, rows: list[dict]) -> None:
        """Write ``rows`` (one image's) in one call and flush, so they survive an interrupted run whole."""
        if not rows:
            return
        new_file = not self.path.is_file() or self.path.stat().st_size == 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as fh:
            fh.write(format_rows(rows, header=new_file))
        self._add(rows)


@contextmanager
def replacing(path):
    """Yield a temporary path beside ``path``; when the block ends without error, it replaces ``path`` in one
    step (``os.replace``), so readers see the old file or the new one, never a missing or half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path, text: str) -> Path:
    """Replace ``path`` with ``text`` atomically (see :func:`replacing`)."""
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_csv(path, rows: list[dict], columns) -> None:
    """Write ``rows`` to ``path`` (replacing it atomically) with the given column order."""
    with replacing(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
