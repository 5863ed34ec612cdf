"""The napari layers MiniSAM adds for an image: its box and points prompts, its preview and its objects.

Each is named after its image (``cardiac MRI · box``) and tagged in ``metadata`` with the image's id, which
lives in the image layer's own metadata: a renamed image keeps its layers, and a widget opened again finds
them instead of adding more.
"""

from __future__ import annotations

import uuid

import numpy as np
from napari.layers import Labels, Points, Shapes
from napari.utils.colormaps import DirectLabelColormap

from ..prompts import NEGATIVE, POSITIVE, PROMPT_COLORS, PROMPT_FEATURE, on_slice

ROLE, IMAGE_ID = "minisam_role", "minisam_image_id"
ROLES = ("box", "points", "preview", "objects")
PROMPT_ROLES = ("box", "points", "preview")  # shown only while their image is the one picked
# The preview is drawn as a yellow outline: an outline stays readable over any label colour, and yellow
# reads as "not committed yet".
PREVIEW_COLOR = "#ffd400"


def image_id(image_layer) -> str:
    """The image layer's MiniSAM id (made on first use, kept in its metadata)."""
    if IMAGE_ID not in image_layer.metadata:
        image_layer.metadata[IMAGE_ID] = uuid.uuid4().hex
    return image_layer.metadata[IMAGE_ID]


def helper_name(image_name: str, role: str) -> str:
    return f"{image_name} · {role}"


def find_helper(viewer, role: str, uid: str):
    for layer in viewer.layers:
        if layer.metadata.get(ROLE) == role and layer.metadata.get(IMAGE_ID) == uid:
            return layer
    return None


def spatial_shape(image_layer) -> tuple:
    shape = image_layer.data.shape
    return tuple(shape[:-1]) if image_layer.rgb else tuple(shape)


def _common(image_layer, role: str) -> dict:
    # Helper layers share the image's world transform so their data coordinates are the image's pixels.
    n = len(spatial_shape(image_layer))
    return {"name": helper_name(image_layer.name, role), "scale": image_layer.scale[-n:],
            "translate": image_layer.translate[-n:], "units": tuple(image_layer.units)[-n:],
            "metadata": {ROLE: role, IMAGE_ID: image_id(image_layer)}}


def make_layer(role: str, image_layer):
    """A new helper layer of ``role`` for ``image_layer`` (not yet added to a viewer)."""
    shape = spatial_shape(image_layer)
    size = max(shape[-2:])
    if role == "box":
        return Shapes(ndim=len(shape), edge_color="#00b0ff", face_color="transparent",
                      edge_width=max(1, int(0.006 * size)), **_common(image_layer, role))
    if role == "points":
        return Points(np.zeros((0, len(shape))), ndim=len(shape),
                      features={PROMPT_FEATURE: np.array([], dtype=object)},
                      feature_defaults={PROMPT_FEATURE: POSITIVE},
                      face_color=PROMPT_FEATURE, face_color_cycle=dict(PROMPT_COLORS),
                      border_color="white", border_width=0.15, size=max(4, int(0.025 * size)),
                      **_common(image_layer, role))
    if role == "preview":
        layer = Labels(np.zeros(shape, np.uint8), opacity=1.0,
                       colormap=DirectLabelColormap(color_dict={None: PREVIEW_COLOR, 0: "transparent"}),
                       **_common(image_layer, role))
        layer.contour = max(1, round(size / 256))
        return layer
    if role == "objects":
        layer = Labels(np.zeros(shape, np.int32), opacity=0.6, **_common(image_layer, role))
        if "affine" in image_layer.metadata:  # the NIfTI/DICOM voxel -> RAS affine: the NIfTI writer uses it
            layer.metadata["affine"] = image_layer.metadata["affine"]
        return layer
    raise ValueError(f"unknown helper role {role!r}")


def fits(layer, image_layer) -> bool:
    """Whether an existing helper layer still matches its image's shape (the image data may have changed)."""
    shape = spatial_shape(image_layer)
    if isinstance(layer, Labels):
        return tuple(layer.data.shape) == shape
    return layer.ndim == len(shape)


def set_polarity_default(points: Points, negative: bool) -> None:
    points.feature_defaults = {PROMPT_FEATURE: NEGATIVE if negative else POSITIVE}


def flip_selected_polarity(points: Points) -> bool:
    """Flip positive <-> negative for the selected points; True if any changed."""
    selected = sorted(points.selected_data)
    if not selected:
        return False
    features = points.features.copy()
    column = features[PROMPT_FEATURE].astype(object)
    for i in selected:
        column.iloc[i] = POSITIVE if column.iloc[i] == NEGATIVE else NEGATIVE
    features[PROMPT_FEATURE] = column
    points.features = features
    points.refresh_colors(update_color_mapping=False)
    return True


def remove_on_slice(layer, z: int | None) -> None:
    """Delete the points / shapes of ``layer`` lying on slice ``z`` (all of them for 2D)."""
    if isinstance(layer, Points):
        keep = on_slice(layer.data, z) if len(layer.data) else np.zeros(0, bool)
        idx = set(np.nonzero(keep)[0].tolist())
    else:
        idx = {i for i, v in enumerate(layer.data) if on_slice(np.asarray(v), z).all()}
    if idx:
        layer.selected_data = idx
        layer.remove_selected()


def paint_plane(layer: Labels, z: int | None, plane: np.ndarray | None) -> int:
    """Make plane ``z`` of ``layer`` (the whole layer for 2D) equal ``plane`` (``None``: empty).

    Only the pixels that differ are written, through ``Labels.data_setitem``: napari then uploads just
    their bounding box to the GPU and skips re-slicing and the layer-list thumbnail (a few ms per preview;
    the canvas redraw itself costs the same either way, see docs/benchmarks.md).
    Returns the number of pixels changed.
    """
    current = layer.data if z is None else layer.data[z]
    new = np.zeros(current.shape, current.dtype) if plane is None else plane.astype(current.dtype, copy=False)
    changed = np.nonzero(current != new)
    if not changed[0].size:
        return 0
    indices = changed if z is None else (np.full(changed[0].size, z, np.intp), *changed)
    layer.data_setitem(indices, new[changed])
    return int(changed[0].size)
