"""``ImageBinding``: one image layer tied to its ``AnnotationSession`` and to its helper layers.

The binding reads prompts from the image's box and points layers, paints previews into its preview layer
and gives the session its objects layer. It holds no state of its own beyond which layers those are and
which callbacks it connected, so closing the widget can disconnect every one of them.
"""

from __future__ import annotations

import numpy as np

from ..annotation import AnnotationSession, spacing_mm
from ..prompts import PROMPT_FEATURE, slice_objects
from . import gestures
from . import layers as L

CLASS_NAMES = "minisam_class_names"  # image metadata: the dataset's structure names (sample data sets it)


def session_for(image_layer) -> AnnotationSession:
    """A new session for an image layer (raises ``InputError`` for shapes the model cannot take)."""
    ndim = len(L.spatial_shape(image_layer))
    units = getattr(image_layer, "units", None)
    return AnnotationSession(image_layer.data, name=image_layer.name, rgb=image_layer.rgb,
                             spacing=spacing_mm(image_layer.scale[-ndim:], None if units is None else units[-ndim:]),
                             class_names=image_layer.metadata.get(CLASS_NAMES, ()))


class ImageBinding:
    """An image layer, its session and its helper layers (``box``, ``points``, ``preview``, ``objects``)."""

    def __init__(self, viewer, image_layer, session: AnnotationSession, on_prompts, on_objects):
        self.viewer = viewer
        self.image = image_layer
        self.session = session
        self.uid = L.image_id(image_layer)
        self.layers: dict[str, object] = dict.fromkeys(L.ROLES)
        self._on_prompts = on_prompts  # (binding, event) -> None: a prompt layer changed
        self._on_objects = on_objects  # (binding) -> None: the objects layer's data changed
        self._connected: list[tuple] = []  # (emitter, callback)
        self._painted_z = None
        self._connect(image_layer.events.name, self._follow_rename)

    # -- layers ---------------------------------------------------------------------------------------
    def missing(self) -> list[str]:
        """Roles whose layer does not exist (or was deleted), in the order they are made."""
        return [role for role in L.ROLES if self.layers[role] is None or self.layers[role] not in self.viewer.layers]

    def ensure(self, role: str, visible: bool = True):
        """The layer of ``role``: an existing one of this image if it fits, else a new one added to the viewer."""
        layer = self.layers[role]
        if layer is not None and layer in self.viewer.layers:
            return layer
        layer = L.find_helper(self.viewer, role, self.uid)
        if layer is None or not L.fits(layer, self.image):
            layer = L.make_layer(role, self.image)
            layer.visible = visible or role == "objects"
            self.viewer.add_layer(layer)
        self.layers[role] = layer
        if role in ("box", "points"):
            self._connect(layer.events.data, self._prompts_event)
            if role == "points":
                self._connect(layer.events.features, self._prompts_event)
        elif role == "objects":
            self.session.labels = layer
            self._connect(layer.events.paint, self._objects_event)
            self._connect(layer.events.set_data, self._objects_event)
        return layer

    def forget(self, layer) -> str | None:
        """``layer`` was deleted from the viewer: drop it (the next use makes a new one). Its role, if ours."""
        for role, mine in self.layers.items():
            if mine is layer:
                self.layers[role] = None
                self._disconnect_from(layer)
                if role == "objects":
                    self.session.labels = None
                return role
        return None

    def prompt_layers(self) -> list:
        return [self.layers[r] for r in ("box", "points") if self.layers[r] is not None]

    def set_visible(self, visible: bool) -> None:
        """Show the prompt and preview layers only while their image is the one picked."""
        for role in L.PROMPT_ROLES:
            if self.layers[role] is not None:
                self.layers[role].visible = visible

    # -- prompts and preview --------------------------------------------------------------------------
    def read_prompts(self, points=None, polarities=None) -> list:
        """The objects prompted on the slice in view; ``points``/``polarities`` stand in for the layer's."""
        pts, box = self.layers["points"], self.layers["box"]
        if points is None and pts is not None:
            points = pts.data
            polarities = pts.features[PROMPT_FEATURE].tolist() if len(points) else None
        return slice_objects(points, polarities, box.data if box is not None else (),
                             box.shape_type if box is not None else (), self.session.z)

    def paint(self, preview) -> None:
        layer = self.layers["preview"]
        if layer is None:
            return
        z = preview.z if self.session.depth else None
        if self.session.depth and self._painted_z is not None and self._painted_z != z:
            L.paint_plane(layer, self._painted_z, None)  # only the slice painted last holds a preview
        plane_shape = self.session.shape[-2:]
        L.paint_plane(layer, z, preview.label_plane(plane_shape) if preview.decoded else None)
        self._painted_z = z

    def paint_slice(self, z: int, mask: np.ndarray | None) -> None:
        """Show (or clear) a mask on slice ``z`` of the preview layer, outside the live preview (propagation)."""
        if self.layers["preview"] is not None:
            L.paint_plane(self.layers["preview"], z, None if mask is None else mask.astype(np.uint8))

    def clear_prompts(self) -> None:
        """Delete the prompts on the slice in view (one preview update follows, from the caller)."""
        for layer in self.prompt_layers():
            L.remove_on_slice(layer, self.session.z)

    # -- events ---------------------------------------------------------------------------------------
    def _connect(self, emitter, callback) -> None:
        emitter.connect(callback)
        self._connected.append((emitter, callback))

    def _disconnect_from(self, layer) -> None:
        keep = []
        for emitter, callback in self._connected:
            if getattr(emitter, "source", None) is layer:
                emitter.disconnect(callback)
            else:
                keep.append((emitter, callback))
        self._connected = keep

    def disconnect(self) -> None:
        """Drop every callback this binding connected, gesture watchers included (the widget closed)."""
        for emitter, callback in self._connected:
            emitter.disconnect(callback)
        self._connected = []
        for layer in self.prompt_layers():
            gestures.uninstall(layer)

    def _prompts_event(self, event) -> None:
        self._on_prompts(self, event)

    def _objects_event(self, event=None) -> None:
        self._on_objects(self)

    def _follow_rename(self, event=None) -> None:
        self.session.name = self.image.name
        for role, layer in self.layers.items():
            if layer is not None:
                layer.name = L.helper_name(self.image.name, role)
