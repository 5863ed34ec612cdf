"""Random-weight specs cannot pass for trained models: their names say so and loading one warns."""

from __future__ import annotations

import warnings

import pytest

from napari_qlora_minisam import ModelLoadError, load_model
from napari_qlora_minisam.models.registry import (
    HF_SPECS,
    RANDOM_PREFIXES,
    RENAMED_SPECS,
    RandomWeightsWarning,
    available_sources,
)


def test_every_spec_is_named_random_or_tiny():
    assert HF_SPECS
    misnamed = [name for name in HF_SPECS if not name.startswith(RANDOM_PREFIXES)]
    assert not misnamed, f"random specs must be named random_* or tiny_*: {misnamed}"
    # The old names are gone from everything load_model lists.
    assert not set(RENAMED_SPECS) & set(available_sources())
    assert set(RENAMED_SPECS.values()) <= set(HF_SPECS)


def test_loading_a_random_spec_warns():
    with pytest.warns(RandomWeightsWarning, match=r"'tiny_hf_sam' holds random weights.*not for segmentation"):
        backend = load_model("tiny_hf_sam", device="cpu")
    assert backend.source == "tiny_hf_sam"


def test_loading_litemedsam_does_not_warn_about_random_weights(monkeypatch):
    # The real network is slow to build: stand in for it, the point is which branch warns.
    from napari_qlora_minisam import loading

    monkeypatch.setattr(loading, "_litemedsam", lambda dev, quantize: _Stub())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        load_model("litemedsam", device="cpu")


class _Stub:
    def eval(self):
        return self


@pytest.mark.parametrize("old, new", sorted(RENAMED_SPECS.items()))
def test_old_spec_names_name_the_new_one(old, new):
    with pytest.raises(ModelLoadError, match=rf"{old}.*was renamed {new}; it holds random weights"):
        load_model(old, device="cpu")


def test_old_student_name_in_distillation_names_the_new_one():
    pytest.importorskip("minisam_train")
    from minisam_train.training.student import build_student_net

    with pytest.raises(ModelLoadError, match=r"student\.source.*renamed random_student_256\b"):
        build_student_net("minisam_student_256")


def test_building_a_distillation_student_does_not_warn():
    # A student is random until trained: the distillation task must not warn about it.
    pytest.importorskip("minisam_train")
    from minisam_train.training.student import build_student_net

    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        net = build_student_net("tiny_hf_sam_small")
    assert net.training
