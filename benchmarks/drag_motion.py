"""A drag of the box as a moving mouse makes it: how smooth the motion stays, and when the preview comes.

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/drag_motion.py [--drags 12] [--no-write]

The cardiac MRI sample, the widget, a box on the left ventricle; then drags through napari's select-mode
mouse bindings: a move every 10 ms from a Qt timer (so, as with a real mouse, moves wait while the event
loop draws a frame), 25 moves of half a pixel, then the mouse rests 0.4 s and the button comes up. Per
drag: the canvas frames per second while the mouse moves and the longest gap between two frames; the time
from the last move to the preview of the final box on screen, the button still down; and from the release
to the preview on screen. Settings, interleaved so the machine's drift hits all alike: the widget's
``DRAG_PAUSE_MS`` rest (the default), a longer rest, no preview at the rest (decoded from the release), and
the default with napari's layer list repainted at each move (the widget holds it during a drag).
Figures go into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_widget as B  # noqa: E402 - the shared viewer and wait helpers

START, END = "<!-- drag:start -->", "<!-- drag:end -->"
NEVER = 24 * 3600 * 1000  # a rest no drag reaches: the preview waits for the release


def one_drag(app, widget, frames: list, sign: float, moves: int = 25, step: float = 0.5) -> dict:
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks
    from qtpy.QtCore import QEventLoop, QTimer

    layer = widget.layers["box"]
    B.fresh(widget)  # every drag decoded, none taken from the masks kept per prompt
    start = tuple(float(v) for v in np.mean(layer.data[0], axis=0))
    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", is_dragging=True, position=start))
    state = {"i": 0, "last": None, "pos": start}
    loop = QEventLoop()
    timer = QTimer()
    timer.setInterval(10)

    def tick():
        if state["i"] >= moves:
            timer.stop()
            loop.quit()
            return
        state["i"] += 1
        state["pos"] = tuple(np.add(start, sign * step * state["i"]))
        mouse_move_callbacks(layer, read_only_mouse_event(type="mouse_move", is_dragging=True,
                                                          position=state["pos"]))
        state["last"] = time.perf_counter()

    timer.timeout.connect(tick)
    frames.clear()
    t0 = time.perf_counter()
    timer.start()
    loop.exec()
    t_last = state["last"]
    moving = [f for f in frames if t0 <= f <= t_last]
    final = widget.binding.read_prompts()
    stop_to_preview = None
    while time.perf_counter() - t_last < 0.4:  # the mouse rests, the button down
        app.processEvents()
        if stop_to_preview is None and widget.is_idle and widget.session.preview.shows(final):
            app.processEvents()  # the frame that shows it
            stop_to_preview = time.perf_counter() - t_last
        time.sleep(0.001)
    t_release = time.perf_counter()
    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", is_dragging=True,
                                                         position=state["pos"]))
    B.wait_for_paint(widget, B.generation(widget))
    app.processEvents()
    release_to_preview = time.perf_counter() - t_release
    B.pump(app, lambda: widget.is_idle)
    gaps = np.diff(moving) if len(moving) > 1 else np.array([np.nan])
    return {"fps": len(moving) / (t_last - t0), "worst_gap": float(np.max(gaps)),
            "stop": stop_to_preview, "release": release_to_preview}


def run(app, widget, frames, pause_ms: int, list_hold: bool, drags: int) -> dict:
    live = widget.live
    live._drag_pause.setInterval(pause_ms)
    if not list_hold:  # the layer list repaints the moved layer's thumbnail at each move, as before
        moved = type(live).gesture_moved
        live.gesture_moved = lambda layer: (moved(live, layer), live.list_hold.release())
    try:
        rows = [one_drag(app, widget, frames, 1.0 if i % 2 == 0 else -1.0) for i in range(drags)]
    finally:
        live.__dict__.pop("gesture_moved", None)
    stops = [r["stop"] for r in rows if r["stop"] is not None]
    return {"pause_ms": pause_ms, "list_hold": list_hold, "drags": drags,
            "fps": statistics.median(r["fps"] for r in rows),
            "worst_gap_ms": 1000 * statistics.median(r["worst_gap"] for r in rows),
            "stop_ms": 1000 * statistics.median(stops) if stops else float("nan"),
            "previewed_at_rest": len(stops),
            "release_ms": 1000 * statistics.median(r["release"] for r in rows)}


def table(results: list[dict], default_ms: int) -> str:
    def setting(r):
        pause = r["pause_ms"]
        text = ("no preview at the rest (decoded from the release)" if pause == NEVER
                else f"preview after a {pause} ms rest")
        if not r["list_hold"]:
            return text + ", layer list repainted at each move"
        return text + (" (default)" if pause == default_ms else "")

    head = ("| setting | drags | frames per second while moving | longest gap between frames (median) | "
            "mouse stops → preview on screen, button down | release → preview on screen |\n"
            "|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {setting(r)} | {r['drags']} | {r['fps']:.1f} | {r['worst_gap_ms']:.0f} ms | "
        + (f"**{r['stop_ms']:.0f} ms** ({r['previewed_at_rest']} of {r['drags']})" if r["previewed_at_rest"]
           else "—") + f" | **{r['release_ms']:.0f} ms** |\n" for r in results)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drags", type=int, default=12)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    B.pin_model(parser)
    args = parser.parse_args(argv)
    B.use_model(args)
    from napari.qt import get_qapp

    from napari_qlora_minisam._qt.live_preview import DRAG_PAUSE_MS
    from napari_qlora_minisam._sample_data import heart_mri

    app = get_qapp()
    viewer, widget = B.open_viewer(heart_mri, app)
    B.box_the_left_ventricle(app, viewer, widget)
    frames: list[float] = []
    viewer.window._qt_viewer.canvas._scene_canvas.events.draw.connect(
        lambda _event: frames.append(time.perf_counter()))
    widget.layers["box"].mode = "select"
    widget.layers["box"].selected_data = {0}
    settings = [(DRAG_PAUSE_MS, True), (2 * DRAG_PAUSE_MS, True), (NEVER, True), (DRAG_PAUSE_MS, False)]
    results = [run(app, widget, frames, pause, hold, args.drags) for pause, hold in settings * 2]
    viewer.close()
    text = table(results, DRAG_PAUSE_MS)
    print(text)
    if args.no_write:
        return
    section = ("### A drag as the mouse moves (`benchmarks/drag_motion.py`)\n\n"
               "A move every 10 ms (25 moves of half a pixel), a 0.4 s rest, then the release; medians per "
               f"setting, two interleaved runs each, load average {B.os.getloadavg()[0]:.1f} at the end.\n\n{text}")
    B.write_section(section, START, END, after="<!-- timeline:end -->")
    print(f"wrote {B.DOC}")


if __name__ == "__main__":
    main()
