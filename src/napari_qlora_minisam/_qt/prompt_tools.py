"""Tools for the picked image that keys drive: box or points mode, click polarity (N, Shift+N), slice steps."""

from __future__ import annotations

from .layers import flip_selected_polarity, set_polarity_default


class PromptTools:
    """Acts on the prompt layers of ``widget.binding`` (the picked image) and on the form's polarity box."""

    def __init__(self, widget):
        self.widget = widget
        widget.ui.negative.toggled.connect(self._negative_toggled)

    def _layer(self, role: str):
        return self.widget.layers.get(role)

    def activate_box_mode(self) -> None:
        if (box := self._layer("box")) is not None:
            self.widget.viewer.layers.selection.active = box
            box.mode = "add_rectangle"

    def activate_point_mode(self) -> None:
        if (points := self._layer("points")) is not None:
            self.widget.viewer.layers.selection.active = points
            points.mode = "add"

    def toggle_prompt_mode(self) -> None:
        points = self._layer("points")
        if points is not None and self.widget.viewer.layers.selection.active is not points:
            self.activate_point_mode()
        else:
            self.activate_box_mode()

    def toggle_negative(self) -> None:
        negative = self.widget.ui.negative
        negative.setChecked(not negative.isChecked())

    def apply_polarity(self, points) -> None:
        """Give a (new) points layer the polarity the form shows."""
        set_polarity_default(points, self.widget.ui.negative.isChecked())

    def _negative_toggled(self, negative: bool) -> None:
        # Only the next clicks change: napari keeps the last click selected, and flipping it here would
        # turn "click positive, press N, click negative" into two negatives.
        for prompts in self.widget.images.prompt_sets.values():
            if prompts.layers["points"] is not None:
                set_polarity_default(prompts.layers["points"], negative)

    def flip_selected_points(self) -> None:
        """Positive <-> negative for the selected clicks (Shift+N); their preview follows the features event."""
        if (points := self._layer("points")) is not None:
            flip_selected_polarity(points)

    def next_slice(self, step: int = 1) -> None:
        """Step the slice in view, and embed the one after it meanwhile, so the next step is instant."""
        session, viewer = self.widget.session, self.widget.viewer
        if session is None or not session.depth:
            return
        viewer.dims.set_current_step(0, viewer.dims.current_step[0] + step)
        if 0 <= session.z + step < session.shape[0]:
            self.widget.live.embed(session, session.z + step)

    def previous_slice(self) -> None:
        self.next_slice(-1)
