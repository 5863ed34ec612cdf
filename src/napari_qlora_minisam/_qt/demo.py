"""``python -m napari_qlora_minisam.demo [sample]``: napari + the docked widget + a shipped sample."""

from __future__ import annotations

import argparse

SAMPLES = ("heart_mri", "pancreas_ct", "brain_mri", "lung_ct_volume")
PLUGIN, WIDGET = "napari-qlora-minisam", "MiniSAM segmentation"


def open_demo(sample: str = "heart_mri", model: str | None = None, show: bool = True):
    """Build the demo viewer; returns ``(viewer, widget)`` (used by the screenshot script too)."""
    import napari

    viewer = napari.Viewer(title="napari-qlora-minisam demo", show=show)
    viewer.open_sample(PLUGIN, sample)
    if model:
        import os

        from .widget import MODEL_ENV

        os.environ[MODEL_ENV] = model
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    if sample == "lung_ct_volume":
        image = viewer.layers["chest CT"]
        viewer.dims.set_current_step(0, image.data.shape[0] // 2)
    return viewer, widget


def run(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m napari_qlora_minisam.demo",
                                     description="napari with the MiniSAM widget on a real sample.")
    parser.add_argument("sample", nargs="?", default="heart_mri", choices=SAMPLES)
    parser.add_argument("--model", default=None, help="model source (default: bundled minisam)")
    args = parser.parse_args(argv)
    import napari

    open_demo(args.sample, args.model)
    napari.run()
