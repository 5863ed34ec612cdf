"""``minisam-train average``: the weight average of students of one architecture (a "model soup").

Example:
    minisam-train average "sources=[runs/stage4/student,runs/stage5/student]" output_dir=runs/soup/student
"""

from __future__ import annotations

import logging

from omegaconf import OmegaConf

from ..training.weight_average import average_models

log = logging.getLogger(__name__)


def run(cfg) -> dict:
    sources = list(OmegaConf.to_container(cfg.sources, resolve=True) or [])
    weights = cfg.weights
    weights = None if weights is None else list(OmegaConf.to_container(weights, resolve=True))
    summary = average_models(sources, cfg.output_dir, weights)  # errors: ValueError, ModelLoadError (cli words them)
    log.info("averaged %d models into %s", len(sources), cfg.output_dir)
    return summary
