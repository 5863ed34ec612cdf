"""Where the time between a box edit and its painted preview goes, in the real widget.

Run under a display (``xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/widget_timeline.py``).
It opens the cardiac MRI sample in napari with the widget, draws a box on the left ventricle, then drags
the box by a pixel through napari's own mouse bindings ``--edits`` times (benchmarks/bench_widget.py's
``drag_box``). Every drag is stamped from the button release:

* ``release``: napari's release handling on the Qt thread (the layer's CHANGED event, its thumbnail);
* ``decode``: the widget's worker, from the task start to its end (LiteMedSAM's decoder + mask);
* ``paint``: the preview written into its labels layer (Qt thread);
* ``frame``: from the paint to the end of the canvas repaint that shows it (napari's draw, Qt's
  composition of the window through OpenGL, the buffer swap);
* ``list repaints before the preview``: how many drags repainted napari's layer list while the decode
  ran (each such repaint composes the whole window; the widget holds them back, ``_qt/repaint_hold.py``).

Settings: the widget's defaults; drags decoded from the release (no preview at their rest), and on that
path, where they still matter, the box window off (previews decoded on the whole grid,
``MiniSamPredictor.predict(box_window=...)``), the layer-list hold off, the canvas hold off. Drags are
released as the mouse stops, once the canvas has drawn the moved box: by then the drag has usually rested
the widget's ``DRAG_PAUSE_MS`` and its decode has begun (the "decode" column says how often). Then clicks: a positive point added inside the box through napari's
add-mode bindings, the button held ~0.1 s as a user's is, stamped from the button coming up: the defaults
(decoded from the press, ``_qt/gestures.py``), decoded from the release instead, and that without the
canvas hold. Each setting runs twice, interleaved, so a change of machine load hits all alike. ``--bf16``
adds the opt-in bf16 decoder. Figures go into docs/benchmarks.md, the plot into
docs/images/widget_latency.png.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_widget as B  # noqa: E402 - the shared drag helpers

START, END = "<!-- timeline:start -->", "<!-- timeline:end -->"


def run(edits: int, hold: bool, bf16: bool = False, window: bool = True, canvas: bool = True,
        clicks: bool = False, ahead: bool = True) -> dict:
    """``ahead``: clicks decoded from their press, drags from their rest (the widget's defaults); else from
    the release, as before the widget watched gestures (``_qt/gestures.py``)."""
    from napari.qt import get_qapp
    from qtpy.QtCore import QEvent, QObject

    from napari_qlora_minisam._qt import live_preview as LP
    from napari_qlora_minisam._qt import tasks
    from napari_qlora_minisam._sample_data import heart_mri

    app = get_qapp()
    stamps: list[tuple[float, str]] = []

    def stamp(what: str) -> None:
        stamps.append((time.perf_counter(), what))

    original_task = tasks.preview_task

    def timed_task(*args, **kwargs):
        stamp("task start")
        gen = original_task(*args, **kwargs)
        try:
            while True:
                yield next(gen)
        except StopIteration as stop:
            stamp("task end")
            return stop.value

    LP.tasks.preview_task = timed_task
    from napari_qlora_minisam.predictor import MiniSamPredictor

    original_predict = MiniSamPredictor.predict
    if not window:  # the widget before box previews were windowed: the whole grid upscaled every time
        MiniSamPredictor.predict = lambda self, *a, box_window=False, **k: original_predict(self, *a, **k)
    try:
        viewer, widget = B.open_viewer(heart_mri, app)
        live = widget.live  # the ablations switch its mechanisms off one by one
        if not hold:
            live.list_hold.hold = lambda: None
        if not canvas:
            live.canvas_hold.hold = lambda: None
        if not ahead:  # the widget before it decoded clicks from their press and drags from their rest
            live._decode_click_ahead = lambda *a, **k: None
            live._drag_pause.setInterval(24 * 3600 * 1000)
        widget.ui.bf16_decoder.setChecked(bf16)
        assert widget.model.decoder_precision == ("bf16" if bf16 else "fp32")
        original_paint = live._paint

        def timed_paint(preview):
            stamp("paint start")
            original_paint(preview)
            stamp("paint end")

        live._paint = timed_paint
        layer_list = viewer.window._qt_viewer.layers

        class PaintSpy(QObject):
            def eventFilter(self, obj, event):  # noqa: N802 - Qt's name
                if event.type() == QEvent.Type.Paint and obj is layer_list.viewport():
                    stamp("list paint")
                return False

        spy = PaintSpy()
        app.installEventFilter(spy)
        ys, xs, _ = B.box_the_left_ventricle(app, viewer, widget)
        rows = []
        for i in range(edits):
            B.fresh(widget)  # every edit decoded, none taken from the masks kept per prompt
            if clicks:  # a positive point inside the box, clicked through napari's add-mode bindings
                release = B.click_point(app, widget.layers["points"], B.click_position(ys, xs, i))
            else:
                shift = 1.0 if i % 2 == 0 else -1.0
                release = B.drag_box(app, widget, shift, shift)
            B.pump(app, lambda: widget.is_idle)
            stamps.clear()
            t0 = time.perf_counter()
            release()
            t_release = time.perf_counter()
            B.wait_for_paint(widget, B.generation(widget))
            app.processEvents()  # the canvas repaint of the new preview
            t_end = time.perf_counter()
            first = {}
            for t, what in stamps:
                first.setdefault(what, t)
            decoded_after = "task start" in first  # else decoded before the release (at a click's press)
            rows.append({
                "total": t_end - t0, "release": t_release - t0, "ahead": not decoded_after,
                "decode": first["task end"] - first["task start"] if decoded_after else float("nan"),
                "paint": first["paint end"] - first["paint start"],
                "frame": t_end - first["paint end"],
                "list_before": any(w == "list paint" and t < first["paint start"] for t, w in stamps),
            })
            B.pump(app, lambda: widget.is_idle)
            if clicks:
                widget.layers["points"].data = widget.layers["points"].data[:0]
                B.pump(app, lambda: widget.is_idle)
        app.removeEventFilter(spy)
        viewer.close()
    finally:
        LP.tasks.preview_task = original_task
        MiniSamPredictor.predict = original_predict
    med = {k: 1000 * statistics.median(r[k] for r in rows) for k in ("total", "release", "paint", "frame")}
    after = [r["decode"] for r in rows if not r["ahead"]]
    med["decode"] = 1000 * statistics.median(after) if after else float("nan")
    med["ahead"] = sum(r["ahead"] for r in rows)
    med["list_before"] = sum(r["list_before"] for r in rows)
    med["edits"] = edits
    med["hold"] = hold
    med["canvas"] = canvas
    early = ", decoded from the press" if clicks else ", decoded from its rest"
    med["edit"] = ("click" if clicks else "drag") + (early if ahead else ", decoded from the release")
    med["decoder"] = "bf16" if bf16 else "fp32"
    med["window"] = window
    return med


def _decode_cell(r: dict) -> str:
    after = r["edits"] - r["ahead"]
    if not after:
        return f"before the release ({r['ahead']} of {r['edits']})"
    cell = f"{r['decode']:.1f} ms"
    return cell if not r["ahead"] else f"{cell} ({r['ahead']} of {r['edits']} before the release)"


def table(results: list[dict]) -> str:
    head = "| edit | layer-list hold | canvas hold | box window | decoder | edits | release → preview painted | " \
           "napari's release | decode (worker) | paint | frame | list repaints during the decode |\n" \
           "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    return head + "".join(
        f"| {r['edit']} | {'on (default)' if r['hold'] else 'off'} | {'on (default)' if r['canvas'] else 'off'} | "
        f"{'on (default)' if r['window'] else 'off'} | {r['decoder']} | "
        f"{r['edits']} | **{r['total']:.0f} ms** | {r['release']:.1f} ms | "
        f"{_decode_cell(r)} | {r['paint']:.1f} ms | {r['frame']:.1f} ms | {r['list_before']} of {r['edits']} |\n"
        for r in results)


FIGURE = B.REPO / "docs" / "images" / "widget_latency.png"


def label(r: dict) -> str:
    off = [name for name, on in (("layer-list hold", r["hold"]), ("canvas hold", r["canvas"]),
                                 ("box window", r["window"])) if not on]
    extra = (", bf16" if r["decoder"] == "bf16" else "") + ("".join(f", no {o}" for o in off) if off else "")
    return f"{r['edit']}{extra or (' (defaults)' if 'release' not in r['edit'] else '')}"


def plot(runs: list[dict], path=FIGURE) -> None:
    """Bars: the mean of a setting's runs; dots: each run. The dashed line is the issue's 50 ms target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(label(r) for r in runs))
    totals = {name: [r["total"] for r in runs if label(r) == name] for name in labels}
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.4))
    ys = np.arange(len(labels))[::-1]
    colors = ["#2b8cbe" if "defaults" in name else "#bdbdbd" for name in labels]  # blue: what users get
    ax.barh(ys, [np.mean(totals[n]) for n in labels], color=colors, height=0.6)
    for y, name in zip(ys, labels):
        ax.plot(totals[name], [y] * len(totals[name]), "k.", ms=6)
    ax.axvline(50, color="#d7301f", ls="--", lw=1)
    ax.set_ylim(-0.9, len(labels) - 0.5)
    ax.text(50, -0.75, " target 50 ms", color="#d7301f", va="bottom", fontsize=8)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlabel("button up → preview on screen, median per run (ms)")
    ax.set_title("MiniSAM widget, LiteMedSAM, 2-core CPU under Xvfb (widget_timeline.py)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=30)
    parser.add_argument("--bf16", action="store_true", help="also time the opt-in bf16 decoder (native bf16 only)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    B.pin_model(parser)
    args = parser.parse_args(argv)
    B.use_model(args)
    # Interleaved (on, off, on, off) so a change of machine load hits both alike.
    from napari_qlora_minisam.models.cpu_features import bf16_is_native

    # (hold, bf16, window, canvas, ahead): the defaults; decoded from the release; and on that path, where
    # the other settings still matter, each one switched off (or bf16 on) alone.
    settings = [(True, False, True, True, True), (True, False, True, True, False), (True, False, False, True, False),
                (False, False, True, True, False), (True, False, True, False, False)]
    if args.bf16 and bf16_is_native():
        settings.insert(2, (True, True, True, True, False))
    runs = [run(args.edits, hold, bf16, window, canvas, ahead=ahead)
            for hold, bf16, window, canvas, ahead in settings * 2]
    # Clicks: a point added inside the box; the defaults, then without the decode from the press, then
    # without the canvas hold too.
    click_settings = [(True, True), (True, False), (False, False)]
    runs += [run(args.edits, True, canvas=canvas, clicks=True, ahead=ahead) for canvas, ahead in click_settings * 2]
    text = table(runs)
    print(text)
    if args.no_write:
        return
    plot(runs)
    section = (f"### Where the time goes (`benchmarks/widget_timeline.py`)\n\nMedians per edit, stamped "
               f"from the button release; two interleaved runs per setting, load average "
               f"{B.os.getloadavg()[0]:.1f} at the end.\n\n{text}\n"
               f"![Latency per setting](images/{FIGURE.name})\n")
    B.write_section(section, START, END, after=B.END)  # right after bench_widget.py's plugin section
    print(f"wrote {B.DOC}")


if __name__ == "__main__":
    main()
