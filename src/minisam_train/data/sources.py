"""Several readers (COSMOS roots, volume folders) behind one list of slices."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from .errors import DataError
from .records import SliceEntry, SliceRecord


class SliceSources:
    """Concatenate readers that each offer ``entries`` and ``read(entry)``.

    Iterating gives ``(entry, reader)`` pairs so a caller can read each slice itself and decide what to do
    when one cannot be read (the evaluator reports it and goes on).
    """

    def __init__(self, readers: Sequence):
        self.readers = list(readers)
        if not self.readers:
            raise DataError("No data source configured; set data.root, data.roots or data.volumes.")
        names = [d for r in self.readers for d in r.datasets]
        dup = sorted({d for d in names if names.count(d) > 1})
        if dup:
            raise DataError(f"Dataset name(s) {dup} come from two sources; names must be unique.")

    def pairs(self) -> Iterator[tuple[SliceEntry, object]]:
        for reader in self.readers:
            for entry in reader.entries:
                yield entry, reader

    @property
    def entries(self) -> list[SliceEntry]:
        return [e for r in self.readers for e in r.entries]

    @property
    def classes(self) -> dict:
        return {d: c for r in self.readers for d, c in r.classes.items()}

    def __len__(self) -> int:
        return sum(len(r.entries) for r in self.readers)

    def __iter__(self) -> Iterator[SliceRecord]:
        for entry, reader in self.pairs():
            yield reader.read(entry)
