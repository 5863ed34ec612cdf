"""The widget's status line: one message, and errors that go away once their cause is fixed.

Each error is filed under what caused it (``model``, ``adapter``, ``image``, ``preview``, ``commit``,
``propagation``...). A later success of the same kind clears it, so a red line never stays beside a
preview that works; an info message replaces the text but not an error still standing.
"""

from __future__ import annotations

import logging

from qtpy.QtWidgets import QLabel

from ..errors import MiniSamError

log = logging.getLogger(__name__)
ERROR_STYLE = "color: #ff6b6b;"
WARNING_STYLE = "color: #ffb347;"


def describe(exc: BaseException) -> str:
    """A message for the user: our errors already say what to do; others get their type named."""
    if isinstance(exc, MiniSamError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class StatusLine:
    """Drives a ``QLabel``: ``info``, ``warn`` and ``error`` by source, ``clear`` when a source succeeds.

    The newest message is shown. An error is remembered until its source succeeds: clearing the error on
    screen brings back the last information (or another error still standing), never stale red text.
    """

    def __init__(self, label: QLabel):
        self.label = label
        self.errors: dict[str, str] = {}
        self._info = ""
        self._shown: str | None = None  # the source of the error on screen, None for information

    @property
    def text(self) -> str:
        return self.label.text()

    def info(self, text: str, clears: tuple = ()) -> None:
        """Show ``text``; ``clears`` names the sources it proves fixed."""
        for source in clears:
            self.errors.pop(source, None)
        self._info = text
        self._set(text, "", None)

    def warn(self, text: str) -> None:
        """A warning (orange): shown like information, not remembered as an error."""
        self._set(text, WARNING_STYLE, None)

    def error(self, source: str, exc_or_text) -> None:
        text = exc_or_text if isinstance(exc_or_text, str) else describe(exc_or_text)
        if not isinstance(exc_or_text, (str, MiniSamError)):
            log.error("MiniSAM %s failed", source, exc_info=exc_or_text)
        self.errors[source] = text
        self._set(text, ERROR_STYLE, source)

    def clear(self, *sources: str) -> None:
        for source in sources:
            self.errors.pop(source, None)
        if self._shown in sources:
            if self.errors:
                source, text = list(self.errors.items())[-1]
                self._set(text, ERROR_STYLE, source)
            else:
                self._set(self._info, "", None)

    def _set(self, text: str, style: str, source: str | None) -> None:
        self._shown = source
        self.label.setText(text)
        self.label.setStyleSheet(style)


def guidance(session, model_ready: bool, has_objects: bool, refused: str | None = None) -> str:
    """The next step to suggest while the user has nothing prompted (empty once prompts exist); ``refused``:
    why the image last picked cannot be segmented, while no other is."""
    if session is None and refused:
        return f"{refused} Pick or open a 2D image or a 3D stack."
    if session is None:
        return "Open an image (File → Open, or File → Open Sample → QLoRA MiniSAM)."
    if not model_ready:
        return "Loading the model… you can draw boxes meanwhile."
    if session.prompts:
        return ""
    if has_objects:
        text = "Draw the next box (several boxes make several objects), press C to commit. Brush on the objects layer to correct; Ctrl+Z undoes."
    else:
        text = "Draw a box round a structure, press C to commit it. Click inside to refine (N: negative clicks)."
    if not session.depth:
        return text
    text += " G propagates an object through the stack."
    return text + (" To correct a slice: box it, Shift+R, then Re-propagate." if has_objects else "")
