"""Errors of the training toolkit that ``minisam-train`` reports in a line or two instead of a traceback.

The data readers keep their own :class:`~minisam_train.data.errors.DataError`; the core's
``MiniSamError`` family (``ModelLoadError``, ``AdapterError``, ``InputError``) covers models and adapters.
``cli.main`` maps all of them, plus Hydra / OmegaConf configuration errors, to
``minisam-train <verb>: error: <message>`` (see ``cli.report_error``).
"""

from __future__ import annotations

from napari_qlora_minisam.errors import MiniSamError


class ConfigError(MiniSamError, ValueError):
    """A setting is unknown or cannot be used; the message names the key and a fix (exit code 2)."""


class TrainingInterrupted(MiniSamError):
    """SIGINT / SIGTERM stopped a training loop after it wrote a checkpoint at ``step``.

    Raised by ``tasks.adapt`` and ``tasks.distill`` once the checkpoint is on disk; the command line turns
    it into the resume command and exit code ``128 + signum`` (130 for Ctrl-C).
    """

    def __init__(self, step: int, checkpoint, output_dir, signum: int):
        self.step, self.checkpoint, self.output_dir, self.signum = int(step), checkpoint, output_dir, int(signum)
        super().__init__(f"interrupted at step {self.step}; checkpoint written to {checkpoint}")
