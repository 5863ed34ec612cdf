"""Running the widget's compute off the Qt thread.

Compute is written as plain generators (Qt-free, see ``tasks.py``); :func:`start` runs one in a napari
``thread_worker`` and delivers yields/results back on the Qt thread. With ``MINISAM_NAPARI_SYNC=1`` it runs
the generator inline instead, so a scripted session is deterministic — the threaded path stays the
default and is what the GUI tests exercise.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from napari.qt.threading import create_worker

log = logging.getLogger(__name__)
SYNC_ENV = "MINISAM_NAPARI_SYNC"


def run_synchronously() -> bool:
    return os.environ.get(SYNC_ENV, "").strip().lower() in ("1", "true", "yes")


class _InlineWorker:
    """Stands in for a napari worker in synchronous mode (same ``quit``/``is_running`` surface)."""

    is_running = False
    abort_requested = False

    def quit(self):
        self.abort_requested = True


def start(generator_fn: Callable, *args, on_yielded=None, on_returned=None, on_errored=None,
          on_finished=None, keep: set | None = None):
    """Run ``generator_fn(*args)`` in a worker thread (or inline when synchronous).

    Args:
        on_yielded / on_returned / on_errored / on_finished: Qt-thread callbacks.
        keep: a set the worker is held in while running (workers that nobody references get collected).

    Returns:
        The worker (``quit()`` asks a generator to stop at its next ``yield``).
    """
    if run_synchronously():
        worker = _InlineWorker()
        try:
            gen = generator_fn(*args)
            while True:
                if worker.abort_requested:
                    break
                try:
                    value = next(gen)
                except StopIteration as stop:
                    if on_returned:
                        on_returned(stop.value)
                    break
                if on_yielded:
                    on_yielded(value)
        except Exception as exc:  # noqa: BLE001 - delivered to the widget like a thread's error
            if on_errored:
                on_errored(exc)
            else:
                raise
        finally:
            if on_finished:
                on_finished()
        return worker

    # Passing "errored" here stops superqt from also re-raising the error in the Qt event loop: the
    # widget reports it as a message instead.
    on_errored = on_errored or (lambda exc: log.error("worker failed", exc_info=exc))
    worker = create_worker(generator_fn, *args, _start_thread=False, _connect={"errored": on_errored})
    if on_yielded and hasattr(worker, "yielded"):
        worker.yielded.connect(on_yielded)
    if on_returned:
        worker.returned.connect(on_returned)
    if keep is not None:
        keep.add(worker)
        worker.finished.connect(lambda: keep.discard(worker))
    if on_finished:
        worker.finished.connect(on_finished)
    worker.start()
    return worker


def stop_all(running: set, timeout_s: float = 60.0) -> bool:
    """Ask every worker in ``running`` to stop and wait for their threads (True if all ended in time).

    A generator stops at its next ``yield``; a decode or an embedding in progress runs to its end. Waiting
    here, before Qt deletes the workers' signal objects, is what lets napari close mid-propagation without
    a worker emitting into a deleted object.
    """
    import time

    from qtpy.QtCore import QCoreApplication

    for worker in list(running):
        worker.quit()
    deadline = time.monotonic() + timeout_s
    while running and time.monotonic() < deadline:
        QCoreApplication.processEvents()
        time.sleep(0.01)
    return not running
