"""Scripts that turn runs into figures and shipped files: MAC counting, shipping adapters, eval doc tables."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "experiments"))
import eval_doc_tables  # noqa: E402
import model_flops  # noqa: E402
import prune_minisam_decoder  # noqa: E402
import ship_adapters  # noqa: E402
import ship_minisam  # noqa: E402


def test_sdpa_is_counted_as_the_matmuls_it_replaces():
    from torch.utils.flop_counter import FlopCounterMode

    q, k, v = torch.randn(2, 4, 64, 16), torch.randn(2, 4, 48, 16), torch.randn(2, 4, 48, 8)
    sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    with FlopCounterMode(display=False, custom_mapping={sdpa: model_flops._sdpa_flops}) as fused:
        torch.nn.functional.scaled_dot_product_attention(q, k, v)
    with FlopCounterMode(display=False) as explicit:
        torch.softmax(q @ k.transpose(-1, -2) / 4.0, dim=-1) @ v
    assert fused.get_total_flops() == explicit.get_total_flops() == 2 * 2 * 4 * 64 * 48 * (16 + 8)


def _adapter(folder: Path, scores=True) -> Path:
    folder.mkdir(parents=True)
    for name in ship_adapters.FILES:
        (folder / name).write_text("{}")
    meta = {"name": folder.name, "base_source": "tiny_hf_sam"}
    if scores:
        meta["scores"] = {"box": 0.8}
    (folder / "minisam_adapter.json").write_text(json.dumps(meta))
    return folder


def test_shipping_refuses_an_adapter_without_scores_and_leaves_the_package_alone(tmp_path, monkeypatch):
    package = tmp_path / "pretrained_adapters"
    shipped = _adapter(package / "ct")
    before = {p.name: p.read_text() for p in shipped.iterdir()}
    _adapter(tmp_path / "run" / "adapters" / "ct", scores=False)
    monkeypatch.setattr(ship_adapters, "PACKAGE_ADAPTERS", package)
    with pytest.raises(SystemExit, match="no measured scores"):
        ship_adapters.main([str(tmp_path / "run"), "--modalities", "ct"])
    assert {p.name: p.read_text() for p in shipped.iterdir()} == before


def test_shipping_replaces_the_folder_whole_and_readable(tmp_path, monkeypatch):
    package = tmp_path / "pretrained_adapters"
    _adapter(package / "ct")
    new = _adapter(tmp_path / "run" / "adapters" / "ct")
    (new / "adapter_model.safetensors").write_text("new weights")
    monkeypatch.setattr(ship_adapters, "PACKAGE_ADAPTERS", package)
    monkeypatch.setattr(ship_adapters, "check", lambda src: None)  # loading needs real peft files
    ship_adapters.main([str(tmp_path / "run"), "--modalities", "ct"])
    assert (package / "ct" / "adapter_model.safetensors").read_text() == "new weights"
    assert sorted(p.name for p in package.iterdir()) == ["ct"]  # no temporary or old folder left
    assert (package / "ct").stat().st_mode & 0o777 == 0o755
    assert (package / "ct" / "minisam_adapter.json").stat().st_mode & 0o777 == 0o644


def _write(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_nf4_tables_compare_two_models_and_one_invocation(tmp_path):
    summary = [dict(level=level, group=group, model=m, prompt="box", selection="deployable", classes=1, objects=n,
                    dice=d, nsd=0.5)
               for m, d in (("fp32", 0.80), ("nf4", 0.60))
               for level, group, n in (("overall", "all", 3), ("class", "X/Tumour", 3))]
    _write(tmp_path / "summary.csv", summary)
    eff = [dict(model=m, device="cpu", parameters=10, memory_footprint_mb=mb, encoder_ms_per_image=500,
                decoder_ms_per_prompt=20, peak_rss_mb=1000, invocation=inv, load_avg_1min=1.0, cpu_count=2,
                torch_threads=2, device_name="cpu", process="")
           for inv, m, mb in (("old", "fp32", 99.0), ("new", "fp32", 40.0), ("new", "nf4", 20.0))]
    _write(tmp_path / "efficiency.csv", eff)
    text = eval_doc_tables.nf4_tables(tmp_path)
    assert "| box | 0.800 | 0.600 | 0.75 |" in text
    assert "| X/Tumour | 3 | 0.800 | 0.600 |" in text
    assert "20.0 MB (0.50×)" in text and "99.0" not in text  # ratios within the newest invocation only


def _per_object(path, rows):
    from minisam_train.evaluation.results import PER_OBJECT_COLUMNS

    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=PER_OBJECT_COLUMNS)
        w.writeheader()
        for model, ds, obj, img, prompt, sel, dice in rows:
            w.writerow({"model": model, "dataset": ds, "modality": "ct", "object": obj, "image": img,
                        "prompt": prompt, "selection": sel, "dice": dice, "nsd": dice})


def test_minisam_scores_are_per_object_and_class_means_of_deployable_rows(tmp_path):
    _per_object(tmp_path / "per_object.csv", [
        ("student", "1_A", "x", "a.png", "box", "deployable", 0.9),
        ("student", "1_A", "x", "b.png", "box", "deployable", 0.7),
        ("student", "1_A", "y", "a.png", "box", "deployable", 0.2),
        ("student", "1_A", "y", "a.png", "box", "oracle", 1.0),  # not the deployable choice: ignored
        ("teacher", "1_A", "x", "a.png", "point1", "deployable", 0.5),
    ])
    s = ship_minisam.scores(tmp_path / "per_object.csv")
    box = s["student"]["box"]
    assert box["objects"] == 3
    assert box["dice_per_object"] == pytest.approx(0.6)  # (0.9 + 0.7 + 0.2) / 3
    assert box["class_mean"] == pytest.approx((0.8 + 0.2) / 2)  # each class once, whatever its count
    assert box["per_class"] == pytest.approx({"1_A/x": 0.8, "1_A/y": 0.2})
    assert s["teacher"]["point1"]["objects"] == 1 and "box" not in s["teacher"]


def test_ship_minisam_chooses_on_the_pooled_validation_objects(tmp_path):
    """The val split alone would pick the scratch student; pooled with adapt_train's objects it loses."""
    for folder, rows in {"adapt_train_eval": [("teacher_litemedsam", 0.8), ("teacher_init_160_s3_half", 0.7),
                                              ("scratch_AB_average", 0.5)],
                         "val_eval": [("teacher_litemedsam", 0.5), ("teacher_init_160_s3_half", 0.5),
                                      ("scratch_AB_average", 0.6)]}.items():
        (tmp_path / folder).mkdir()
        _per_object(tmp_path / folder / "per_object.csv", [
            (m, "1_A", "x", f"{i}.png", "box", "deployable", d) for m, d in rows for i in range(3)])
    pooled = ship_minisam.validation_scores(tmp_path)
    assert pooled["scratch_AB_average"]["box"]["objects"] == 6
    assert pooled["teacher_init_160_s3_half"]["box"]["dice_per_object"] == pytest.approx(0.6)
    assert pooled["scratch_AB_average"]["box"]["dice_per_object"] == pytest.approx(0.55)
    (tmp_path / "val_eval" / "per_object.csv").write_text("")  # an unfinished evaluation is no basis
    with pytest.raises(SystemExit, match="no rows"):
        ship_minisam.main([str(tmp_path)])


def test_ship_minisam_refuses_a_candidate_that_is_not_the_best_on_validation(tmp_path, monkeypatch):
    for folder in ("adapt_train_eval", "val_eval"):
        (tmp_path / folder).mkdir()
        _per_object(tmp_path / folder / "per_object.csv", [
            ("teacher_litemedsam", "1_A", "x", "a.png", "box", "deployable", 0.9),
            ("teacher_init_160_s3_half", "1_A", "x", "a.png", "box", "deployable", 0.6),
            ("scratch_AB_average", "1_A", "x", "a.png", "box", "deployable", 0.8),
        ])
    with pytest.raises(SystemExit, match="teacher_init_160_s3_half is not the best on validation "
                                         ".scratch_AB_average is."):
        ship_minisam.main([str(tmp_path)])


def test_ship_minisam_prints_the_best_student_and_its_folder_for_the_run_scripts(tmp_path, capsys):
    for folder, rows in {"adapt_train_eval": [("teacher_litemedsam", 0.9), ("teacher_init_160_s3_half", 0.6),
                                              ("s3_w10", 0.62), ("w10_mask_objects", 0.7)],
                         "val_eval": [("teacher_litemedsam", 0.9), ("teacher_init_160_s3_half", 0.6),
                                      ("s3_w10", 0.7), ("w10_mask_objects", 0.5)]}.items():
        (tmp_path / folder).mkdir()
        _per_object(tmp_path / folder / "per_object.csv", [
            (m, "1_A", "x", f"{i}.png", "box", "deployable", d) for m, d in rows for i in range(2)])
    ship_minisam.main([str(tmp_path), "--print-best"])  # pooled: s3_w10 0.66, w10_mask_objects 0.60
    assert capsys.readouterr().out.split() == ["s3_w10", str(tmp_path / "s3_w10" / "160-s3")]
    ship_minisam.main([str(tmp_path), "--validation-only"])  # the table only: nothing is shipped
    assert "w10_mask_objects 0.600 (4 objects)" in capsys.readouterr().out



def test_ship_minisam_budget_rule_passes_a_smaller_student_within_the_dice_margin(tmp_path, monkeypatch, capsys):
    """--within-budget: not the best on validation, but within the footprint and 0.97 x the teacher: it passes;
    over the footprint, or under the margin, it is refused."""
    import napari_qlora_minisam

    class Sized:
        def __init__(self, source, device=None):
            self.source = source

        def memory_footprint(self):
            return {"litemedsam": 100}.get(self.source, 59 if self.source.endswith("mlp256/160-s3") else 61)

    monkeypatch.setattr(napari_qlora_minisam, "load_model", Sized)
    rows = {"teacher_litemedsam": 0.70, "s3_w10": 0.69, "s3_w10_mlp256": 0.68}
    for folder in ("adapt_train_eval", "val_eval"):
        (tmp_path / folder).mkdir()
        _per_object(tmp_path / folder / "per_object.csv", [
            (m, "1_A", "x", "a.png", "box", "deployable", d) for m, d in rows.items()])
    rule = ["--within-budget", "0.6", "--check-only"]
    ship_minisam.main([str(tmp_path), "--candidate", "s3_w10_mlp256", *rule])  # 0.59 x, 0.971 x: passes
    assert "footprint 0.590 x LiteMedSAM's" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="footprint 0.610 x LiteMedSAM's is over 0.6"):
        ship_minisam.main([str(tmp_path), "--candidate", "s3_w10", *rule])
    with pytest.raises(SystemExit, match="validation ratio 0.971 is under 0.98"):
        ship_minisam.main([str(tmp_path), "--candidate", "s3_w10_mlp256", *rule, "--min-ratio", "0.98"])

def test_the_shipped_report_joins_the_earlier_stages_test_rows(tmp_path, monkeypatch):
    """A later stage's report shows its own test run and, from the run it grew from, the earlier students'
    rows (scored once when each was chosen) with their encoder folders; the teacher's row is the new run's."""
    import minisam_report

    root, previous = tmp_path / "window", tmp_path / "teacher_init"
    tables = {root / "adapt_train_eval": [("teacher_litemedsam", 0.8), ("teacher_init_160_s3_half", 0.6),
                                          ("s3_w10", 0.7)],
              root / "val_eval": [("teacher_litemedsam", 0.5), ("teacher_init_160_s3_half", 0.5), ("s3_w10", 0.6)],
              root / "test_eval": [("teacher_litemedsam", 0.68), ("s3_w10", 0.66)],
              previous / "test_eval": [("teacher_litemedsam", 0.5), ("teacher_init_160_s3_half", 0.63),
                                       ("scratch_AB_average", 0.58)]}
    for folder, rows in tables.items():
        folder.mkdir(parents=True)
        _per_object(folder / "per_object.csv", [(m, "1_A", "x", "a.png", p, "deployable", d)
                                               for m, d in rows for p in ("box", "point1")])
    seen = {}
    monkeypatch.setattr(minisam_report, "latencies", lambda sources: seen.update(sources) or {m: 0.1 for m in sources})
    text = minisam_report.teacher_init_report(root, tmp_path / "scratch", False, previous)
    assert seen == {"teacher_litemedsam": "litemedsam", "s3_w10": str(root / "s3_w10" / "160-s3"),
                    "teacher_init_160_s3_half": str(previous / "students" / "160-s3-half"),
                    "scratch_AB_average": str(tmp_path / "scratch")}
    assert "| `teacher_litemedsam` | 0.680 | 0.680 | 1.000 | 1.000 |" in text  # this run's teacher
    assert "| `teacher_init_160_s3_half` | 0.630 | 0.630 | 0.926 |" in text  # the earlier stage, against it
    assert "`TEST=1 bash experiments/run_minisam_window.sh`" in text and "scored once" in text


def test_refine_report_writes_fit_val_and_test_tables_into_its_own_section(tmp_path, monkeypatch):
    import minisam_report

    rows = {"fit_eval": [("teacher_litemedsam", 0.8), ("shipped_AB", 0.6), ("C_refine", 0.7)],
            "val_eval": [("teacher_litemedsam", 0.5), ("shipped_AB", 0.6), ("C_refine", 0.4)]}
    for folder, scores in rows.items():
        (tmp_path / folder).mkdir()
        _per_object(tmp_path / folder / "per_object.csv",
                    [(m, "1_A", "x", "a.png", "box", "deployable", d) for m, d in scores])
    doc = tmp_path / "minisam.md"
    doc.write_text(f"# MiniSAM\n\nkept\n\n{minisam_report.REFINE_START}\nold\n{minisam_report.REFINE_END}\n\ntail\n")
    monkeypatch.setattr(minisam_report, "DOC", doc)
    minisam_report.main([str(tmp_path), "--refine"])
    text = doc.read_text()
    assert "old" not in text and "kept" in text and text.rstrip().endswith("tail")
    assert "### Fit: the training images" in text and "### Refinement: validation" in text
    assert "| `C_refine` | 0.700 | 0.875 |" in text  # fit: box Dice, ratio to the teacher's 0.8
    assert "| `C_refine` | 0.400 | – | 0.800 |" in text  # val: no point1 rows
    assert "test (once" not in text  # no test step has run
    (tmp_path / "test_eval").mkdir()
    _per_object(tmp_path / "test_eval" / "per_object.csv",
                [("teacher_litemedsam", "1_A", "x", "a.png", "box", "deployable", 0.9),
                 ("C_refine", "1_A", "x", "a.png", "box", "deployable", 0.45)])
    assert "| `C_refine` | 0.450 | – | 0.500 |" in minisam_report.refine_report(tmp_path)


def test_the_decoder_cut_keeps_units_that_fired_in_any_run_rounded_up_to_whole_blocks():
    first, second = [-2.0] * 128, [-2.0] * 128
    first[100], first[70], second[5] = 1.0, -0.1, 0.3
    chosen = prune_minisam_decoder.choose([{"a": first, "b": [0.5] * 64}, {"a": second}])  # "b": first run only
    a = chosen["a"]
    assert (a["width"], a["fired"], a["kept"]) == (128, 2, 64)
    assert a["keep"] == sorted(a["keep"]) and {5, 100, 70} <= set(a["keep"])  # fired in either, then nearest
    assert 127 not in a["keep"]
    assert chosen["b"] == {"width": 64, "fired": 64, "kept": 64, "keep": list(range(64))}
