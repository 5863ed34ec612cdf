"""``train_adapter`` on the tiny random model: arrays in, a loadable adapter out, attached and active.

Synthetic scenes (bright discs, one label id each) keep these independent of the shared data; every run is
a handful of steps. The real LiteMedSAM run is in ``test_train_adapter_litemedsam.py``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading

import numpy as np
import pytest
import torch

from napari_qlora_minisam import AdapterError, InputError, MiniSamPredictor, load_model, train_adapter
from napari_qlora_minisam.adapter_training import AdapterRecipe, EarlyStopping, LoraSettings, TrainProgress
from napari_qlora_minisam.adapter_training.views import AugmentConfig
from napari_qlora_minisam.embedding_cache import image_digest

FILES = {"adapter_config.json", "adapter_model.safetensors", "minisam_adapter.json"}  # (+ peft's README.md)
# A short run (2 views per slice, 2 per step) whose last weights are the ones written: early stopping would
# restore step 0 of a random model.
SHORT = AdapterRecipe(steps=4, batch_size=2, val_every=2, log_every=1, augment=AugmentConfig(views_per_image=2),
                      early_stopping=EarlyStopping(enabled=False))


def scene(seed: int, size: int = 96, ids=(1, 2, 3)):
    """A noisy image with one bright disc per label id, and its labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(50, 8, (size, size)).astype(np.float32)
    labels = np.zeros((size, size), np.uint16)
    for k in ids:
        cx, cy = rng.integers(18, size - 18, size=2)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= int(rng.integers(7, 12)) ** 2
        image[disc] += 40 + 15 * k
        labels[disc] = k
    return image, labels


@pytest.fixture()
def tiny():
    return load_model("tiny_hf_sam", device="cpu")


def lora_weights(model, name):
    """The adapter's LoRA tensors keyed as in its saved file (peft drops the adapter name there)."""
    return {k.replace(f".{name}.", "."): p.detach().clone() for k, p in model.peft_model.named_parameters()
            if "lora_" in k and f".{name}." in k}


def saved_weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def assert_same_tensors(a, b):
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k


def box_logits(model, image, box):
    predictor = MiniSamPredictor(model)
    predictor.set_image(image)
    return predictor.predict(box=box, multimask=False)[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model = load_model("tiny_hf_sam", device="cpu")
    out = tmp_path_factory.mktemp("adapters")
    samples = [scene(0), scene(1)]
    seen = []
    path = train_adapter(model, samples, out, "discs", max_minutes=None, progress=seen.append, recipe=SHORT,
                         sample_names=["a.tif", "b.tif"], modality="mri")
    return model, samples, out, path, seen


def test_writes_a_complete_adapter_and_records_what_it_saw(trained):
    model, samples, out, path, _ = trained
    assert path == out / "discs" and FILES <= {f.name for f in path.iterdir()}
    meta = json.loads((path / "minisam_adapter.json").read_text())
    assert meta["name"] == "discs" and meta["modality"] == "mri" and meta["base_source"] == "tiny_hf_sam"
    assert [(i["name"], i["digest"]) for i in meta["training_images"]] == [
        ("a.tif", image_digest(samples[0][0])), ("b.tif", image_digest(samples[1][0]))]
    assert meta["objects"]["total"] == 6 and meta["objects"]["held_back"] == 1       # 20 % of 6, at least 1
    assert meta["objects"]["train_masks"] == 5 and meta["objects"]["held_back_masks"] == 1
    scores = meta["scores"]
    assert scores["held_back_objects"] == 1
    for prompt in ("box", "click"):
        assert all(0.0 <= scores[prompt][k] <= 1.0 for k in ("before", "after"))
    training = meta["training"]
    assert training["seed"] == 0 and training["steps_done"] == 4 and training["stopped"] == "steps"
    assert training["max_minutes"] is None and training["trainable_share"] < 0.01
    assert meta["point_multimask"] is False and meta["intensity"] == "minmax"


def test_adapter_is_attached_active_and_equals_the_written_one(trained):
    model, samples, _, path, _ = trained
    assert model.active_adapter == "discs" and not model.net.training
    assert model.adapter_info["discs"]["scores"] == json.loads((path / "minisam_adapter.json").read_text())["scores"]
    assert not model.point_multimask                       # clicks decoded as the adapter was trained
    assert not any(p.requires_grad for p in model.net.parameters())
    image, labels = samples[0]
    box = np.array([10, 10, 70, 70], np.float32)
    attached = box_logits(model, image, box)
    reloaded = load_model("tiny_hf_sam", adapters=[path], device="cpu")
    np.testing.assert_array_equal(box_logits(reloaded, image, box), attached)
    from napari_qlora_minisam.adapters import set_adapter

    set_adapter(reloaded, None)
    change = np.abs(box_logits(reloaded, image, box) - attached).max()
    assert change > 1e-3 * np.abs(attached).max()            # the adapter changes predictions (tiny logits)


def test_progress_reports_every_step(trained):
    *_, seen = trained
    assert all(isinstance(p, TrainProgress) for p in seen)
    assert [p.step for p in seen] == list(range(5)) and {p.total for p in seen} == {4}
    assert seen[0].loss is None and all(p.loss > 0 for p in seen[1:])
    assert all(p.val_dice is not None for p in seen)       # an object is held back: validated at step 0
    assert [p.elapsed_s for p in seen] == sorted(p.elapsed_s for p in seen)
    with pytest.raises(AttributeError):
        seen[0].step = 3                                      # frozen


def test_cancel_stops_at_the_next_step_and_keeps_the_best_weights(tiny, tmp_path, monkeypatch):
    """Validation is scripted so the best step (2) is neither the first nor the last before the cancel (4)."""
    from napari_qlora_minisam.adapter_training import loop

    script = iter([0.10, 0.20, 0.50, 0.30, 0.30, 0.30])
    monkeypatch.setattr(loop, "validate", lambda *a, **k: {"val_dice": next(script), "val_dice_box": 0.0,
                                                           "val_dice_point1": 0.0})
    cancel, snapshots = threading.Event(), {}

    def progress(p):
        snapshots[p.step] = lora_weights(tiny, "cancelled")
        if p.step == 4:
            cancel.set()

    recipe = AdapterRecipe(steps=50, batch_size=1, val_every=1, early_stopping=EarlyStopping(patience=10))
    path = train_adapter(tiny, [scene(0)], tmp_path, "cancelled", progress=progress, cancel=cancel, recipe=recipe,
                         max_minutes=None)
    meta = json.loads((path / "minisam_adapter.json").read_text())
    assert meta["training"]["stopped"] == "cancelled" and meta["training"]["steps_done"] == 4
    assert meta["training"]["best_validation"] == {"val_dice": 0.5, "step": 2}
    assert FILES <= {f.name for f in path.iterdir()} and [p.name for p in tmp_path.iterdir()] == ["cancelled"]
    assert_same_tensors(saved_weights(path), snapshots[2])
    assert any(not torch.equal(snapshots[2][k], snapshots[4][k]) for k in snapshots[2])
    assert tiny.active_adapter == "cancelled"


def test_cancel_accepts_a_callable(tiny, tmp_path):
    path = train_adapter(tiny, [scene(0)], tmp_path, "at-once", cancel=lambda: True, recipe=SHORT)
    meta = json.loads((path / "minisam_adapter.json").read_text())
    assert meta["training"]["stopped"] == "cancelled" and meta["training"]["steps_done"] == 0
    assert FILES <= {f.name for f in path.iterdir()}


def test_init_adapter_continues_from_an_adapter(tiny, tmp_path):
    from napari_qlora_minisam.adapters import detach_adapter

    small = dataclasses.replace(SHORT, steps=2, lora=LoraSettings(r=4, alpha=8))
    first = train_adapter(tiny, [scene(0)], tmp_path, "first", recipe=small)
    detach_adapter(tiny, "first")
    start = {}
    second = train_adapter(tiny, [scene(1)], tmp_path, "second", init_adapter=first, recipe=SHORT,
                           progress=lambda p: start.setdefault(p.step, lora_weights(tiny, "second")))
    assert_same_tensors(start[0], saved_weights(first))       # training starts from the first adapter ...
    assert json.loads((second / "adapter_config.json").read_text())["r"] == 4   # ... with its LoRA shape
    after = saved_weights(second)
    assert any(not torch.equal(after[k], start[0][k]) for k in after)          # ... and goes on learning
    meta = json.loads((second / "minisam_adapter.json").read_text())
    assert meta["training"]["init_adapter"] == str(first.resolve()) and meta["training"]["init_adapter_name"] == "first"
    assert tiny.active_adapter == "second" and "first" not in tiny.peft_model.peft_config


def test_overwrite_replaces_folder_and_attached_adapter(tiny, tmp_path):
    first = train_adapter(tiny, [scene(0)], tmp_path, "same", recipe=SHORT)
    before = saved_weights(first)
    with pytest.raises(AdapterError, match="exists already"):
        train_adapter(tiny, [scene(1)], tmp_path, "same", recipe=SHORT)
    again = train_adapter(tiny, [scene(1)], tmp_path, "same", recipe=SHORT, overwrite=True, init_adapter=first)
    assert again == first and tiny.active_adapter == "same" and list(tiny.peft_model.peft_config) == ["same"]
    assert any(not torch.equal(before[k], v) for k, v in saved_weights(again).items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same"]


def _other_base_adapter(tmp_path):
    """An adapter folder made for another base (same files, another identity)."""
    model = load_model("tiny_hf_sam_small", device="cpu")
    return train_adapter(model, [scene(0)], tmp_path / "other", "other", recipe=dataclasses.replace(SHORT, steps=1))


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("no-object", InputError, "No labelled object"),
        ("tiny-objects", InputError, "No labelled object"),
        ("shape-mismatch", InputError, r"shape \(96, 96\) but its labels \(96, 80\)"),
        ("float-labels", InputError, "integer array"),
        ("empty-name", InputError, "needs a name"),
        ("dotted-name", InputError, "letters, digits"),
        ("bad-names-count", InputError, "one name per sample"),
        ("one-pair", InputError, "list of pairs"),
        ("other-base", AdapterError, "was trained on base tiny_hf_sam_small"),
        ("bad-intensity", InputError, "Unknown intensity policy"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(tiny, tmp_path, case, error, message):
    image, labels = scene(0)
    kwargs, samples, name = {}, [(image, labels)], "bad"
    if case == "no-object":
        samples = [(image, np.zeros_like(labels))]
    elif case == "tiny-objects":
        speck = np.zeros_like(labels)
        speck[40:44, 40:44] = 1                                          # 16 px: below min_object_pixels
        samples = [(image, speck)]
    elif case == "shape-mismatch":
        samples = [(image, labels[:, :80])]
    elif case == "float-labels":
        samples = [(image, labels.astype(np.float32))]
    elif case == "empty-name":
        name = "  "
    elif case == "dotted-name":
        name = "my.adapter"
    elif case == "bad-names-count":
        kwargs["sample_names"] = ["a", "b"]
    elif case == "one-pair":
        samples = (image, labels)
    elif case == "other-base":
        kwargs["init_adapter"] = _other_base_adapter(tmp_path)
    elif case == "bad-intensity":
        kwargs["intensity"] = "ct_brain_please"
    out = tmp_path / "out"
    with pytest.raises(error, match=message) as info:
        train_adapter(tiny, samples, out, name, recipe=SHORT, **kwargs)
    assert "\n" not in str(info.value)
    assert not out.exists()
    assert tiny.peft_model is None and tiny.active_adapter is None   # nothing attached either


def test_a_failure_during_training_leaves_the_model_as_it_was(tiny, tmp_path):
    first = train_adapter(tiny, [scene(0)], tmp_path, "kept", recipe=SHORT)

    def boom(p):
        if p.step == 2:
            raise RuntimeError("worker stopped")

    with pytest.raises(RuntimeError, match="worker stopped"):
        train_adapter(tiny, [scene(1)], tmp_path, "failed", recipe=SHORT, progress=boom)
    assert list(tiny.peft_model.peft_config) == ["kept"] and tiny.active_adapter == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]


def test_volume_is_used_slice_by_slice(tiny, tmp_path):
    """Two objects (ids 1, 2) labelled on slices 1 and 3 of a 5-slice volume: one is held back whole."""
    slices = [scene(z, ids=(1, 2)) for z in range(5)]
    volume = np.stack([s[0] for s in slices])
    labels = np.stack([s[1] if z in (1, 3) else np.zeros_like(s[1]) for z, s in enumerate(slices)])
    path = train_adapter(tiny, [(volume, labels)], tmp_path, "volume", recipe=SHORT, sample_names=["scan.tif"])
    meta = json.loads((path / "minisam_adapter.json").read_text())
    assert meta["training_images"] == [{"name": "scan.tif", "digest": image_digest(volume), "shape": [5, 96, 96],
                                        "labelled_slices": 2, "objects": 2}]
    assert meta["objects"] == {"total": 2, "held_back": 1, "train_masks": 2, "held_back_masks": 2}
    assert meta["scores"]["held_back_objects"] == 1 and meta["scores"]["held_back_masks"] == 2
    assert meta["training"]["train_views"] == 2 * 2                  # 2 labelled slices x 2 views each
    with pytest.raises(InputError, match=r"\(5, 96, 96\) but its labels \(96, 96\)"):
        train_adapter(tiny, [(volume, labels[1])], tmp_path, "volume2", recipe=SHORT)


def test_same_seed_same_adapter(tiny, tmp_path):
    samples = [scene(0), scene(1)]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    runs = {"s0": train_adapter(tiny, samples, tmp_path, "s0", recipe=SHORT, seed=0)}
    assert torch.equal(torch.rand(3), expected)                     # the caller's RNG is left alone
    runs.update({name: train_adapter(tiny, samples, tmp_path, name, recipe=SHORT, seed=seed)
                 for name, seed in (("s0-again", 0), ("s1", 1))})
    assert_same_tensors(saved_weights(runs["s0"]), saved_weights(runs["s0-again"]))
    other = saved_weights(runs["s1"])
    assert any(not torch.equal(other[k], v) for k, v in saved_weights(runs["s0"]).items())


def test_time_budget_is_a_hard_limit(tiny, tmp_path):
    """300 steps take ~30 s here; a 2.4 s budget must stop the loop before a step would end past it."""
    budget = 0.04                                                      # minutes
    path = train_adapter(tiny, [scene(0)], tmp_path, "budget", max_minutes=budget,
                         recipe=AdapterRecipe(steps=300, early_stopping=EarlyStopping(enabled=False)))
    training = json.loads((path / "minisam_adapter.json").read_text())["training"]
    assert training["stopped"] == "time_budget" and 0 < training["steps_done"] < 300
    assert training["train_seconds"] <= 60 * budget * 1.25            # slack for a step slower than the last


def test_import_stays_cheap():
    import subprocess

    code = "import sys, napari_qlora_minisam; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
