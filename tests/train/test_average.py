"""minisam-train average: the weight average of students of one architecture, on tiny random SAMs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from minisam_train.training.student import build_student_net
from minisam_train.training.weight_average import SUMMARY_FILE, average_models, average_state_dicts


@pytest.fixture(scope="module")
def two_students(tmp_path_factory):
    root = tmp_path_factory.mktemp("soup")
    dirs = []
    for seed in (1, 2):
        net = build_student_net("tiny_hf_sam_small", seed=seed).eval()
        net.save_pretrained(str(root / f"s{seed}"))
        dirs.append(root / f"s{seed}")
    (dirs[0] / "distill_summary.json").write_text(json.dumps({"steps": 7, "train_seconds": 1.5, "history": []}))
    return root, dirs


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_uniform_and_weighted_means(two_students, tmp_path):
    _, (a, b) = two_students
    wa, wb = _weights(a), _weights(b)
    key = next(k for k, t in wa.items() if t.is_floating_point() and not torch.equal(t, wb[k]))
    summary = average_models([a, b], tmp_path / "soup")
    soup = _weights(tmp_path / "soup")
    assert soup.keys() == wa.keys()
    torch.testing.assert_close(soup[key], (wa[key] + wb[key]) / 2)
    assert not torch.equal(soup[key], wa[key])
    assert summary["source_summaries"][0]["steps"] == 7 and summary["source_summaries"][1] == {}
    assert json.loads((tmp_path / "soup" / SUMMARY_FILE).read_text())["weights"] == [1.0, 1.0]
    average_models([a, b], tmp_path / "soup", weights=[3, 1])  # replaces the earlier average
    torch.testing.assert_close(_weights(tmp_path / "soup")[key], 0.75 * wa[key] + 0.25 * wb[key])


def test_average_loads_and_decodes(two_students, tmp_path):
    from napari_qlora_minisam import MiniSamPredictor, load_model

    _, (a, b) = two_students
    average_models([a, b], tmp_path / "soup")
    pred = MiniSamPredictor(load_model(str(tmp_path / "soup"), device="cpu"))
    pred.set_image(np.random.default_rng(0).integers(0, 255, (40, 48), dtype=np.uint8))
    masks, scores, _ = pred.predict(box=np.array([5, 5, 30, 30], np.float32), multimask=False)
    assert masks.shape == (1, 40, 48) and np.isfinite(scores).all()


def test_mismatched_models_are_refused_and_nothing_is_written(two_students, tmp_path):
    _, (a, _) = two_students
    other = build_student_net("tiny_hf_sam", seed=0).eval()
    other.save_pretrained(str(tmp_path / "other"))
    with pytest.raises(ValueError, match="not one architecture|shape"):
        average_models([a, tmp_path / "other"], tmp_path / "soup")
    assert not (tmp_path / "soup").exists()
    with pytest.raises(ValueError, match="one of the sources"):
        average_models([a, tmp_path / "other"], a)
    with pytest.raises(ValueError, match="at least two"):
        average_models([a], tmp_path / "soup")


def test_state_dict_checks():
    s1 = {"w": torch.ones(2), "n": torch.tensor(3)}
    s2 = {"w": torch.zeros(2), "n": torch.tensor(5)}
    out = average_state_dicts([s1, s2], [1, 3])
    torch.testing.assert_close(out["w"], torch.full((2,), 0.25))
    assert out["n"].item() == 3  # integer buffers come from the first model
    with pytest.raises(ValueError, match="2 weights for 1"):
        average_state_dicts([s1], [1, 2])
    with pytest.raises(ValueError, match="positive sum"):
        average_state_dicts([s1, s2], [0, 0])
    with pytest.raises(ValueError, match="shape"):
        average_state_dicts([s1, {"w": torch.zeros(3), "n": torch.tensor(1)}])


def test_cli_average(two_students, tmp_path, capsys):
    from minisam_train.cli import main

    _, (a, b) = two_students
    main(["average", f"sources=[{a},{b}]", f"output_dir={tmp_path / 'cli_soup'}"])
    assert (tmp_path / "cli_soup" / "model.safetensors").is_file()
    with pytest.raises(SystemExit) as failed:
        main(["average", f"sources=[{a},{tmp_path}]", f"output_dir={tmp_path / 'bad'}"])
    assert failed.value.code == 1
    err = capsys.readouterr().err
    assert "minisam-train average: error:" in err and "config.json" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()  # a failed run leaves no folder behind
