"""The CT and MRI adapters shipped in the package: listed, documented, small, and made for the bundled base."""

from __future__ import annotations

import json

import pytest

from napari_qlora_minisam.adapters import list_adapters, pretrained_adapters_dir


@pytest.mark.parametrize("modality", ["ct", "mri"])
def test_shipped_adapter_is_complete(modality, litemedsam):
    folder = pretrained_adapters_dir() / modality
    meta = json.loads((folder / "minisam_adapter.json").read_text())
    assert meta["modality"] == modality and meta["quantize"] == "nf4"
    assert meta["base_identity"] == litemedsam.identity                  # loads onto the bundled LiteMedSAM
    assert meta["data"]["split_key"] == "adapt_train" and meta["data"]["train_slices"]
    assert meta["training"]["trainable_share"] < 0.01
    assert "box/deployable" in meta["scores"]["dice"][modality]           # measured test scores recorded
    assert (folder / "adapter_model.safetensors").stat().st_size < 5e6
    assert modality in {a.name for a in list_adapters([pretrained_adapters_dir()])}
