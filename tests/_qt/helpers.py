"""GUI test helpers: wait for the widget's workers with qtbot, compare masks."""

from __future__ import annotations

import numpy as np

# Under Xvfb with 5 other jobs on 2 cores an embedding can take 10 s; these are ceilings, not timings.
MODEL_TIMEOUT_MS = 300_000
STEP_TIMEOUT_MS = 120_000


def add_sample(viewer, sample_fn):
    layers = []
    for data, kwargs, kind in sample_fn():
        layers.append(getattr(viewer, f"add_{kind}")(data, **kwargs))
    return layers


def wait_idle(qtbot, widget, timeout=STEP_TIMEOUT_MS):
    qtbot.waitUntil(lambda: widget.is_idle, timeout=timeout)


def wait_preview(qtbot, widget, painted_before, timeout=STEP_TIMEOUT_MS):
    """Until a preview newer than ``painted_before`` is on screen and nothing is queued."""
    qtbot.waitUntil(lambda: widget.previews_painted > painted_before and widget.is_idle, timeout=timeout)


def dice(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * (a & b).sum() / s
