"""Every per-user folder follows one rule: its environment variable, else a folder under the user's cache."""

from __future__ import annotations

import pytest

from minisam_train.data.unlabelled_cache import default_cache_dir
from napari_qlora_minisam.adapters import user_adapters_dir
from napari_qlora_minisam.embedding_store import default_store_dir
from napari_qlora_minisam.models.onnx_engine import onnx_dir

FOLDERS = [(user_adapters_dir, "MINISAM_ADAPTERS_DIR", "adapters"), (onnx_dir, "MINISAM_ONNX_DIR", "onnx"),
           (default_store_dir, "MINISAM_EMBEDDINGS_DIR", "embeddings"),
           (default_cache_dir, "MINISAM_UNLABELLED_DIR", "unlabelled_slices")]


@pytest.mark.parametrize("folder, env, name", FOLDERS)
def test_folder_is_the_variable_else_under_the_users_cache(folder, env, name, monkeypatch, tmp_path):
    monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert folder() == tmp_path / "home" / ".cache" / "napari-qlora-minisam" / name
    monkeypatch.setenv(env, str(tmp_path / "mine"))
    assert folder() == tmp_path / "mine"
    monkeypatch.setenv(env, "~/elsewhere")
    assert folder() == tmp_path / "home" / "elsewhere"
