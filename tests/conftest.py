"""Shared fixtures. Real data lives in ../shared/data (CI has it beside the clone); small copies that tests
must not depend on that folder for go in tests/data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MINISAM_SHARED_DATA", REPO.parent / "shared" / "data"))
TEST_DATA = Path(__file__).parent / "data"


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


def tight_box(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * (a & b).sum() / s
