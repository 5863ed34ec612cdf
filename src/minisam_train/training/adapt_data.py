"""The data of ``minisam-train adapt``: a modality's COSMOS ``adapt_train`` slices, or TIFF image/label pairs.

Both become :class:`~napari_qlora_minisam.adapter_training.views.AnnotatedSlice` lists split into training and
validation, which the core trainer (``adapter_training.fit``) turns into augmented network-frame views.
COSMOS folders hold out whole slices (each dataset has many); pairs saved from napari hold out objects, as
``train_adapter`` does, because a user may have annotated a single image. ``data.neighbour_volumes`` adds the
labelled slices of 3D image/label pairs to the training slices with each object's masks on the adjacent
slices, for neighbour prompts (``train.prompts.neighbour``: how 3D propagation prompts a slice).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_qlora_minisam.adapter_training.labelled_samples import held_back_count, slices_from_sample, split_held_back
from napari_qlora_minisam.adapter_training.views import AnnotatedSlice
from napari_qlora_minisam.embedding_cache import image_digest

from ..data import CosmosDataset, DataError, read_modalities, split_images
from ..data.pairs import read_label_pairs
from ..data.splits import patient_id

# Modalities for which no labelled data exists here; asking for one gets a specific explanation.
NO_LABELLED_DATA = {"us": "ultrasound", "ultrasound": "ultrasound"}


def datasets_for_modality(roots, modality: str, overrides: dict | None = None, datasets=None) -> list[str]:
    """Dataset names whose modality is ``modality`` under ``roots`` (``modalities.json`` + overrides)."""
    modality = str(modality).lower()
    known: dict[str, str] = {}
    for r in roots:
        known.update(read_modalities(r))
    known.update({k: str(v).lower() for k, v in (overrides or {}).items()})
    if datasets:
        missing = [d for d in datasets if d not in known]
        wrong = [d for d in datasets if d in known and known[d] != modality]
        if wrong:
            raise DataError(f"data.datasets {wrong} are not {modality!r} data "
                            f"(modalities: { {d: known[d] for d in wrong} }).")
        return [d for d in datasets if d not in missing] + missing
    picked = sorted(d for d, m in known.items() if m == modality)
    if not picked:
        by_mod: dict[str, list] = {}
        for d, m in sorted(known.items()):
            by_mod.setdefault(m, []).append(d)
        if modality in NO_LABELLED_DATA:
            raise DataError(
                f"No labelled {NO_LABELLED_DATA[modality]} data exists under {[str(r) for r in roots]}: "
                "an adapter needs images with masks (the ultrasound frames here are unlabelled). "
                f"Modalities with labelled data: {by_mod}."
            )
        raise DataError(
            f"Unknown modality {modality!r}: no dataset under {[str(r) for r in roots]} is mapped to it in "
            f"modalities.json. Known modalities and their datasets: {by_mod}. Use --modality with one of "
            f"{sorted(by_mod)}, or map datasets with data.modalities={{NAME: {modality}}}."
        )
    return picked


def load_modality_slices(cfg_data, modality: str, seed: int):
    """The modality's training slices, split into (train, val) slices; plus a summary for metadata.

    Never reads the ``test`` split: training on it would make every score in docs/adapters.md meaningless.
    """
    if str(cfg_data.split_key) == "test":
        raise DataError("data.split_key=test: adapters must never be trained on the test split; "
                        "use data.split_key=adapt_train.")
    roots = [r for r in (cfg_data.roots or [])]
    if not roots:
        raise DataError("No data root given; set data.roots=[DIR, ...] (COSMOS layout folders).")
    missing = [str(r) for r in roots if not Path(r).is_dir()]
    if missing:  # else a mistyped root only shrinks the data, or reads as "no such modality"
        raise DataError(f"data.roots: {missing} do{'es' * (len(missing) == 1)} not exist (relative paths are read "
                        f"from {Path.cwd()}, where minisam-train was started); give existing COSMOS layout "
                        "folders, e.g. data.roots=[/abs/path/to/cosmos_root].")
    names = datasets_for_modality(roots, modality, dict(cfg_data.modalities or {}), list(cfg_data.datasets or []))
    include = split_images(cfg_data.split_file, cfg_data.split_key) if cfg_data.split_file else None
    if include is not None:
        names = [d for d in names if d in include and include[d]]
        if not names:
            raise DataError(f"No {modality!r} dataset has images under {cfg_data.split_key!r} in "
                            f"{cfg_data.split_file}.")
    present = [r for r in roots if _has_any(r, cfg_data.split, names)]
    ds = CosmosDataset(present or roots, split=cfg_data.split, datasets=names,
                       modalities={n: modality for n in names}, include=include,
                       min_object_pixels=int(cfg_data.min_object_pixels))
    records = [r for r in ds if r.objects]
    if not records:
        raise DataError(f"The {modality!r} training slices ({names}) hold no object of at least "
                        f"{cfg_data.min_object_pixels} pixels.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(records))
    if cfg_data.max_samples:
        order = order[: int(cfg_data.max_samples)]
    records = [records[i] for i in order]
    n_val = held_back_count(len(records), float(cfg_data.val_fraction))
    val, train = records[:n_val], records[n_val:]
    summary = {
        "modality": modality,
        "datasets": names,
        "split_file": str(cfg_data.split_file) if cfg_data.split_file else None,
        "split_key": str(cfg_data.split_key),
        "train_slices": sorted(f"{r.dataset}/{r.image_name}" for r in train),
        "val_slices": sorted(f"{r.dataset}/{r.image_name}" for r in val),
        "train_objects": int(sum(len(r.objects) for r in train)),
        "val_objects": int(sum(len(r.objects) for r in val)),
        "classes": sorted({f"{r.dataset}/{c}" for r in train + val for c in r.objects}),
    }
    as_slices = (lambda recs: [AnnotatedSlice(r.image, r.objects, f"{r.dataset}/{r.image_name}") for r in recs])
    return as_slices(train), as_slices(val), summary


def load_pair_slices(cfg_data, modality: str, min_object_pixels: int, seed: int):
    """Slices of the image/label TIFF pairs in ``data.pairs`` / ``data.pairs_dir``, objects held back.

    Returns:
        (train slices, validation slices, summary for the adapter's metadata).
    """
    pairs = read_label_pairs(cfg_data.get("pairs"), cfg_data.get("pairs_dir"))
    per_pair = [slices_from_sample(p.image, p.labels, p.name, min_object_pixels) for p in pairs]
    if not any(per_pair):
        raise DataError(f"The label files of {[str(p.labels_path) for p in pairs]} hold no object of at least "
                        f"{min_object_pixels} pixels on a slice (0 is background, each id > 0 one object).")
    split = split_held_back(per_pair, float(cfg_data.val_fraction), seed)
    summary = {
        "modality": modality,
        "source": "pairs",
        "pairs": [{"image": str(p.image_path), "labels": str(p.labels_path), "digest": image_digest(p.image),
                   "shape": list(p.image.shape), "labelled_slices": len(sls)} for p, sls in zip(pairs, per_pair)],
        "train_slices": sorted({s.source for s in split.train}),
        "val_slices": sorted({s.source for s in split.held_back}),
        "objects": split.objects,
        "val_objects": split.held_back_objects,
        "train_masks": sum(len(s.objects) for s in split.train),
        "val_masks": sum(len(s.objects) for s in split.held_back),
    }
    return split.train, split.held_back, summary


def _has_any(root, split, names) -> bool:
    from pathlib import Path

    return any((Path(root) / "data" / split / n).is_dir() for n in names)


def load_neighbour_volume_slices(pairs, min_object_pixels: int, split_file=None) -> tuple[list, dict]:
    """Training slices of 3D ``[[IMAGE.tif, LABELS.tif], ...]`` pairs, each object with its adjacent-slice masks.

    Every labelled slice trains (none is held back: validation stays on the modality's held-out slices).
    A volume whose name (``NAME_image.tif`` -> ``NAME``) is a patient of the ``test`` split of ``split_file``
    is refused, like ``data.split_key=test``.
    """
    import tifffile

    from napari_qlora_minisam.adapter_training.labelled_samples import slices_from_sample

    test_patients = set()
    if split_file:
        for ds, names in split_images(split_file, "test").items():
            test_patients |= {patient_id(ds, n) for n in names}
    slices, summary = [], []
    for pair in pairs or []:
        if len(pair) != 2:
            raise DataError(f"data.neighbour_volumes entry {list(pair)} must be [IMAGE.tif, LABELS.tif].")
        image_path, label_path = (str(x) for x in pair)
        name = Path(image_path).stem.removesuffix("_image")
        if name in test_patients:
            raise DataError(f"data.neighbour_volumes: {name} is in the test split of {split_file}; adapters must "
                            "never be trained on it. Use a volume of the adapt_train split.")
        for path in (image_path, label_path):
            if not Path(path).is_file():
                raise DataError(f"data.neighbour_volumes: {path} does not exist.")
        image, labels = tifffile.imread(image_path), np.asarray(tifffile.imread(label_path))
        if image.ndim != 3 or labels.shape != image.shape:
            raise DataError(f"data.neighbour_volumes: {image_path} {image.shape} and {label_path} {labels.shape} "
                            "must be 3D (Z, Y, X) volumes of the same shape.")
        used = []
        for z in range(labels.shape[0]):
            for sl in slices_from_sample(image[z], labels[z], f"{name}#z{z}", min_object_pixels):
                for obj in sl.objects:
                    near = [labels[k] == obj for k in (z - 1, z + 1) if 0 <= k < labels.shape[0]]
                    near = [m for m in near if m.any()]
                    if near:
                        sl.neighbours[obj] = near
                slices.append(sl)
                used.append(z)
        summary.append({"image": image_path, "labels": label_path, "slices": used})
    return slices, {"neighbour_volumes": summary}
