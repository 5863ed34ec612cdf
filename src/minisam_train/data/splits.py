"""``splits.json``: patient-level splits per dataset (``{dataset: {"root": ..., "adapt_train": [...], "test": [...]}}``).

The shared file has no validation split; :data:`VAL_SPLIT_FILE` is the project's copy with a ``val`` key
(:func:`derive_val_split`), so that ``split_images(VAL_SPLIT_FILE, "val")`` lists the images to choose on.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .errors import DataError


def read_splits(path) -> dict:
    """The whole splits file as a dict, or a :class:`DataError` naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Split file {path} does not exist; pass data.split_file=PATH/splits.json or null.")
    try:
        splits = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"Split file {path} is not valid JSON ({exc}).") from exc
    if not isinstance(splits, dict):
        raise DataError(f"Split file {path} must map dataset names to {{split key: [image names]}}.")
    return splits


def split_images(path, key: str = "test") -> dict[str, set[str]]:
    """Dataset -> set of image file names listed under ``key`` (e.g. ``test`` or ``adapt_train``).

    Raises:
        DataError: the file is missing or malformed, or no dataset has the key.
    """
    splits = read_splits(path)
    keep = {ds: set(parts[key]) for ds, parts in splits.items() if isinstance(parts, dict) and key in parts}
    if not keep:
        keys = sorted({k for p in splits.values() if isinstance(p, dict) for k in p if k != "root"})
        raise DataError(f"No dataset in {path} has a split {key!r}; keys found: {keys}.")
    return keep


# The project's own split file: the shared splits.json plus a `val` key carved out of `adapt_train`
# (derive_val_split). Model selection — stages, checkpoints, averages — is made on `val`; `test` is scored once.
VAL_SPLIT_FILE = Path(__file__).resolve().parents[1] / "conf" / "splits_val.json"
VAL_FRACTION = 0.25


def patient_id(dataset: str, image_name: str) -> str:
    """The patient (or source volume) an image of ``dataset`` comes from, read from its COSMOS file name.

    ``22_Heart_2_10.png`` -> ``2`` and ``6_Pancreas_10_43_0.png`` -> ``10`` (COSMOS case numbers come first);
    ``90_LungTumour_lung1_32.png`` -> ``lung1`` and ``93_LiverLesion_examples_overlay_0.png`` ->
    ``examples_overlay`` (a named source: everything before the trailing slice numbers).
    """
    stem = Path(image_name).stem
    rest = stem[len(dataset) + 1:] if stem.startswith(f"{dataset}_") else stem
    tokens = rest.split("_")
    if tokens[0].isdigit():
        return tokens[0]
    while len(tokens) > 1 and tokens[-1].isdigit():
        tokens.pop()
    return "_".join(tokens)


def _natural(key: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", key) if t]


def derive_val_split(splits: dict, fraction: float = VAL_FRACTION) -> dict:
    """``splits`` with a ``val`` key per dataset, taken patient by patient from ``adapt_train``.

    A dataset with n >= 2 patients outside ``test`` gives ceil(fraction * n) of them to ``val``: those
    with the fewest ``adapt_train`` slices (ties: the lower patient id), so the few labelled training
    slices stay in training. A dataset with fewer patients gets an empty ``val`` (one patient cannot be
    both trained and validated on). ``test`` is copied unchanged; nothing moves between patients.

    Raises:
        DataError: a patient is listed under both ``adapt_train`` and ``test``.
    """
    out = {}
    for ds, parts in splits.items():
        if not isinstance(parts, dict):
            out[ds] = parts
            continue
        train = list(parts.get("adapt_train", []))
        test_patients = {patient_id(ds, n) for n in parts.get("test", [])}
        by_patient: dict[str, list[str]] = {}
        for name in train:
            by_patient.setdefault(patient_id(ds, name), []).append(name)
        shared = sorted(set(by_patient) & test_patients)
        if shared:
            raise DataError(f"{ds}: patient(s) {shared} are in both adapt_train and test; fix the split file.")
        n = len(by_patient)
        k = math.ceil(fraction * n) if n >= 2 else 0
        chosen = sorted(by_patient, key=lambda p: (len(by_patient[p]), _natural(p)))[:k]
        val = [name for name in train if patient_id(ds, name) in chosen]
        out[ds] = {**parts, "adapt_train": [name for name in train if name not in val], "val": val}
    return out


def main(argv=None) -> None:
    """Write a split file with ``val`` derived from another (``scripts/make_val_split.py``)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("source", help="a splits.json with adapt_train and test per dataset")
    parser.add_argument("output", nargs="?", default=str(VAL_SPLIT_FILE), help="where to write (default: %(default)s)")
    args = parser.parse_args(argv)
    derived = derive_val_split(read_splits(args.source))
    Path(args.output).write_text(json.dumps(derived, indent=1) + "\n")
    for ds, parts in derived.items():
        if isinstance(parts, dict):
            print(f"{ds}: {len(parts['adapt_train'])} adapt_train, {len(parts['val'])} val, {len(parts['test'])} test")
