"""The images the widget has bound, the prompt layers lent to the picked one, and the layers still to make.

Layers are made one per event-loop turn: napari builds each layer's GL visual on the Qt thread, and several
in one turn froze the window for seconds.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from .binding import ImageBinding, PromptLayers, session_for
from .layers import image_id


class ImageRegistry(QObject):
    """Bindings by image id, one ``PromptLayers`` set per dimensionality, and the queue of layers to make."""

    layer_made = Signal(object, str)  # (binding, role)

    def __init__(self, viewer, on_prompts, on_objects, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.bindings: dict[str, ImageBinding] = {}
        self.prompt_sets: dict[int, PromptLayers] = {}
        self.picked: ImageBinding | None = None
        self._on_prompts, self._on_objects = on_prompts, on_objects
        self._queue: list[tuple] = []  # (binding, role)
        self._timer = QTimer(self, singleShot=True, interval=0)
        self._timer.timeout.connect(self._make_next)
        # After an image is deleted: its prompt layers go too, unless an image of their dimensionality is picked
        # by then (a series opens its next case in the same call and is lent them).
        self._cleanup = QTimer(self, singleShot=True, interval=0)
        self._cleanup.timeout.connect(self.drop_unused_prompt_sets)

    @property
    def making(self) -> bool:
        return bool(self._queue)

    def image_layers(self) -> list:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def fill(self, combo) -> list:
        """List the viewer's images in ``combo``, the picked one selected (signals held); returns them."""
        images = self.image_layers()
        combo.blockSignals(True)
        combo.clear()
        combo.addItems([layer.name for layer in images])
        if self.picked is not None and self.picked.image in images:
            combo.setCurrentIndex(images.index(self.picked.image))
        combo.blockSignals(False)
        return images

    def binding_for(self, image_layer) -> ImageBinding:
        """The image's binding, made (with a new session) on first use; ``InputError`` for unusable images."""
        uid = image_id(image_layer)
        if uid not in self.bindings:
            self.bindings[uid] = ImageBinding(self.viewer, image_layer, session_for(image_layer), self._on_objects)
        return self.bindings[uid]

    def pick(self, binding) -> None:
        """Lend ``binding`` the prompt layers of its dimensionality (hiding the other set), and queue what is missing."""
        self.picked = binding
        if binding.ndim not in self.prompt_sets:
            self.prompt_sets[binding.ndim] = PromptLayers(self.viewer, binding.ndim, self._on_prompts)
        for ndim, prompts in self.prompt_sets.items():
            prompts.set_visible(ndim == binding.ndim)
        self.prompt_sets[binding.ndim].lend(binding)
        self._queue = [item for item in self._queue if item[0] is binding] + \
            [(binding, role) for role in binding.missing() if (binding, role) not in self._queue]
        if self._queue:
            self._timer.start()

    def show_instead(self, binding, previous) -> bool:
        """Show ``binding``'s image and objects and hide ``previous``'s where they would cover it.

        Two images in one viewer lie on top of each other, so the one picked can sit under the one picked
        before, its objects drawn over the other image. Nothing is hidden in grid mode or when the two do not
        overlap in the world; hidden layers stay in the viewer (their eye icon, or picking them, shows them).
        Returns whether ``previous`` was hidden.
        """
        for layer in (binding.image, binding.objects):
            if layer is not None:
                layer.visible = True
        if previous is None or previous is binding or previous.image not in self.viewer.layers \
                or self.viewer.grid.enabled or not _overlap(binding.image, previous.image):
            return False
        for layer in (previous.image, previous.objects):
            if layer is not None:
                layer.visible = False
        return True

    def make_now(self, binding, role: str):
        """Make one layer at once (a commit needs the objects layer now)."""
        self._queue = [item for item in self._queue if item != (binding, role)]
        return self._make(binding, role)

    def _make_next(self) -> None:
        if self._queue:
            binding, role = self._queue.pop(0)
            if binding.image in self.viewer.layers and binding.layers.get(role) is None and \
                    (role == "objects" or binding.prompts is not None):
                self._make(binding, role)
        if self._queue:
            self._timer.start()

    def _make(self, binding, role: str):
        # napari makes an added layer the active one: the user may be drawing in the box layer meanwhile.
        active = self.viewer.layers.selection.active
        layer = binding.ensure(role)
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        self.layer_made.emit(binding, role)
        return layer

    def removed(self, layer):
        """A layer left the viewer: forget it. Returns the binding dropped with its image, if any."""
        for prompts in self.prompt_sets.values():
            prompts.forget(layer)
        for uid, binding in list(self.bindings.items()):
            if layer is binding.image:
                binding.disconnect()
                del self.bindings[uid]
                self._queue = [item for item in self._queue if item[0] is not binding]
                if binding.prompts is not None:
                    binding.prompts.owner = None
                    self._cleanup.start()
                return binding
            binding.forget(layer)
        return None

    def drop_unused_prompt_sets(self) -> None:
        """Remove the box, points and preview layers that no image in the viewer can use any more."""
        in_use = {b.ndim for b in self.bindings.values()}
        for ndim, prompts in list(self.prompt_sets.items()):
            if prompts.owner is None and ndim not in in_use:
                del self.prompt_sets[ndim]
                prompts.remove()

    def close(self) -> None:
        self._timer.stop()
        self._cleanup.stop()
        self._queue = []
        for binding in self.bindings.values():
            binding.disconnect()
        for prompts in self.prompt_sets.values():
            prompts.close()


def _overlap(a, b) -> bool:
    """Whether two layers' extents overlap in the last two (yx) world dimensions."""
    (a_lo, a_hi), (b_lo, b_hi) = (np.asarray(layer.extent.world)[:, -2:] for layer in (a, b))
    return bool(np.all(a_lo < b_hi) and np.all(b_lo < a_hi))
