"""``minisam-train adapt`` end to end on a tiny random model and real MRI slices, through ``run(cfg)``.

Covers: the loss falls; the saved adapter reloads to identical outputs; a run interrupted and resumed from
its checkpoint equals an uninterrupted one; an interrupted or failed save never leaves a half-written
adapter; clear errors for an unknown modality, the test split and a base mismatch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from minisam_train.cli import compose
from minisam_train.data import DataError
from minisam_train.errors import ConfigError
from minisam_train.tasks import adapt
from napari_qlora_minisam import AdapterError, load_model


def tiny_cfg(tmp_path, name="run", *extra):
    """A few-second run on the fp32 tiny base: 1 training slice (+ 1 augmented view), 1 validation slice.

    Views, box jitter and LoRA dropout all draw random numbers, so a resume that lost any RNG state
    would diverge from the uninterrupted run.
    """
    return compose("adapt", [
        "--modality", "mri", "base=tiny_hf_sam", "quantize=null", f"paths.data_root={_data()}",
        "data.datasets=[22_Heart]", "data.max_samples=2", "data.val_fraction=0.5",
        "data.augment.views_per_image=2", "train.device=cpu", "train.batch_size=1", "train.steps=3",
        "train.lr=5e-3", "train.scheduler=constant", "train.warmup_steps=0",
        "train.prompts.mix={box: 1.0}", "train.prompts.box_jitter=0.05", "train.val_every=3",
        "train.log_every=1", "train.checkpoint_every=1", "train.early_stopping.enabled=false",
        "logging.progress=false", f"output_dir={tmp_path / name}", f"adapter.out_dir={tmp_path / name}_adapter",
        *extra,
    ])


def _data():
    from tests.conftest import SHARED_DATA

    return SHARED_DATA


def _decode(backend, seed=0):
    torch.manual_seed(seed)
    emb = torch.randn(1, 256, 16, 16)
    boxes = torch.tensor([[40.0, 50.0, 150.0, 170.0]])
    points, labels = torch.tensor([[[90.0, 100.0]]]), torch.tensor([[1]])
    with torch.no_grad():
        return (backend.decode(emb, boxes=boxes, multimask=False)[0],
                backend.decode(emb, points=points, labels=labels, multimask=True)[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapt")
    summary, model = adapt.train(tiny_cfg(tmp))
    return tmp, summary, model


def test_run_trains_saves_and_logs(trained):
    tmp, summary, _ = trained
    rows = [r for r in _csv(tmp / "run" / "metrics.csv") if r["loss"]]
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert summary["steps_done"] == 3 and summary["stopped"] == "steps"
    assert 0 < summary["trainable_share"] < 0.01                          # LoRA only, < 1 %
    assert (tmp / "run" / "curves.png").stat().st_size > 1000
    meta = json.loads((tmp / "run_adapter" / "minisam_adapter.json").read_text())
    assert meta["modality"] == "mri" and meta["base_source"] == "tiny_hf_sam"
    assert meta["data"]["datasets"] == ["22_Heart"] and meta["data"]["split_key"] == "adapt_train"
    assert meta["config"]["train"]["lora"]["r"] == 8 and "val_dice_box" in meta["validation"]["last"]
    assert (tmp / "run_adapter" / "adapter_model.safetensors").stat().st_size < 5e6


def test_loss_falls_on_the_training_slice(trained):
    from minisam_train.data import CosmosDataset
    from napari_qlora_minisam.adapter_training.losses import MedSegLoss
    from napari_qlora_minisam.adapter_training.prompt_sampling import PromptBatch
    from napari_qlora_minisam.masks import tight_box
    from napari_qlora_minisam.adapter_training.views import make_view

    _, summary, model = trained
    ds_name, image = summary["data"]["train_slices"][0].split("/")
    rec = next(iter(CosmosDataset(_data() / "cosmos_sample", datasets=[ds_name], include={ds_name: {image}})))
    view = make_view(rec.image, rec.objects, model.backend.spec, "minmax", image)
    model.eval()
    prompts = PromptBatch("box", boxes=torch.from_numpy(np.stack([tight_box(m) for m in view.masks.numpy()])))
    with torch.no_grad():
        emb = model.encode(view.pixels)
        low, iou = model.decode(emb, prompts)
        with model.backend.adapter_disabled():
            low0, iou0 = model.decode(emb, prompts)
    target = torch.nn.functional.interpolate(view.masks[:, None].float(), size=low.shape[-2:], mode="area")[:, 0]
    loss = MedSegLoss()
    assert loss(low, target > 0.5, iou).total < loss(low0, target > 0.5, iou0).total


def test_saved_adapter_reloads_to_identical_outputs(trained):
    tmp, _, model = trained
    model.eval()
    expected = _decode(model.backend)
    reloaded = load_model("tiny_hf_sam", adapters=tmp / "run_adapter", device="cpu")
    for a, b in zip(expected, _decode(reloaded)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with reloaded.adapter_disabled():  # and the adapter really changes something
        assert not torch.allclose(_decode(reloaded)[0], expected[0])


def test_resume_equals_uninterrupted_run(trained, tmp_path):
    tmp, _, _ = trained
    cfg = tiny_cfg(tmp_path, "resumed", "train.stop_after=1")
    first = adapt.run(cfg)
    assert first["stopped"] == "interrupted" and first["adapter_dir"] is None
    assert not (tmp_path / "resumed_adapter").exists()                    # interrupted: no adapter at all
    second = adapt.run(tiny_cfg(tmp_path, "resumed"))
    assert second["steps_done"] == 3
    a = _weights(tmp / "run_adapter")
    b = _weights(tmp_path / "resumed_adapter")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]  # noqa: E731
    assert strip(_csv(tmp / "run" / "metrics.csv")) == strip(_csv(tmp_path / "resumed" / "metrics.csv"))


def test_failed_save_keeps_previous_adapter(trained, tmp_path, monkeypatch):
    import shutil

    tmp, _, model = trained
    target = tmp_path / "mri"
    shutil.copytree(tmp / "run_adapter", target)
    before = {f.name: f.read_bytes() for f in target.iterdir()}

    def boom(*a, **k):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C in the middle of writing

    monkeypatch.setattr(model.backend.peft_model, "save_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        model.save_adapter(target, {"modality": "mri"})
    assert {f.name: f.read_bytes() for f in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["mri"]                # no temp folder left behind


def test_base_mismatch_is_a_clear_error(trained, tmp_path):
    tmp, _, _ = trained
    with pytest.raises(AdapterError, match="was trained on base tiny_hf_sam"):
        load_model("tiny_hf_sam_small", adapters=tmp / "run_adapter", device="cpu")
    # resuming a run folder with another base is refused too
    with pytest.raises(ConfigError, match="base identity"):
        adapt.run(compose("adapt", [*_overrides(tiny_cfg(tmp, "run")), "base=tiny_hf_sam_small"]))


def test_unknown_modality_and_test_split_are_refused(tmp_path):
    with pytest.raises(DataError, match="Unknown modality 'xray'"):
        adapt.run(tiny_cfg(tmp_path, "x", "modality=xray", "data.datasets=[]"))
    with pytest.raises(DataError, match="never be trained on the test split"):
        adapt.run(tiny_cfg(tmp_path, "x", "data.split_key=test"))


def _overrides(cfg):
    from omegaconf import OmegaConf

    keep = ("base", "quantize", "output_dir", "modality")
    c = OmegaConf.to_container(cfg, resolve=True)
    out = [f"{k}={c[k]}" for k in keep]
    out += [f"paths.data_root={_data()}", "data.datasets=[22_Heart]", "data.max_samples=2",
            "data.val_fraction=0.5", "data.augment.views_per_image=1", "train.device=cpu",
            "train.batch_size=1", "train.steps=6", "logging.progress=false",
            f"adapter.out_dir={c['output_dir']}_other"]
    return out


def _csv(path):
    import csv

    with open(path) as fh:
        return list(csv.DictReader(fh))


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))
