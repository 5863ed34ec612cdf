"""LoRA adapters (peft): several on one base, switched without reloading, refused on another base, merged.

Fresh LoRA layers are initialised so they change nothing (lora_B = 0); the tests give them random weights so
that "the adapter changes the output" and "None gives exactly the base output" can both fail.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_qlora_minisam import AdapterError, load_model
from napari_qlora_minisam.adapters import (
    METADATA_FILE,
    add_lora,
    list_adapters,
    load_adapter,
    merge_active_adapter,
    read_adapter_metadata,
    save_adapter,
    set_adapter,
)
from napari_qlora_minisam.transforms import prepare_image


def randomize_lora(backend, name, seed, scale=0.3):
    """Give adapter ``name`` non-zero weights (a trained adapter's stand-in)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module_name, param in backend.peft_model.named_parameters():
            if f"lora_B.{name}." in module_name or f"lora_A.{name}." in module_name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)


def prompts(size):
    boxes = torch.tensor([[0.2, 0.25, 0.7, 0.8], [0.1, 0.1, 0.5, 0.4]]) * size
    return boxes


def run(backend, pixels, boxes):
    """Embedding and decoder output for two boxes."""
    with torch.inference_mode():
        emb = backend.encode(pixels)
        logits, iou = backend.decode(emb, boxes=boxes, multimask=False)
    return emb.clone(), logits.clone(), iou.clone()


def assert_all_equal(a, b):
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def assert_all_close(a, b, tol=1e-4):
    """The fast paths fuse plain layers that a (disabled) LoRA wrapper keeps separate, so the bare base and
    "adapter None" agree up to float32 reassociation, not bit for bit."""
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


def assert_all_differ(a, b, min_diff=1e-3):
    for x, y in zip(a, b):
        assert (x - y).abs().max() > min_diff


# -- tiny HF model: the whole life cycle ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_inputs(heart_slice):
    image, _ = heart_slice
    from napari_qlora_minisam.models.registry import HF_SPECS
    from napari_qlora_minisam.transforms import PreprocessSpec

    pixels, _, _ = prepare_image(image, PreprocessSpec(HF_SPECS["tiny_hf_sam"].image_size, "imagenet"))
    return pixels, prompts(256)


@pytest.fixture(scope="module")
def saved_tiny_adapters(tmp_path_factory, tiny_inputs):
    """Two adapters trained (randomised) on tiny_hf_sam, saved; plus the outputs they gave."""
    pixels, boxes = tiny_inputs
    backend = load_model("tiny_hf_sam", device="cpu")
    base = run(backend, pixels, boxes)
    add_lora(backend, "ct_adapter", r=4, alpha=8)
    randomize_lora(backend, "ct_adapter", seed=1)
    add_lora(backend, "mri_adapter", r=4, alpha=8, parts=("decoder",))
    randomize_lora(backend, "mri_adapter", seed=2)
    root = tmp_path_factory.mktemp("adapters")
    outputs = {None: base}
    dirs = {}
    for name, modality in (("ct_adapter", "ct"), ("mri_adapter", "mri")):
        set_adapter(backend, name)
        outputs[name] = run(backend, pixels, boxes)
        dirs[name] = save_adapter(backend, root / name, name, {"modality": modality, "dice": 0.5})
    return backend, dirs, outputs


def test_saved_adapter_directory_layout(saved_tiny_adapters):
    backend, dirs, _ = saved_tiny_adapters
    for name, path in dirs.items():
        assert (path / "adapter_config.json").exists() and (path / "adapter_model.safetensors").exists()
        meta = read_adapter_metadata(path)
        assert meta["name"] == name and meta["base_identity"] == backend.identity
        assert meta["base_source"] == "tiny_hf_sam" and meta["base_kind"] == "hf" and meta["dice"] == 0.5
        assert not any(p.name.startswith(".") for p in path.parent.iterdir())  # no temp dirs left behind


def test_metadata_cannot_fake_the_base_identity(saved_tiny_adapters, tmp_path):
    backend, _, _ = saved_tiny_adapters
    out = save_adapter(backend, tmp_path / "x", "ct_adapter", {"modality": "ct", "base_identity": "forged"})
    assert read_adapter_metadata(out)["base_identity"] == backend.identity


def test_several_adapters_switch_without_reloading(saved_tiny_adapters, tiny_inputs):
    _, dirs, outputs = saved_tiny_adapters
    pixels, boxes = tiny_inputs
    model = load_model("tiny_hf_sam", device="cpu", adapters=[dirs["ct_adapter"], dirs["mri_adapter"]])
    assert model.active_adapter == "ct_adapter"  # the first one listed
    assert set(model.peft_model.peft_config) == {"ct_adapter", "mri_adapter"}
    net_before = model.net
    seen = {}
    for name in ("ct_adapter", "mri_adapter", None, "ct_adapter", None):
        set_adapter(model, name)
        assert model.active_adapter == name
        got = run(model, pixels, boxes)
        # Same numbers as the model the adapter was saved from, bit for bit.
        for x, y in zip(got, outputs[name]):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-6)
        seen[name] = got
    assert model.net is net_before  # switching never rebuilt the network
    assert_all_close(seen[None], outputs[None])  # None is the bare base
    assert_all_differ(seen["ct_adapter"], seen[None])
    # The decoder-only adapter leaves the image embedding alone but changes the masks.
    assert torch.equal(outputs["mri_adapter"][0], outputs[None][0])
    assert_all_differ(outputs["mri_adapter"][1:], outputs[None][1:])
    # Loaded adapters are frozen: only adapters made with add_lora are trainable.
    assert not any(p.requires_grad for p in model.net.parameters())


def test_adapter_disabled_context_runs_the_base(saved_tiny_adapters, tiny_inputs):
    _, dirs, outputs = saved_tiny_adapters
    pixels, boxes = tiny_inputs
    model = load_model("tiny_hf_sam", device="cpu", adapters=dirs["ct_adapter"])
    with model.adapter_disabled():
        assert_all_close(run(model, pixels, boxes), outputs[None])
    torch.testing.assert_close(run(model, pixels, boxes)[1], outputs["ct_adapter"][1], rtol=0, atol=1e-6)


def test_predictor_cache_follows_the_active_adapter(saved_tiny_adapters, heart_slice):
    from napari_qlora_minisam import MiniSamPredictor

    _, dirs, _ = saved_tiny_adapters
    model = load_model("tiny_hf_sam", device="cpu", adapters=[dirs["ct_adapter"]])
    predictor = MiniSamPredictor(model)
    with_adapter = predictor.set_image(heart_slice[0]).embedding
    set_adapter(model, None)
    bare = predictor.set_image(heart_slice[0]).embedding
    assert predictor.cache.misses == 2 and (with_adapter - bare).abs().max() > 1e-3
    set_adapter(model, "ct_adapter")
    assert predictor.set_image(heart_slice[0]).embedding is with_adapter  # served from the cache
    assert predictor.cache.hits == 1


def test_list_adapters_reads_metadata(saved_tiny_adapters, tmp_path):
    _, dirs, _ = saved_tiny_adapters
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / METADATA_FILE).write_text("{not json")
    found = list_adapters([dirs["ct_adapter"].parent, tmp_path])
    assert [(a.name, a.modality) for a in found] == [("ct_adapter", "ct"), ("mri_adapter", "mri")]


def test_adapter_from_another_base_is_refused(saved_tiny_adapters):
    _, dirs, _ = saved_tiny_adapters
    with pytest.raises(AdapterError, match=r"ct_adapter.*trained on base tiny_hf_sam.*not on tiny_hf_sam_small"):
        load_model("tiny_hf_sam_small", device="cpu", adapters=[dirs["ct_adapter"]])


def test_adapter_from_another_base_is_refused_by_litemedsam(saved_tiny_adapters, litemedsam_fresh):
    _, dirs, _ = saved_tiny_adapters
    with pytest.raises(AdapterError, match=r"not on litemedsam.*train an adapter for this base"):
        load_adapter(litemedsam_fresh, dirs["ct_adapter"])


@pytest.mark.parametrize("what", ["missing", "no_config", "no_metadata", "bad_json"])
def test_malformed_adapter_directories(saved_tiny_adapters, tmp_path, what):
    import shutil

    _, dirs, _ = saved_tiny_adapters
    path = tmp_path / "adapter"
    if what != "missing":
        shutil.copytree(dirs["ct_adapter"], path)
    if what == "no_config":
        (path / "adapter_config.json").unlink()
    elif what == "no_metadata":
        (path / METADATA_FILE).unlink()
    elif what == "bad_json":
        (path / METADATA_FILE).write_text("{")
    message = {"missing": "does not exist", "no_config": "no adapter_config.json",
               "no_metadata": f"no {METADATA_FILE}", "bad_json": "not valid JSON"}[what]
    with pytest.raises(AdapterError, match=message):
        load_model("tiny_hf_sam", device="cpu", adapters=[path])


def test_unknown_adapter_name_and_duplicate(saved_tiny_adapters):
    backend, _, _ = saved_tiny_adapters
    with pytest.raises(AdapterError, match=r"No adapter named 'nope' is loaded"):
        set_adapter(backend, "nope")
    with pytest.raises(AdapterError, match="already attached"):
        add_lora(backend, "ct_adapter")
    with pytest.raises(AdapterError, match=r"No adapter named 'nope' is attached"):
        save_adapter(backend, "/tmp/never_written", "nope", {})
    with pytest.raises(AdapterError, match="Unknown adapter part"):
        add_lora(backend, "x", parts=("neck",))


def test_merge_gives_the_unmerged_output(saved_tiny_adapters, tiny_inputs):
    _, dirs, outputs = saved_tiny_adapters
    pixels, boxes = tiny_inputs
    model = load_model("tiny_hf_sam", device="cpu", adapters=[dirs["ct_adapter"], dirs["mri_adapter"]])
    merge_active_adapter(model)
    assert model.peft_model is None and model.active_adapter == "merged:ct_adapter"
    assert not any("lora_" in n for n, _ in model.net.named_parameters())
    for got, ref in zip(run(model, pixels, boxes), outputs["ct_adapter"]):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(AdapterError, match="merged into its weights"):
        load_adapter(model, dirs["mri_adapter"])


def test_merge_is_refused_on_nf4_and_without_adapter(saved_tiny_adapters):
    _, dirs, _ = saved_tiny_adapters
    bare = load_model("tiny_hf_sam", device="cpu")
    with pytest.raises(AdapterError, match="No active adapter"):
        merge_active_adapter(bare)
    q = load_model("tiny_hf_sam", device="cpu", quantize="nf4", adapters=[dirs["ct_adapter"]])
    with pytest.raises(AdapterError, match="quantize=None to merge"):
        merge_active_adapter(q)


def test_nf4_tiny_base_takes_the_same_adapters(saved_tiny_adapters, tiny_inputs):
    """An adapter trained on the fp32 base loads on its NF4 version (same identity) and switches there."""
    _, dirs, outputs = saved_tiny_adapters
    pixels, boxes = tiny_inputs
    q = load_model("tiny_hf_sam", device="cpu", quantize="nf4", adapters=[dirs["ct_adapter"], dirs["mri_adapter"]])
    with_ct = run(q, pixels, boxes)
    set_adapter(q, None)
    bare = run(q, pixels, boxes)
    set_adapter(q, "ct_adapter")
    assert_all_equal(run(q, pixels, boxes), with_ct)
    assert_all_differ(with_ct, bare)
    # 4-bit noise, not a different model: the NF4 adapter output stays close to the fp32 one.
    rel = (with_ct[1] - outputs["ct_adapter"][1]).norm() / outputs["ct_adapter"][1].norm()
    assert rel < 0.35


# -- the real LiteMedSAM, fp32 and NF4 ------------------------------------------------------------------

@pytest.fixture()
def litemedsam_fresh():
    """A LiteMedSAM of its own (adapters modify the network in place; the session fixture stays clean)."""
    return load_model("litemedsam", device="cpu")


@pytest.fixture(scope="module")
def lite_pixels(heart_slice):
    from napari_qlora_minisam.models.litemedsam import LITEMEDSAM_SPEC

    pixels, _, _ = prepare_image(heart_slice[0], LITEMEDSAM_SPEC)
    return pixels


def test_litemedsam_fp32_adapters_round_trip(tmp_path, lite_pixels, litemedsam_fresh):
    backend = litemedsam_fresh
    boxes = prompts(256)
    base = run(backend, lite_pixels, boxes)
    add_lora(backend, "enc_dec", r=4, alpha=8)
    randomize_lora(backend, "enc_dec", seed=3, scale=0.05)
    adapted = run(backend, lite_pixels, boxes)
    assert_all_differ(adapted, base)
    path = save_adapter(backend, tmp_path / "lite_ct", "enc_dec", {"modality": "ct"})
    assert json.loads((path / METADATA_FILE).read_text())["base_kind"] == "litemedsam"

    fresh = load_model("litemedsam", device="cpu", adapters=[path])
    assert fresh.active_adapter == "lite_ct"
    # Loaded, the adapter is frozen and its encoder runs the exported graph; in training it ran the modules:
    # the two agree within the project's 1e-4 bar, not bit for bit.
    for got, ref in zip(run(fresh, lite_pixels, boxes), adapted):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-4)
    set_adapter(fresh, None)
    assert_all_close(run(fresh, lite_pixels, boxes), base)
    set_adapter(fresh, "lite_ct")
    merge_active_adapter(fresh)
    for got, ref in zip(run(fresh, lite_pixels, boxes), adapted):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_litemedsam_nf4_decoder_adapters(tmp_path, lite_pixels):
    """QLoRA on the real network: several decoder adapters on the NF4 base, switched on one embedding."""
    backend = load_model("litemedsam", device="cpu", quantize="nf4")
    boxes = prompts(256)
    with torch.inference_mode():
        emb = backend.encode(lite_pixels)

    def decode():
        with torch.inference_mode():
            return backend.decode(emb, boxes=boxes, multimask=True)

    base = decode()
    for i, name in enumerate(("heart", "lung")):
        add_lora(backend, name, r=4, alpha=8, parts=("decoder",))
        randomize_lora(backend, name, seed=10 + i, scale=0.1)
    outs = {}
    for name in ("heart", "lung", None):
        set_adapter(backend, name)
        outs[name] = decode()
    assert_all_close(outs[None], base)
    assert_all_differ(outs["heart"], outs["lung"])
    assert_all_differ(outs["heart"], base)
    dirs = [save_adapter(backend, tmp_path / n, n, {"modality": "mri"}) for n in ("heart", "lung")]

    again = load_model("litemedsam", device="cpu", quantize="nf4", adapters=dirs)
    assert again.identity == backend.identity and again.quantization == "nf4"
    for name in ("lung", "heart", None):
        set_adapter(again, name)
        with torch.inference_mode():
            got = again.decode(emb, boxes=boxes, multimask=True)
        for x, y in zip(got, outs[name]):
            np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=0, atol=1e-5)


def test_same_name_in_user_and_shipped_folders_stays_distinct(saved_tiny_adapters, tmp_path):
    """A user's adapter named like a shipped one is listed beside it, and each loads its own weights."""
    import shutil

    model, dirs, _ = saved_tiny_adapters
    user = tmp_path / "user"
    shutil.copytree(dirs["ct_adapter"], user / "ct_adapter")
    found = list_adapters([dirs["ct_adapter"].parent, user])
    names = [a.name for a in found]
    assert names.count("ct_adapter") == 1 and "ct_adapter-user" in names
    fresh = load_model("tiny_hf_sam", device="cpu")
    first = load_adapter(fresh, found[0].path, name=found[0].name)
    with pytest.raises(AdapterError, match="already loaded"):
        load_adapter(fresh, user / "ct_adapter", name=first)
    second = next(a for a in found if a.name == "ct_adapter-user")
    assert load_adapter(fresh, second.path, name=second.name) == "ct_adapter-user"
    assert set(fresh.adapter_info) == {"ct_adapter", "ct_adapter-user"}


def test_adapter_trained_for_single_mask_clicks_decodes_clicks_with_one_mask(saved_tiny_adapters, heart_slice,
                                                                            tmp_path):
    """``point_multimask: false`` in an adapter's metadata: clicks get the one output it was trained on."""
    import shutil

    from napari_qlora_minisam import MiniSamPredictor

    _, dirs, _ = saved_tiny_adapters
    single = tmp_path / "single_click"
    shutil.copytree(dirs["mri_adapter"], single)
    meta = json.loads((single / METADATA_FILE).read_text())
    (single / METADATA_FILE).write_text(json.dumps({**meta, "name": "single_click", "point_multimask": False}))
    model = load_model("tiny_hf_sam", device="cpu", adapters=[dirs["ct_adapter"], single])
    predictor = MiniSamPredictor(model)
    predictor.set_image(heart_slice[0])
    click = dict(points=np.array([[120.0, 100.0]]), point_labels=np.array([1]), multimask=True)
    box = dict(box=np.array([60.0, 50.0, 180.0, 160.0]), multimask=True)
    set_adapter(model, "single_click")
    assert model.point_multimask is False
    assert predictor.predict(**click)[0].shape[0] == 1
    assert predictor.predict(**box)[0].shape[0] == 3  # a box keeps what the caller asked for
    set_adapter(model, "ct_adapter")  # trained the SAM way: three candidates for a click
    assert model.point_multimask is True and predictor.predict(**click)[0].shape[0] == 3
    set_adapter(model, None)
    assert predictor.predict(**click)[0].shape[0] == 3
