"""Sample data: small real images shipped in ``sample_data/`` (provenance in ``sample_data/SOURCES.md``).

Each function returns napari layer data tuples ``[(data, kwargs, layer_type)]``: the image, then its
reference labels (hidden, so the user sees their own segmentation first). The image carries its dataset's
structure names (``metadata["minisam_class_names"]``, the names new objects get) and, where known, its
pixel spacing in mm (``scale``), so the objects panel gives areas and volumes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_DIR = Path(__file__).parent / "sample_data"


def read_sample(stem: str) -> tuple[np.ndarray, np.ndarray]:
    """``(image, labels)`` arrays of a shipped sample (``heart_mri``, ``pancreas_ct``, ``brain_mri``, ``lung_ct``)."""
    import tifffile

    return (tifffile.imread(SAMPLE_DIR / f"{stem}_image.tif"),
            tifffile.imread(SAMPLE_DIR / f"{stem}_labels.tif"))


CLASS_NAMES = "minisam_class_names"


def _layers(stem: str, name: str, classes: list, image_kwargs: dict | None = None, spacing=None,
            names: list | None = None) -> list:
    """``classes``: the dataset's structures by id; ``names``: those new objects are named after (default all)."""
    image, labels = read_sample(stem)
    # Spacing as scale alone: napari warns when layers of one viewer carry different units, and a scale other
    # than 1 is read as mm by the objects panel anyway (annotation.objects.spacing_mm).
    common = {} if spacing is None else {"scale": spacing}
    label_kwargs = {"name": f"{name} reference", "visible": False, "opacity": 0.4,
                    "features": {"index": list(range(len(classes) + 1)), "structure": ["background", *classes]},
                    **common}
    image_kwargs = {"name": name, "colormap": "gray", "metadata": {CLASS_NAMES: list(names or classes)},
                    **(image_kwargs or {}), **common}
    return [(image, image_kwargs, "image"), (labels, label_kwargs, "labels")]


def heart_mri() -> list:
    """Cardiac cine MRI slice (COSMOS 22_Heart_4_5): left ventricle 1, myocardium 2, right ventricle 3."""
    return _layers("heart_mri", "cardiac MRI", ["LeftVentricle", "LeftVentricularMyocardium", "RightVentricle"])


def pancreas_ct() -> list:
    """Abdominal CT slice (COSMOS 6_Pancreas_13_75_0, 0-255 scaled): pancreatic mass = 2 (the only one labelled)."""
    return _layers("pancreas_ct", "pancreas CT", ["Pancreas", "PancreaticMass"], names=["PancreaticMass"])


def brain_mri() -> list:
    """Brain MRI slice with a tumour (pyradiomics brain1, slice 16, int16, 256 x 256, tumour = 1), 0.78 mm pixels."""
    return _layers("brain_mri", "brain MRI", ["BrainTumour"], spacing=(0.7812, 0.7812))


def lung_ct_volume() -> list:
    """Chest CT crop around a lung tumour (pyradiomics lung2, int16 HU, 18 x 192 x 192, tumour = 1).

    Shown in a lung window; voxel spacing 5 x 0.627 x 0.627 mm.
    """
    return _layers("lung_ct", "chest CT", ["LungTumour"], {"contrast_limits": (-1350, 150)},
                   spacing=(5.0, 0.627, 0.627))
