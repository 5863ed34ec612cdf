"""Hub ids: a cached model loads without the network; one that is not cached, with the hub out of reach, is
refused at once with the fix (from_pretrained alone would retry for about a minute first).

Each case runs in a fresh interpreter: huggingface_hub and transformers read their cache folder and endpoint
from the environment when imported. The endpoint is a closed local port, so "unreachable" is immediate.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from napari_qlora_minisam.hub_access import endpoint_reachable

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there


def run_python(code: str, cache, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("HF_")}
    clean.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT=CLOSED, **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=clean, capture_output=True,
                          text=True, timeout=300)


def put_in_hub_cache(cache, repo_id: str) -> None:
    """A tiny random SAM laid out as ``hf download`` leaves it: refs/main -> snapshots/<revision>/files."""
    from napari_qlora_minisam import load_model

    revision = "0" * 40
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    load_model("tiny_hf_sam", device="cpu").net.save_pretrained(folder / "snapshots" / revision)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)


def test_a_cached_hub_model_loads_without_the_network(tmp_path):
    put_in_hub_cache(tmp_path, "someone/tiny-sam")
    done = run_python("""
        from napari_qlora_minisam import load_model
        from napari_qlora_minisam.hub_access import is_cached
        assert is_cached("someone/tiny-sam")
        model = load_model("someone/tiny-sam", device="cpu")
        print("loaded", model.source, model.num_parameters())
    """, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded someone/tiny-sam" in done.stdout


def test_an_uncached_hub_model_is_refused_at_once_with_the_fix(tmp_path):
    done = run_python("""
        from napari_qlora_minisam import load_model
        from napari_qlora_minisam.errors import ModelLoadError
        try:
            load_model("someone/not-downloaded", device="cpu")
        except ModelLoadError as exc:
            print("ERROR", exc)
    """, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    message = done.stdout
    assert "ERROR 'someone/not-downloaded' is not in the local Hugging Face cache" in message
    assert str(tmp_path) in message and "127.0.0.1 cannot be reached" in message
    assert "hf download someone/not-downloaded" in message and "'minisam'" in message
    assert "Retrying" not in done.stderr  # from_pretrained's back-off never started


def test_hf_hub_offline_is_named(tmp_path):
    done = run_python("""
        from minisam_train.training.student import check_student_source
        from napari_qlora_minisam.errors import ModelLoadError
        check_student_source("tiny_vit_b_shape", None)  # named specs, folders and shapes need no hub
        check_student_source("facebook/sam-vit-base", {"hidden_size": 64})
        try:
            check_student_source("facebook/sam-vit-base", None)
        except ModelLoadError as exc:
            print("ERROR", exc)
    """, tmp_path, HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HF_HUB_OFFLINE is set" in done.stdout and "student.source" in done.stdout


def test_the_probe_answers_for_a_closed_port_and_leaves_proxies_alone(monkeypatch):
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    assert endpoint_reachable(CLOSED, timeout=1.0) is False
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert endpoint_reachable(CLOSED, timeout=1.0) is True  # the proxy decides: from_pretrained asks it
