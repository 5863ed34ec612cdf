"""minisam-train distill on tiny random teachers and students (CPU, seconds).

The tiny teachers get a real (std 0.02) encoder init and are saved with save_pretrained, because
transformers initialises a random SAM encoder to ~0 (every embedding would be zero and there would be
nothing to distil).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from minisam_train.cli import compose


def _images(folder, n=3, seed=0):
    import imageio.v3 as iio

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:96, :128]
    for i in range(n):
        img = rng.integers(0, 40, (96, 128)).astype(np.uint8)
        cy, cx, r = rng.integers(30, 60), rng.integers(30, 90), rng.integers(12, 25)
        img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] += 180
        iio.imwrite(folder / f"slice_{i}.png", img)
        iio.imwrite(folder / f"slice_{i}_label.png", ((y - cy) ** 2 + (x - cx) ** 2 < r * r).astype(np.uint8))
    return folder


def _teacher_dir(path, spec):
    from napari_qlora_minisam.models.registry import build_random_hf_sam

    from minisam_train.training.student import init_vision_encoder

    net = build_random_hf_sam(spec)
    init_vision_encoder(net, seed=123)
    net.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    return {"root": root, "images": _images(root / "images"),
            "teacher": _teacher_dir(root / "teacher", "tiny_hf_sam")}


def _cfg(setup, out, *extra, cache="cache", teacher=None, student="tiny_hf_sam_small"):
    return compose("distill", [
        f"teacher.source={teacher or setup['teacher']}", f"student.source={student}",
        f"data.folders=[{setup['images']}]", "data.cosmos_roots=[]", "data.exclude_split_file=null",
        f"cache.dir={setup['root'] / cache}", f"output_dir={setup['root'] / out}",
        "student.train_decoder=true", "train.batch_size=1", "train.lr=3e-3", "train.log_every=1",
        "logging.progress=false",
        "logging.tensorboard=false", "prompts.per_image=1", "prompts.proposals=2",
        # a random teacher draws random masks: accept any of them as an object
        "prompts.max_area_fraction=1.0", "prompts.min_area=1", *extra])


def _run(cfg):
    from minisam_train.tasks.distill import run

    return run(cfg)


def test_loss_falls_teacher_runs_once_and_output_loads(setup):
    # Two slices, two micro-batches per step: every step sees the whole set, so the logged loss is the
    # full-data loss and must fall; 5 steps = 5 epochs, yet the teacher encodes each slice once.
    summary = _run(_cfg(setup, "straight", *RESUME_ARGS))
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == 5
    assert losses[-1] < 0.8 * losses[0], losses
    assert summary["slices_used"] == 2 and summary["cache"]["computed"] == 2
    assert summary["cache"]["teacher_encode_calls"] == 2
    assert summary["cache_reads"] == 10  # 5 epochs x 2 slices, all from disk
    rows = (setup["root"] / "straight" / "logs" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 6
    # The output is a plain save_pretrained folder that load_model and the predictor use.
    from napari_qlora_minisam import MiniSamPredictor, load_model

    backend = load_model(str(setup["root"] / "straight"), device="cpu")
    assert backend.kind == "hf" and backend.spec.image_size == 256
    pred = MiniSamPredictor(backend)
    pred.set_image(np.random.default_rng(0).integers(0, 255, (96, 128)).astype(np.uint8))
    masks, _, _ = pred.predict(box=np.array([20, 20, 80, 70], dtype=np.float32), multimask=False)
    assert masks.shape == (1, 96, 128)


RESUME_ARGS = ("train.steps=5", "train.checkpoint_every=2", "train.grad_accum=2", "data.max_slices=2")


def test_resume_equals_uninterrupted_run_and_never_calls_the_teacher(setup, monkeypatch):
    from minisam_train.training import teacher_cache

    straight = setup["root"] / "straight" / "model.safetensors"
    if not straight.exists():
        _run(_cfg(setup, "straight", *RESUME_ARGS))

    # The cache is warm: building or calling the teacher is now an error.
    def no_teacher(*a, **k):
        raise AssertionError("the teacher was called although its outputs are cached")

    monkeypatch.setattr(teacher_cache.CountingTeacher, "encode", no_teacher)
    monkeypatch.setattr("napari_qlora_minisam.load_model", no_teacher)
    part = _run(_cfg(setup, "resumed", *RESUME_ARGS, "train.stop_after=3"))
    assert part["stopped_early"] and part["steps"] == 3 and part["cache"]["computed"] == 0
    assert not (setup["root"] / "resumed" / "model.safetensors").exists()
    done = _run(_cfg(setup, "resumed", *RESUME_ARGS))
    assert done["resumed_from_step"] == 2  # the last checkpoint before the interruption
    a = load_file(str(straight))
    b = load_file(str(setup["root"] / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert [h["step"] for h in done["history"]] == [1, 2, 3, 4, 5]


def test_loader_workers_train_on_the_same_batches(setup):
    """train.num_workers prepares batches in other processes; the weights must match the in-process run."""
    straight = setup["root"] / "straight" / "model.safetensors"
    if not straight.exists():
        _run(_cfg(setup, "straight", *RESUME_ARGS))
    s = _run(_cfg(setup, "workers", *RESUME_ARGS, "train.num_workers=2"))
    assert s["num_workers"] == 2 and s["cache_reads"] == 10  # counted from the batches, not the workers
    a, b = load_file(str(straight)), load_file(str(setup["root"] / "workers" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_planned_batches_resume_mid_epoch_and_split_ranks():
    from minisam_train.training.distill_loop import PlannedBatches, epoch_order

    def take(plan, n):
        it = iter(plan)
        return [next(it) for _ in range(n)]

    full = take(PlannedBatches(10, per_epoch=5, batch_size=2, seed=1, first_micro=0), 12)
    assert full[:5] == [epoch_order(10, 0, 1)[i:i + 2] for i in range(0, 10, 2)]
    assert sorted(sum(full[5:10], [])) == list(range(10)) and full[5:10] != full[:5]  # a new permutation
    assert take(PlannedBatches(10, 5, 2, 1, first_micro=7), 5) == full[7:12]  # resume = same batches
    r0 = take(PlannedBatches(10, 2, 2, 1, 0, rank=0, world=2), 2)
    r1 = take(PlannedBatches(10, 2, 2, 1, 0, rank=1, world=2), 2)
    assert sorted(sum(r0 + r1, [])) == sorted(epoch_order(10, 0, 1)[:8])  # ranks share an epoch, no overlap


def test_vit_h_to_vit_b_recipe_on_tiny_shapes(setup):
    """The GPU recipe (ViT-H teacher, ViT-B student, 1024² both) end to end, plus a 1024 -> 256 student."""
    teacher = _teacher_dir(setup["root"] / "teacher_h", "tiny_vit_h_shape")
    s = _run(_cfg(setup, "h2b", "train.steps=1", "data.max_slices=1",
                  cache="cache_h", teacher=teacher, student="tiny_vit_b_shape"))
    assert s["steps"] == 1 and np.isfinite(s["history"][-1]["loss"])
    cfg = json.loads((setup["root"] / "h2b" / "config.json").read_text())
    assert cfg["vision_config"]["image_size"] == 1024 and cfg["vision_config"]["hidden_size"] == 32
    # Different input sizes and grids (1024²/64x64 teacher, 256²/16x16 student) on the same cache.
    s = _run(_cfg(setup, "h2small", "train.steps=1", "data.max_slices=1",
                  cache="cache_h", teacher=teacher, student="tiny_hf_sam_small"))
    assert s["cache"]["computed"] == 0 and np.isfinite(s["history"][-1]["loss"])


def test_litemedsam_decoder_maps_into_the_student(litemedsam):
    """The student's HF decoder, started from LiteMedSAM's, gives LiteMedSAM's masks on the same embedding."""
    from minisam_train.training.student import build_student_net, init_decoder_from_teacher

    student = build_student_net("random_student_256").eval()
    assert init_decoder_from_teacher(student, litemedsam) > 100
    emb = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(0))
    box = torch.tensor([[40.0, 50.0, 150.0, 170.0]])
    with torch.no_grad():
        ref, _ = litemedsam.decode(emb, boxes=box, multimask=False)
        out = student(image_embeddings=emb, input_boxes=box[None], multimask_output=False).pred_masks[0]
    torch.testing.assert_close(out, ref, rtol=0, atol=5e-3)  # fp32 op-order noise only


def test_folder_reader_lists_slices_skips_labels_and_test_split(tmp_path, shared_data):
    import tifffile

    from minisam_train.data.unlabelled import SliceReader, gather_slices

    _images(tmp_path / "imgs", n=2)
    vol = np.random.default_rng(0).integers(-1000, 1000, (5, 32, 40)).astype(np.int16)
    tifffile.imwrite(tmp_path / "imgs" / "ct_image.tif", vol)
    tifffile.imwrite(tmp_path / "imgs" / "ct_label.tif", (vol > 0).astype(np.uint8))
    items = gather_slices([tmp_path / "imgs"], volume_stride=2)
    names = sorted(it.key.split("/")[-1] for it in items)
    assert names == ["ct_image.tif#z0", "ct_image.tif#z2", "ct_image.tif#z4", "slice_0.png", "slice_1.png"]
    z2 = next(it for it in items if it.slice_index == 2)
    img = SliceReader().image(z2)
    assert img.shape == (32, 40) and img.dtype == np.uint8  # per-volume min-max to uint8
    assert len(gather_slices([tmp_path / "imgs"], exclude=["ct_"])) == 2

    splits = json.loads((shared_data / "splits.json").read_text())
    cosmos = gather_slices([], [shared_data / "cosmos_sample"], exclude_split_file=shared_data / "splits.json")
    used = {it.path.name for it in cosmos}
    test = set(splits["22_Heart"]["test"]) | set(splits["6_Pancreas"]["test"])
    assert used and not used & test
    assert all(it.label_path is not None for it in cosmos)


def test_reader_keeps_recent_volumes_decoded(tmp_path):
    from minisam_train.data.unlabelled import SliceReader, gather_slices

    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        np.save(tmp_path / f"{name}_image.npy", rng.integers(-1000, 1000, (4, 16, 16)).astype(np.int16))
    items = gather_slices([tmp_path])
    reader = SliceReader(max_volumes=2)
    ab = [it for it in items if it.path.name[0] in "ab"]
    first = [reader.image(it).copy() for it in ab]
    for _ in range(3):  # random-order training alternates volumes
        again = [reader.image(it) for it in ab[::-1]][::-1]
    assert reader.volume_loads == 2
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    for it in items:  # a, b, then a third volume, which pushes the least recently used (a) out
        reader.image(it)
    assert reader.volume_loads == 3
    assert [p.name for p in reader._volumes] == ["b_image.npy", "c_image.npy"]


def test_views_are_cached_copies_whose_masks_follow_the_pixels(shared_data):
    from minisam_train.data.errors import DataError
    from minisam_train.data.unlabelled import SliceReader, gather_slices

    base = gather_slices([], [shared_data / "cosmos_sample"], exclude_split_file=shared_data / "splits.json")
    items = gather_slices([], [shared_data / "cosmos_sample"], exclude_split_file=shared_data / "splits.json",
                          views=["rot90", "gamma0.7", "rot90"])
    assert len(items) == 3 * len(base)  # the duplicate view counts once
    assert len({it.key for it in items}) == len(items)  # own keys, so own teacher-cache entries
    assert len({it.cache_name for it in items}) == len(items)
    reader = SliceReader()
    heart = next(it for it in base if it.dataset == "22_Heart")
    rot = heart.with_view("rot90")
    img, img_rot = reader.image(heart), reader.image(rot)
    np.testing.assert_array_equal(img_rot, np.rot90(img))
    masks, masks_rot = reader.masks(heart), reader.masks(rot)
    assert masks and len(masks) == len(masks_rot)
    for m, mr in zip(masks, masks_rot):
        np.testing.assert_array_equal(mr, np.rot90(m))  # the label boxes move with the anatomy
    gamma = reader.image(heart.with_view("gamma0.7"))
    assert gamma.shape == img.shape and gamma.dtype == np.uint8
    assert gamma.astype(int).sum() > img.astype(int).sum()  # gamma < 1 brightens mid-greys
    assert all(np.array_equal(a, b) for a, b in zip(reader.masks(heart.with_view("gamma0.7")), masks))
    from minisam_train.data.unlabelled import apply_view

    us = np.linspace(100, 40000, 64 * 64).reshape(64, 64).astype(np.uint16)  # ultrasound frames are uint16
    bright = apply_view(us, "gamma0.7")
    assert bright.dtype == np.uint16 and (bright.min(), bright.max()) == (us.min(), us.max())
    assert bright.astype(int).sum() > us.astype(int).sum()
    with pytest.raises(DataError, match="data.views takes any of"):
        gather_slices([], [shared_data / "cosmos_sample"], views=["spin"])


def test_views_on_cosmos_augments_only_the_cosmos_slices(shared_data):
    from minisam_train.data.errors import DataError
    from minisam_train.data.unlabelled import gather_slices

    kw = dict(exclude_split_file=shared_data / "splits.json")
    folders = [shared_data / "ultrasound_unlabelled"]
    roots = [shared_data / "cosmos_sample"]
    base = gather_slices(folders, roots, **kw)
    cosmos = gather_slices([], roots, **kw)
    frames = gather_slices(folders, [], **kw)
    assert frames and cosmos and len(base) == len(frames) + len(cosmos)
    items = gather_slices(folders, roots, views=["hflip", "gamma1.5"], views_on="cosmos", **kw)
    assert items[:len(base)] == base
    viewed = items[len(base):]
    assert len(viewed) == 2 * len(cosmos)
    assert {it.key.split("@")[0] for it in viewed} == {it.key for it in cosmos}  # no ultrasound frame
    assert {it.view for it in viewed} == {"hflip", "gamma1.5"}
    everywhere = gather_slices(folders, roots, views=["hflip"], **kw)
    assert len(everywhere) == 2 * len(base)
    with pytest.raises(DataError, match="views_on"):
        gather_slices(folders, roots, views=["hflip"], views_on="volumes", **kw)


def test_warm_start_grows_a_trained_student(tmp_path):
    """student.init_encoder: a student with global-attention blocks starts from a windowed one's weights."""
    from napari_qlora_minisam.errors import ModelLoadError

    from minisam_train.training.student import build_student_net, warm_start_encoder

    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=256, patch_size=16,
                 window_size=4, mlp_dim=64)
    donor = build_student_net(config={**shape, "global_attn_indexes": []}, seed=3)
    donor.save_pretrained(tmp_path / "donor")
    grown = build_student_net(config={**shape, "global_attn_indexes": [1]}, seed=4)
    report = warm_start_encoder(grown, tmp_path / "donor")
    mine, theirs = grown.vision_encoder.state_dict(), donor.vision_encoder.state_dict()
    assert sorted(report["skipped"]) == ["layers.1.attn.rel_pos_h", "layers.1.attn.rel_pos_w"]
    assert report["copied"] == len(mine) - 2
    for name, value in theirs.items():
        if name not in report["skipped"]:
            assert torch.equal(mine[name], value), name
    assert mine["layers.1.attn.rel_pos_h"].shape != theirs["layers.1.attn.rel_pos_h"].shape
    with pytest.raises(ModelLoadError, match="save_pretrained"):
        warm_start_encoder(grown, tmp_path)
