"""The napari layers the widget works with: prompts (points, boxes), the preview and the output labels.

Layers are tagged in ``metadata["minisam_role"]`` so the widget finds its own layers again after a user
renames them, and never mistakes a user's layer for one of its own.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Labels, Points, Shapes
from napari.utils.colormaps import DirectLabelColormap

from ..prompts import NEGATIVE, POSITIVE, PROMPT_COLORS, PROMPT_FEATURE

ROLE = "minisam_role"
PREVIEW_COLOR = "#ffd400"  # yellow: reads as "not committed yet" next to napari's label colours


def find_layer(viewer, role: str, image_layer=None):
    for layer in viewer.layers:
        if layer.metadata.get(ROLE) == role and (
            image_layer is None or layer.metadata.get("minisam_image") == image_layer.name
        ):
            return layer
    return None


def _geometry(image_layer) -> dict:
    # Prompt layers share the image's world transform so their data coordinates are the image's pixels.
    return {"scale": image_layer.scale, "translate": image_layer.translate}


def spatial_shape(image_layer) -> tuple:
    shape = image_layer.data.shape
    return tuple(shape[:-1]) if image_layer.rgb else tuple(shape)


def make_points_layer(image_layer) -> Points:
    ndim = len(spatial_shape(image_layer))
    return Points(
        np.zeros((0, ndim)), ndim=ndim, name="MiniSAM points",
        features={PROMPT_FEATURE: np.array([], dtype=object)},
        feature_defaults={PROMPT_FEATURE: POSITIVE},
        face_color=PROMPT_FEATURE, face_color_cycle=dict(PROMPT_COLORS),
        border_color="white", border_width=0.15, size=max(4, int(0.025 * max(spatial_shape(image_layer)))),
        metadata={ROLE: "points", "minisam_image": image_layer.name}, **_geometry(image_layer),
    )


def make_shapes_layer(image_layer) -> Shapes:
    ndim = len(spatial_shape(image_layer))
    return Shapes(
        ndim=ndim, name="MiniSAM box", edge_color="#00b0ff", face_color="transparent",
        edge_width=max(1, int(0.006 * max(spatial_shape(image_layer)))),
        metadata={ROLE: "box", "minisam_image": image_layer.name}, **_geometry(image_layer),
    )


def make_preview_layer(image_layer) -> Labels:
    return Labels(
        np.zeros(spatial_shape(image_layer), np.uint8), name="MiniSAM preview", opacity=0.55,
        colormap=DirectLabelColormap(color_dict={None: "transparent", 1: PREVIEW_COLOR}),
        metadata={ROLE: "preview", "minisam_image": image_layer.name}, **_geometry(image_layer),
    )


def make_objects_layer(image_layer) -> Labels:
    return Labels(
        np.zeros(spatial_shape(image_layer), np.int32), name=f"{image_layer.name} objects", opacity=0.6,
        metadata={ROLE: "objects", "minisam_image": image_layer.name}, **_geometry(image_layer),
    )


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
    from ..prompts import on_slice

    if isinstance(layer, Points):
        keep = on_slice(layer.data, z) if len(layer.data) else np.zeros(0, bool)
        idx = set(np.nonzero(keep)[0].tolist())
    else:
        idx = {i for i, v in enumerate(layer.data) if on_slice(np.asarray(v), z).all()}
    if idx:
        layer.selected_data = idx
        layer.remove_selected()


def paint_plane(layer: Labels, z: int | None, mask: np.ndarray | None) -> int:
    """Make plane ``z`` of ``layer`` (the whole layer for 2D) equal ``mask`` (``None``: empty).

    Only the pixels that differ are written, through ``Labels.data_setitem``: napari then uploads just
    their bounding box to the GPU and skips re-slicing and the layer-list thumbnail (a few ms per preview
    here; the canvas redraw itself costs the same either way, see docs/benchmarks.md).
    Returns the number of pixels changed.
    """
    plane = layer.data if z is None else layer.data[z]
    new = np.zeros(plane.shape, plane.dtype) if mask is None else mask.astype(plane.dtype, copy=False)
    changed = np.nonzero(plane != new)
    if not changed[0].size:
        return 0
    indices = changed if z is None else (np.full(changed[0].size, z, np.intp), *changed)
    layer.data_setitem(indices, new[changed])
    return int(changed[0].size)
