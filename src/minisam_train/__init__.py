"""minisam-train: distillation, QLoRA modality adapters and COSMOS evaluation for napari-qlora-minisam.

Depends on the ``napari_qlora_minisam`` core, never the reverse, and never on Qt.
"""

__version__ = "0.1.0"
