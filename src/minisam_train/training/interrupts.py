"""Ctrl-C / SIGTERM during training: finish the current step, checkpoint it, then stop.

A training loop polls a :class:`StopOnSignal` between optimizer steps (it is the ``should_stop`` callable
the core adapter loop already takes for the plugin's Cancel button). The first signal only sets the flag,
so a checkpoint is never cut in half; a second one restores the previous handlers and raises
``KeyboardInterrupt`` at once, for a user who does not want to wait for the step to end.

Several processes (``accelerate launch``): the launcher forwards Ctrl-C to every worker once (and kills
them 30 s later), but a signal may reach them between different steps, or reach only one. The loops
therefore agree on the flag before every step (an all-reduce: ``distill_loop._stop_requested``,
``runtime.any_process`` in the adapt loop), so all processes stop, and checkpoint, at the same step.
"""

from __future__ import annotations

import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal:
    """Context manager: while active, SIGINT / SIGTERM set a flag instead of ending the process.

    Outside the main thread (where Python cannot install handlers) it does nothing and never fires.

    Example::

        with StopOnSignal() as stop:
            for step in ...:
                if stop():
                    save_checkpoint(step); break
    """

    def __init__(self, signals=SIGNALS):
        self.signals = tuple(signals)
        self.signum: int | None = None
        self._previous: dict = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        self._restore()
        return False

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the second signal: stop now, without a checkpoint
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum
        # os.write, not print: the signal may arrive while the main thread is inside a write to stderr.
        os.write(2, f"\n{signal.Signals(signum).name} received: stopping after this step and writing a "
                    "checkpoint (send it again to stop at once, without one)\n".encode())
