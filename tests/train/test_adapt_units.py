"""MedSegLoss, training prompt sampling and modality -> dataset selection (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minisam_train.data import DataError
from minisam_train.training.adapt_data import datasets_for_modality
from napari_qlora_minisam.adapter_training.losses import MedSegLoss
from napari_qlora_minisam.adapter_training.prompt_sampling import (
    PromptSampler,
    PromptSamplingConfig,
    jitter_box,
)
from napari_qlora_minisam.masks import tight_box


def _disc(size=64, r=10, cx=30, cy=28):
    yy, xx = np.mgrid[:size, :size]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def test_medseg_loss_prefers_right_mask_and_takes_best_candidate():
    target = torch.from_numpy(_disc())[None]
    good = torch.where(target, 8.0, -8.0)[None]          # (1, 1, H, W)
    bad = -good
    loss = MedSegLoss()
    assert loss(good, target).total < 0.05 < loss(bad, target).total
    both = torch.cat([bad, good], dim=1)                 # (1, 2, H, W): best candidate counts
    assert float(loss(both, target).total) == pytest.approx(float(loss(good, target).total))
    # the IoU head is pushed towards the real IoU of each candidate (1 for good, 0 for bad)
    right = loss(both, target, iou_pred=torch.tensor([[0.0, 1.0]])).iou
    wrong = loss(both, target, iou_pred=torch.tensor([[1.0, 0.0]])).iou
    assert right < 1e-6 < 0.9 < wrong


def test_medseg_loss_rejects_bad_shapes_and_weights():
    with pytest.raises(ValueError):
        MedSegLoss()(torch.zeros(2, 8, 8), torch.zeros(2, 8, 8))
    with pytest.raises(ValueError):
        MedSegLoss(bce_weight=0, dice_weight=0)


@pytest.mark.parametrize("mode", ["box", "points", "box_points"])
def test_prompt_sampler_modes(mode):
    masks = np.stack([_disc(), _disc(cx=45, cy=45, r=6)])
    sampler = PromptSampler(PromptSamplingConfig(mix={mode: 1.0}, box_jitter=0.1, neg_prob=1.0))
    rng = np.random.default_rng(0)
    for _ in range(20):
        b = sampler.sample(masks, rng)
        assert b.mode == mode and b.multimask == (mode != "box")
        if "box" in mode:
            assert b.boxes.shape == (2, 4)
            assert (b.boxes[:, 2] > b.boxes[:, 0]).all() and (b.boxes >= 0).all() and (b.boxes < 64).all()
        else:
            assert b.boxes is None
        if "points" in mode:
            assert b.points.shape[:2] == b.labels.shape and b.points.shape[0] == 2
            for m, pts, labs in zip(masks, b.points.numpy(), b.labels.numpy()):
                x, y = pts[:, 0].astype(int), pts[:, 1].astype(int)
                assert labs[0] == 1                                     # always a positive first
                assert m[y[labs == 1], x[labs == 1]].all()               # positives inside (disc is convex)
                assert not m[y[labs == 0], x[labs == 0]].any()           # negatives outside
                assert set(np.unique(labs)) <= {-1, 0, 1}                # -1 pads shorter prompts
        else:
            assert b.points is None


def test_prompt_mix_is_mixed_and_validated():
    sampler = PromptSampler(PromptSamplingConfig(mix={"box": 1, "points": 1}))
    rng = np.random.default_rng(1)
    modes = {sampler.sample(_disc()[None], rng).mode for _ in range(30)}
    assert modes == {"box", "points"}
    with pytest.raises(ValueError, match="unknown mode"):
        PromptSamplingConfig(mix={"scribble": 1})


def test_jitter_box_stays_valid():
    rng = np.random.default_rng(0)
    box = tight_box(_disc())
    for _ in range(50):
        j = jitter_box(box, 0.5, rng, 64)
        assert 0 <= j[0] < j[2] <= 63 and 0 <= j[1] < j[3] <= 63


def test_modality_map_picks_datasets(shared_data):
    roots = [shared_data / "cosmos_sample", shared_data / "cosmos_extra"]
    assert datasets_for_modality(roots, "ct") == ["6_Pancreas", "90_LungTumour"]
    assert "22_Heart" in datasets_for_modality(roots, "MRI")
    with pytest.raises(DataError, match="Unknown modality 'xray'.*ct"):
        datasets_for_modality(roots, "xray")
    with pytest.raises(DataError, match="No labelled ultrasound"):
        datasets_for_modality(roots, "us")
    with pytest.raises(DataError, match="not 'ct' data"):
        datasets_for_modality(roots, "ct", datasets=["22_Heart"])


def test_positive_clicks_never_land_outside_the_object():
    """A ring's centroid is background: it must not be handed to the model as a positive click."""
    ring = _disc(r=14) & ~_disc(r=9)
    sampler = PromptSampler(PromptSamplingConfig(mix={"points": 1.0}, centroid_prob=1.0, neg_prob=0.0))
    rng = np.random.default_rng(0)
    for _ in range(20):
        b = sampler.sample(ring[None], rng)
        pos = b.points[0][b.labels[0] == 1].numpy().astype(int)
        assert len(pos) >= 1 and ring[pos[:, 1], pos[:, 0]].all()


def test_single_mask_clicks_setting():
    masks = _disc()[None]
    sampler = PromptSampler(PromptSamplingConfig(mix={"points": 1.0}, point_multimask=False))
    assert not sampler.sample(masks, np.random.default_rng(0)).multimask


def _lrs(scheduler, n):
    out = []
    for _ in range(n):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("kind", ["adapt", "distill"])
def test_cosine_schedules_warm_up_decay_to_zero_and_resume_exactly(kind):
    """Both trainers use transformers' warm-up + cosine schedule; a checkpointed one continues exactly."""
    from minisam_train.training.distill_loop import make_scheduler
    from napari_qlora_minisam.adapter_training.recipe import AdapterRecipe, build_scheduler

    def build():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        if kind == "adapt":
            return build_scheduler(AdapterRecipe(warmup_steps=4), opt, 20)
        return make_scheduler(opt, 20, warmup_fraction=0.2)

    whole = _lrs(build(), 21)
    assert whole[0] == 0.0 and whole[2] == pytest.approx(0.05) and whole[4] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(whole[4:], whole[5:])) and whole[20] == pytest.approx(0.0, abs=1e-12)
    first = build()
    head = _lrs(first, 7)
    state = first.state_dict()
    resumed = build()
    resumed.load_state_dict(state)
    assert head + _lrs(resumed, 14) == whole
