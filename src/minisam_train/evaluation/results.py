"""``per_object.csv``: one row per (model, dataset, modality, object, image, prompt, selection), appended
image by image so an interrupted run loses at most one image and a re-run resumes where it stopped."""

from __future__ import annotations

import csv
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


class PerObjectResults:
    """Append-only ``per_object.csv`` that knows which (model, dataset, image, prompt, selection) are done."""

    def __init__(self, path):
        self.path = Path(path)
        self.rows = read_rows(self.path)
        if self.rows and tuple(self.rows[0]) != PER_OBJECT_COLUMNS:
            raise ValueError(f"{self.path} has columns {list(self.rows[0])}, not {list(PER_OBJECT_COLUMNS)}; "
                             "choose another output_dir.")
        self.done = {self.key(r) for r in self.rows}

    @staticmethod
    def key(row: dict) -> tuple:
        return (row["model"], row["dataset"], row["image"], row["prompt"], row["selection"])

    def is_done(self, model: str, dataset: str, image: str, prompt: str, selection: str) -> bool:
        return (model, dataset, image, prompt, selection) in self.done

    def append(self, rows: list[dict]) -> None:
        """Write ``rows`` and flush, so they survive an interrupted run."""
        if not rows:
            return
        new_file = not self.path.is_file() or self.path.stat().st_size == 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=PER_OBJECT_COLUMNS)
            if new_file:
                writer.writeheader()
            for r in rows:
                writer.writerow({k: (f"{r[k]:.6f}" if k in ("dice", "nsd") else r[k]) for k in PER_OBJECT_COLUMNS})
        for r in rows:
            self.rows.append(dict(r))
            self.done.add(self.key(r))


def write_csv(path, rows: list[dict], columns) -> None:
    """Write ``rows`` to ``path`` (replacing it) with the given column order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
