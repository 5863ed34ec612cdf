"""Sample data: small real images shipped in ``sample_data/`` (provenance in ``sample_data/SOURCES.md``).

Each function returns napari layer data tuples ``[(data, kwargs, layer_type)]``: the image, then its
reference labels (hidden, so the user sees their own segmentation first).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_DIR = Path(__file__).parent / "sample_data"


def read_sample(stem: str) -> tuple[np.ndarray, np.ndarray]:
    """``(image, labels)`` arrays of a shipped sample (``heart_mri``, ``pancreas_ct``, ``lung_ct``)."""
    import tifffile

    return (tifffile.imread(SAMPLE_DIR / f"{stem}_image.tif"),
            tifffile.imread(SAMPLE_DIR / f"{stem}_labels.tif"))


def _layers(stem: str, name: str, image_kwargs: dict, features: dict | None = None, **common) -> list:
    image, labels = read_sample(stem)
    label_kwargs = {"name": f"{name} reference", "visible": False, "opacity": 0.4, **common}
    if features:
        label_kwargs["features"] = features
    return [(image, {"name": name, **image_kwargs, **common}, "image"), (labels, label_kwargs, "labels")]


def heart_mri() -> list:
    """Cardiac cine MRI slice (COSMOS 22_Heart_4_5): left ventricle 1, myocardium 2, right ventricle 3."""
    return _layers("heart_mri", "cardiac MRI", {"colormap": "gray"},
                   {"index": [0, 1, 2, 3], "structure": ["background", "left ventricle", "myocardium",
                                                         "right ventricle"]})


def pancreas_ct() -> list:
    """Abdominal CT slice (COSMOS 6_Pancreas_13_75_0, 0-255 scaled): pancreatic mass = 2."""
    return _layers("pancreas_ct", "pancreas CT", {"colormap": "gray"},
                   {"index": [0, 1, 2], "structure": ["background", "pancreas", "pancreatic mass"]})


def lung_ct_volume() -> list:
    """Chest CT crop around a lung tumour (pyradiomics lung2, int16 HU, 18 x 192 x 192, tumour = 1).

    Shown in a lung window; voxel spacing 5 x 0.627 x 0.627 mm.
    """
    return _layers("lung_ct", "chest CT", {"colormap": "gray", "contrast_limits": (-1350, 150)},
                   scale=(5.0, 0.627, 0.627))
