"""An image layer tied to its ``AnnotationSession``, its objects layer, and, while it is the picked image,
the prompt layers.

Each image keeps its own objects layer (``cardiac MRI · objects``), made by its first commit. The box, points and preview layers are
one set per dimensionality (2D or 3D), lent to the picked image: named after it, holding its prompts
(which wait in its session while another image is picked) and only its preview. napari builds a layer's GL
visual on the Qt thread (~150-400 ms here under software OpenGL): a set per image would freeze every new
image's first pick, while lending a set is a rename and a few data swaps.
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


class _Connections:
    """Callbacks connected to napari event emitters, to drop together (or per layer)."""

    def __init__(self):
        self.items: list[tuple] = []

    def connect(self, emitter, callback) -> None:
        emitter.connect(callback)
        self.items.append((emitter, callback))

    def drop(self, layer=None) -> None:
        keep = []
        for emitter, callback in self.items:
            if layer is None or getattr(emitter, "source", None) is layer:
                emitter.disconnect(callback)
            else:
                keep.append((emitter, callback))
        self.items = keep


class PromptLayers:
    """The box, points and preview layers of one dimensionality, lent to one image at a time."""

    def __init__(self, viewer, ndim: int, on_prompts):
        self.viewer = viewer
        self.ndim = ndim
        self.layers: dict[str, object] = dict.fromkeys(L.PROMPT_ROLES)
        self.owner = None  # the ImageBinding these layers serve
        self._on_prompts = on_prompts  # (binding, event): a prompt layer changed
        self._loading = False  # swapping an image's prompts in: not the user's edit
        self._events = _Connections()
        self.painted_z = None

    def missing(self) -> list[str]:
        return [r for r in L.PROMPT_ROLES if self.layers[r] is None or self.layers[r] not in self.viewer.layers]

    def make(self, role: str, image_layer):
        """The ``role`` layer: one a closed widget left in the viewer (same role and dimensionality), else new."""
        layer = next((lyr for lyr in self.viewer.layers if lyr.metadata.get(L.ROLE) == role
                      and lyr.ndim == self.ndim and lyr not in self.layers.values()), None)
        if layer is None:
            layer = L.make_layer(role, image_layer)
            self.viewer.add_layer(layer)
        else:
            layer.name = L.helper_name(image_layer.name, role)
            layer.scale, layer.translate = image_layer.scale[-self.ndim:], image_layer.translate[-self.ndim:]
        self.layers[role] = layer
        if role in ("box", "points"):
            self._events.connect(layer.events.data, self._event)
            if role == "points":
                self._events.connect(layer.events.features, self._event)
        if self.owner is not None and role == "preview":
            self.painted_z = None
        return layer

    def forget(self, layer) -> bool:
        for role, mine in self.layers.items():
            if mine is layer:
                self.layers[role] = None
                self._events.drop(layer)
                return True
        return False

    def _event(self, event) -> None:
        if not self._loading and self.owner is not None:
            self._on_prompts(self.owner, event)

    def lend(self, binding) -> None:
        """Serve ``binding``'s image: keep the last owner's prompts in its session, bring this one's in."""
        if self.owner is binding:
            return
        if self.owner is not None:
            self.owner.session.saved_prompts = self.save()
            self.owner.prompts = None
        self.owner, self.painted_z = binding, None
        binding.prompts = self
        self._loading = True
        try:
            self.retarget(binding)
            self.load(binding.session.saved_prompts)
        finally:
            self._loading = False

    def retarget(self, binding) -> None:
        """Names and world transform of ``binding``'s image; an empty preview of its shape."""
        image = binding.image
        n = self.ndim
        for role, layer in self.layers.items():
            if layer is None:
                continue
            layer.name = L.helper_name(image.name, role)
            layer.metadata[L.IMAGE_ID] = binding.uid
            # napari redraws a layer for every transform set, even an equal one: set only what changes
            if not np.array_equal(layer.scale, image.scale[-n:]):
                layer.scale = image.scale[-n:]
            if not np.array_equal(layer.translate, image.translate[-n:]):
                layer.translate = image.translate[-n:]
        preview = self.layers["preview"]
        if preview is not None and tuple(preview.data.shape) != binding.session.shape:
            preview.data = np.zeros(binding.session.shape, np.uint8)
        elif preview is not None and preview.data.any():
            preview.data[...] = 0
            preview.refresh()

    def save(self) -> dict:
        """The prompts as plain arrays (kept in the session while another image is picked)."""
        box, points = self.layers["box"], self.layers["points"]
        saved = {"shapes": [], "shape_types": [], "points": np.zeros((0, self.ndim)), "polarities": []}
        if box is not None:
            saved["shapes"] = [np.array(v) for v in box.data]
            saved["shape_types"] = list(box.shape_type)
        if points is not None and len(points.data):
            saved["points"] = np.array(points.data)
            saved["polarities"] = points.features[PROMPT_FEATURE].tolist()
        return saved

    def load(self, saved: dict | None) -> None:
        box, points = self.layers["box"], self.layers["points"]
        saved = saved or {}
        if box is not None:
            if len(box.data):
                box.data = []
            if saved.get("shapes"):
                box.add(saved["shapes"], shape_type=saved["shape_types"])
        if points is not None:
            data = saved.get("points", np.zeros((0, self.ndim)))
            if len(data) or len(points.data):
                points.data = data
            if len(data):
                features = points.features.copy()
                features[PROMPT_FEATURE] = saved["polarities"]
                points.features = features

    def set_visible(self, visible: bool) -> None:
        for layer in self.layers.values():
            if layer is not None and layer.visible != visible:
                layer.visible = visible

    def close(self) -> None:
        self._events.drop()
        for role in ("box", "points"):
            if self.layers[role] is not None:
                gestures.uninstall(self.layers[role])

    def remove(self) -> None:
        """Take the layers out of the viewer (no image of this dimensionality is left to lend them to)."""
        self.close()
        for role, layer in self.layers.items():
            self.layers[role] = None
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)


class ImageBinding:
    """An image layer, its session, its objects layer and (while picked) the prompt layers lent to it."""

    def __init__(self, viewer, image_layer, session: AnnotationSession, on_objects):
        self.viewer = viewer
        self.image = image_layer
        self.session = session
        self.uid = L.image_id(image_layer)
        self.objects = None  # its objects layer
        self.prompts: PromptLayers | None = None  # lent while this image is the picked one
        self._on_objects = on_objects  # (binding) -> None: the objects layer's data changed
        self._events = _Connections()
        self._events.connect(image_layer.events.name, self._follow_rename)

    @property
    def ndim(self) -> int:
        return len(self.session.shape)

    @property
    def layers(self) -> dict:
        """``box``, ``points``, ``preview`` (``None`` unless this image holds the prompt layers), ``objects``."""
        lent = self.prompts.layers if self.prompts is not None else dict.fromkeys(L.PROMPT_ROLES)
        objects = self.objects if self.objects is not None and self.objects in self.viewer.layers else None
        return {**lent, "objects": objects}

    def missing(self) -> list[str]:
        """Prompt layers that do not exist yet (or were deleted), in the order they are made.

        The objects layer is made by the first commit (or found again by its image id): picking an image
        adds no layer, so it never waits for napari to build one.
        """
        return self.prompts.missing() if self.prompts is not None else list(L.PROMPT_ROLES)

    def ensure(self, role: str):
        """The layer of ``role``, made (or, for the objects layer, found again by its image id) if needed."""
        if self.layers.get(role) is not None:
            return self.layers[role]
        if role != "objects":
            return self.prompts.make(role, self.image)
        if self.find_objects() is None:
            layer = L.make_layer("objects", self.image)
            self.viewer.add_layer(layer)
            self._adopt(layer)
        return self.objects

    def find_objects(self):
        """The objects layer of this image left in the viewer (by its image id), adopted; else ``None``."""
        layer = L.find_helper(self.viewer, "objects", self.uid)
        if layer is not None and L.fits(layer, self.image):
            self._adopt(layer)
            return layer
        return None

    def adopt(self, layer) -> None:
        """Make ``layer`` (a labels layer of this image's shape) this image's objects layer, found again by its
        image id like one the widget made."""
        if self.objects is not None and self.objects is not layer:
            self.forget(self.objects)
        layer.metadata[L.ROLE], layer.metadata[L.IMAGE_ID] = "objects", self.uid
        self._adopt(layer)

    def _adopt(self, layer) -> None:
        self.objects = self.session.labels = layer
        self._events.connect(layer.events.paint, self._objects_event)
        self._events.connect(layer.events.set_data, self._objects_event)

    def forget(self, layer) -> None:
        """``layer`` was deleted from the viewer: the next use makes a new one."""
        if layer is self.objects:
            self.objects = self.session.labels = None
            self._events.drop(layer)

    def prompt_layers(self) -> list:
        return [self.layers[r] for r in ("box", "points") if self.layers[r] is not None]

    def slice_in_view(self) -> int | None:
        """The image's slice that napari shows (``None`` for a 2D image)."""
        if not self.session.depth:
            return None
        z = int(round(float(self.image.world_to_data(self.viewer.dims.point)[0])))
        return int(np.clip(z, 0, self.session.shape[0] - 1))

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
        painted = self.prompts.painted_z
        if self.session.depth and painted is not None and painted != z:
            L.paint_plane(layer, painted, None)  # only the slice painted last holds a preview
        L.paint_plane(layer, z, preview.label_plane(self.session.shape[-2:]) if preview.decoded else None)
        self.prompts.painted_z = z

    def paint_slice(self, z: int, mask: np.ndarray | None) -> None:
        """Show (or clear) a mask on slice ``z`` of the preview layer, outside the live preview (propagation)."""
        if self.layers["preview"] is not None:
            L.paint_plane(self.layers["preview"], z, None if mask is None else mask.astype(np.uint8))

    def clear_prompts(self) -> None:
        """Delete the prompts on the slice in view (one preview update follows, from the caller)."""
        for layer in self.prompt_layers():
            L.remove_on_slice(layer, self.session.z)

    # -- events ---------------------------------------------------------------------------------------
    def disconnect(self) -> None:
        """Drop every callback this binding connected (the widget closed, or its image left the viewer)."""
        self._events.drop()

    def _objects_event(self, event=None) -> None:
        self._on_objects(self)

    def _follow_rename(self, event=None) -> None:
        self.session.name = self.image.name
        for role, layer in self.layers.items():
            if layer is not None:
                layer.name = L.helper_name(self.image.name, role)
