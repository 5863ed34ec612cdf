"""Adapter training: a QLoRA adapter from labelled images, with the recipe of ``minisam-train adapt``.

``train_adapter`` is the entry point for arrays (the plugin, notebooks); ``minisam-train adapt`` is a front end
over the same pieces (``fit.fit_adapter``) for COSMOS folders and TIFF pairs, adding Accelerate checkpoints.
"""

from .api import train_adapter
from .loop import TrainProgress
from .recipe import AdapterRecipe, EarlyStopping, LoraSettings, LossWeights

__all__ = ["train_adapter", "TrainProgress", "AdapterRecipe", "EarlyStopping", "LoraSettings", "LossWeights"]
