"""The package layering and the install extras, checked in fresh interpreters.

- the core (everything but ``_qt``) imports no Qt, no napari and nothing of ``minisam_train``;
- ``minisam_train`` imports no Qt and no napari;
- a core-only install (no ``[napari]``, no ``[train]``) loads a model, predicts and trains an adapter: the
  extras' packages are made unimportable (``sys.modules[name] = None``) before anything is imported.
  accelerate is not among them: peft, a core dependency, imports it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

QT_AND_NAPARI = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "vispy")
TRAIN_ONLY = ("minisam_train", "hydra", "omegaconf", "tensorboard", "matplotlib", "imageio")
NAPARI_EXTRA = ("napari", "qtpy", "PyQt6", "npe2", "tifffile")


def _run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


_IMPORT_ALL = """
    import importlib, json, pkgutil, sys

    def import_all(package, skip=()):
        pkg = importlib.import_module(package)
        names = [package]
        for info in pkgutil.walk_packages(pkg.__path__, package + "."):
            if not any(info.name == s or info.name.startswith(s + ".") for s in skip):
                importlib.import_module(info.name)
                names.append(info.name)
        return names

    def loaded(tops):
        return sorted(m for m in sys.modules if m.split(".")[0] in tops)
"""


def test_the_core_imports_no_qt_napari_or_training_toolkit():
    out = _run(_IMPORT_ALL + f"""
    import napari_qlora_minisam, napari_qlora_minisam.predictor, napari_qlora_minisam.loading
    import napari_qlora_minisam.adapter_training
    names = import_all("napari_qlora_minisam", skip=("napari_qlora_minisam._qt",))
    print(json.dumps({{"imported": names, "bad": loaded({QT_AND_NAPARI + TRAIN_ONLY!r})}}))
    """)
    assert "napari_qlora_minisam.adapter_training.loop" in out["imported"]
    assert out["bad"] == []


def test_the_training_toolkit_imports_no_qt_or_napari():
    out = _run(_IMPORT_ALL + f"""
    names = import_all("minisam_train")
    print(json.dumps({{"imported": names, "bad": loaded({QT_AND_NAPARI!r})}}))
    """)
    assert {"minisam_train.cli", "minisam_train.tasks.adapt", "minisam_train.tasks.distill"} <= set(out["imported"])
    assert out["bad"] == []


def test_a_core_only_install_loads_predicts_and_trains_an_adapter(tmp_path):
    """What ``pip install napari-qlora-minisam`` (no extras) must be enough for."""
    blocked = sorted(set(TRAIN_ONLY + NAPARI_EXTRA))
    out = _run(f"""
    import json, sys
    for name in {blocked!r}:
        sys.modules[name] = None  # "not installed": importing it raises ImportError

    import numpy as np
    from napari_qlora_minisam import MiniSamPredictor, load_model, train_adapter
    from napari_qlora_minisam.adapter_training import AdapterRecipe, EarlyStopping
    from napari_qlora_minisam.adapter_training.views import AugmentConfig

    yy, xx = np.mgrid[:96, :96]
    labels = (((xx - 30) ** 2 + (yy - 50) ** 2) <= 100).astype(np.uint16)
    labels[((xx - 70) ** 2 + (yy - 40) ** 2) <= 80] = 2
    image = np.random.default_rng(0).normal(50, 8, (96, 96)).astype(np.float32) + 40 * labels
    model = load_model("tiny_hf_sam", device="cpu")
    predictor = MiniSamPredictor(model)
    predictor.set_image(image)
    masks, _, _ = predictor.predict(box=[20, 40, 40, 60], multimask=False)
    recipe = AdapterRecipe(steps=2, batch_size=1, val_every=2, log_every=1,
                           augment=AugmentConfig(views_per_image=1), early_stopping=EarlyStopping(enabled=False))
    path = train_adapter(model, [(image, labels), (image, labels)], {str(tmp_path)!r}, "core_only",
                         recipe=recipe)
    print(json.dumps({{"mask": list(masks.shape), "adapter": str(path),
                       "blocked_loaded": [m for m in {blocked!r} if sys.modules.get(m) is not None]}}))
    """)
    assert out["mask"] == [1, 96, 96]
    assert out["blocked_loaded"] == []
    assert (tmp_path / "core_only" / "minisam_adapter.json").is_file()


def test_extras_split_the_plugin_and_the_training_stack_and_setup_installs_both():
    import re
    import tomllib
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]

    def names(reqs):
        return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}

    core, extras = names(project["dependencies"]), project["optional-dependencies"]
    # onnx (the exporter) and openvino (the runtime) are core: they run the default CPU encoder. The second
    # runtime stays optional.
    assert not core & {"napari", "qtpy", "pyqt5", "pyqt6", "pyside2", "pyside6", "magicgui", "hydra-core",
                       "accelerate", "tensorboard", "matplotlib", "onnxruntime"}
    assert {"onnx", "openvino"} <= core
    assert {"napari", "qtpy"} <= names(extras["napari"])
    assert {"hydra-core", "accelerate", "tensorboard", "matplotlib"} <= names(extras["train"])
    assert '".[napari,train,test]"' in (repo / "scripts" / "setup.sh").read_text()
    tox_extras = (repo / "tox.ini").read_text().split("extras =")[1].split("commands")[0].split()
    assert sorted(tox_extras) == ["napari", "test", "train"]
