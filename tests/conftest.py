"""Shared fixtures, and the two markers that make ``pytest -m "not slow and not gui"`` the quick loop.

Real data lives in ../shared/data (CI has it beside the clone); small copies that tests must not depend on
that folder for go in tests/data.

Markers (CI runs everything; the markers only let a developer skip):
- ``gui``: every test under tests/_qt (it needs a display and napari), applied here;
- ``slow``: every test that builds the real LiteMedSAM. A test using one of ``LITEMEDSAM_FIXTURES`` gets it
  here; a test that calls ``load_model("litemedsam")`` itself says ``@pytest.mark.slow``. A test that builds
  the network without the marker fails (``_litemedsam_requires_slow``), so the quick loop stays quick.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MINISAM_SHARED_DATA", REPO.parent / "shared" / "data"))
TEST_DATA = Path(__file__).parent / "data"
QT_TESTS = Path(__file__).resolve().parent / "_qt"


def _absl_logs_to_the_process_stderr() -> None:
    """absl's logging handler (absl comes in with openvino, the CPU encoder's runtime) binds ``sys.stderr`` when
    absl is imported, and closes that stream in ``logging.shutdown`` unless it is the *current* stderr/stdout.
    Under pytest it binds pytest's capture file, and the in-process ``minisam-train`` tests reconfigure
    logging through Hydra (which shuts the old handlers down): pytest's capture file was closed and the run
    crashed. Bound to the process's own stderr, absl never closes it."""
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__


_absl_logs_to_the_process_stderr()

# Fixtures (here and in test modules) that give a test the real LiteMedSAM.
LITEMEDSAM_FIXTURES = frozenset({"litemedsam", "litemedsam_fresh", "own_litemedsam", "nf4_with_shipped_adapters"})


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if QT_TESTS in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.gui)
        if LITEMEDSAM_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


_running: dict = {"item": None, "unmarked": []}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _running["item"] = item  # before its fixtures: a session fixture loading LiteMedSAM is charged to it


@pytest.fixture(scope="session", autouse=True)
def _guard_litemedsam_builds():
    """Every build of the real LiteMedSAM network goes through ``build_litemedsam_net``: watch it."""
    from napari_qlora_minisam.models import litemedsam as module

    real = module.build_litemedsam_net

    def guarded(*args, **kwargs):
        item = _running["item"]
        if item is not None and item.get_closest_marker("slow") is None:
            _running["unmarked"].append(item.nodeid)
            raise RuntimeError(f"{item.nodeid} builds the real LiteMedSAM but is not marked slow: add "
                               "@pytest.mark.slow (or use the `litemedsam` fixture, which adds it).")
        return real(*args, **kwargs)

    module.build_litemedsam_net = guarded
    yield
    module.build_litemedsam_net = real


@pytest.fixture(autouse=True)
def _litemedsam_requires_slow(_guard_litemedsam_builds):
    """Fail a test that built LiteMedSAM unmarked, also where the build ran in a worker thread."""
    _running["unmarked"].clear()
    yield
    if _running["unmarked"]:
        pytest.fail(f"{_running['unmarked'][0]} builds the real LiteMedSAM without @pytest.mark.slow")


@pytest.fixture(scope="session", autouse=True)
def _onnx_graphs_in_a_temporary_folder(tmp_path_factory):
    """LiteMedSAM's CPU encoder exports its graph on first use (models/onnx_engine.py): into a folder of this
    session, never the user's cache. Set in ``os.environ``, so the CLI runs in subprocesses use it too."""
    from napari_qlora_minisam.models.onnx_engine import ONNX_DIR_ENV

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ONNX_DIR_ENV, str(tmp_path_factory.mktemp("onnx-graphs")))
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data folder {SHARED_DATA} is missing; set MINISAM_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def litemedsam():
    """The real bundled LiteMedSAM (fp32, CPU), loaded once per test session."""
    from napari_qlora_minisam import load_model

    return load_model("litemedsam", device="cpu")


@pytest.fixture(scope="session")
def tiny_hf():
    from napari_qlora_minisam import load_model

    return load_model("tiny_hf_sam", device="cpu")


@pytest.fixture(scope="session")
def heart_slice(shared_data):
    """A real cardiac MRI slice (uint8) and its label image (LV 85, myocardium 170, RV 255)."""
    import imageio.v3 as iio

    d = shared_data / "cosmos_sample" / "data" / "test_data" / "22_Heart"
    return iio.imread(d / "images" / "22_Heart_4_5.png"), iio.imread(d / "labels" / "22_Heart_4_5.png")

