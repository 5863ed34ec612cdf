"""Several readers (COSMOS roots, volume folders) behind one list of slices."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from .errors import DataError
from .records import SliceEntry, SliceRecord


class SliceSources:
    """Concatenate readers that each offer ``entries`` and ``read(entry)``.

    Iterating gives ``(entry, reader)`` pairs so a caller can read each slice itself and decide what to do
    when one cannot be read (the evaluator reports it and goes on).

    Args:
        readers: the readers.
        modality: keep only slices of this modality (``--modality ct``); ``None`` keeps all.
    """

    def __init__(self, readers: Sequence, modality: str | None = None):
        self.readers = list(readers)
        self.modality = str(modality).lower() if modality else None
        if not self.readers:
            raise DataError("No data source configured; set data.root, data.roots or data.volumes.")
        if self.modality and not self.entries:
            found = sorted({e.modality for r in self.readers for e in r.entries})
            raise DataError(f"No slice has modality {self.modality!r}; the data holds {found}.")
        names = [d for r in self.readers for d in r.datasets]
        dup = sorted({d for d in names if names.count(d) > 1})
        if dup:
            raise DataError(f"Dataset name(s) {dup} come from two sources; names must be unique.")

    def pairs(self) -> Iterator[tuple[SliceEntry, object]]:
        for reader in self.readers:
            for entry in reader.entries:
                if self.modality is None or entry.modality == self.modality:
                    yield entry, reader

    @property
    def entries(self) -> list[SliceEntry]:
        return [e for e, _ in self.pairs()]

    @property
    def classes(self) -> dict:
        return {d: c for r in self.readers for d, c in r.classes.items()}

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[SliceRecord]:
        for entry, reader in self.pairs():
            yield reader.read(entry)
