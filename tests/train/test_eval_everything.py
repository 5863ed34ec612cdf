"""COSMOS S1 ``everything`` in ``minisam-train eval``: tiny random HF SAM end to end, and the matching rule."""

from __future__ import annotations

import numpy as np
import pytest

from minisam_train.evaluation.evaluator import EvalSettings, Evaluator
from minisam_train.tasks.evaluate import run

from .test_eval_data import make_cosmos_root
from .test_eval_run import CountingLoader, eval_cfg, read_csv

OFF = ["everything.points_per_side=4", "everything.pred_iou_thresh=-10", "everything.stability_thresh=0",
       "everything.min_area=1"]


def test_everything_rows_are_oracle_only_reported_as_s1_and_resumed(tmp_path):
    root = make_cosmos_root(tmp_path / "data")
    out = tmp_path / "out"
    loader = CountingLoader()
    run(eval_cfg(root, out, "models=[tiny_hf_sam]", "prompts=[everything,box]", *OFF), loader=loader)
    rows = read_csv(out / "per_object.csv")
    every = [r for r in rows if r["prompt"] == "everything"]
    # 3 slices x 2 objects, oracle only; box: 3 x 2 x 2 selections; one embedding per slice for both modes
    assert len(every) == 6 and {r["selection"] for r in every} == {"oracle"}
    assert len(rows) == 6 + 12 and loader.encodes == {"tiny_hf_sam": 3}
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in every)
    assert any(float(r["dice"]) > 0 for r in every)  # with the filters off some mask touches each object
    summary = (out / "summary.md").read_text()
    assert "S1 everything" in summary and "S1 everything (single mask)" not in summary
    again = CountingLoader()
    run(eval_cfg(root, out, "models=[tiny_hf_sam]", "prompts=[everything,box]", *OFF), loader=again)
    assert again.loads == [] and len(read_csv(out / "per_object.csv")) == 18
    # other everything settings would mix rows: refused
    with pytest.raises(Exception, match="everything"):
        run(eval_cfg(root, out, "models=[tiny_hf_sam]", "prompts=[everything]", "everything.points_per_side=2"))


def test_each_object_is_scored_against_its_best_matching_mask(tmp_path, monkeypatch):
    import napari_qlora_minisam.everything as ev

    gt_a = np.zeros((40, 40), bool)
    gt_a[5:15, 5:15] = True
    gt_b = np.zeros((40, 40), bool)
    gt_b[20:35, 20:35] = True
    half_a = gt_a.copy()
    half_a[10:15] = False
    found = [{"mask": half_a}, {"mask": gt_b}, {"mask": gt_a | gt_b}]
    monkeypatch.setattr(ev, "segment_everything", lambda predictor, image, **kw: found)

    class Record:
        dataset, modality, image_name, image = "1_Toy", "ct", "x.png", np.zeros((40, 40), np.uint8)
        objects = {"A": gt_a, "B": gt_b}

    e = Evaluator([], [], EvalSettings(prompts=("everything",), progress=False), tmp_path)
    rows = e._score_mode(None, None, "m", Record, "everything")
    dice = {r["object"]: r["dice"] for r in rows}
    assert [r["selection"] for r in rows] == ["oracle", "oracle"]
    # A: half of it (Dice 2*50/150 = 0.667) beats the union (2*100/(325+100) = 0.47); B: exact
    assert dice["A"] == pytest.approx(2 / 3) and dice["B"] == pytest.approx(1.0)
    monkeypatch.setattr(ev, "segment_everything", lambda predictor, image, **kw: [])
    assert {r["dice"] for r in e._score_mode(None, None, "m", Record, "everything")} == {0.0}


def test_unknown_everything_setting_is_refused():
    with pytest.raises(ValueError, match="points_per_sid"):
        EvalSettings(prompts=("everything",), everything={"points_per_sid": 4})
