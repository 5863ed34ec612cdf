"""``minisam-train eval`` end to end on tiny folders with the tiny random HF SAM (real code path, fast).

Numbers against the reference live in tests/core/test_reference_dice.py (real LiteMedSAM, real slices).
"""

import csv
import json

import numpy as np
import pytest
import tifffile

from minisam_train import cli
from minisam_train.evaluation.model_entries import load_entry, parse_model_entries, parse_model_entry
from minisam_train.evaluation.results import PER_OBJECT_COLUMNS
from minisam_train.tasks.evaluate import run
from napari_qlora_minisam.errors import ModelLoadError

from .test_eval_data import make_cosmos_root


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


class CountingLoader:
    """Loads models like the evaluator does and counts loads and encoder calls per model."""

    def __init__(self):
        self.loads, self.encodes = [], {}

    def __call__(self, entry):
        backend = load_entry(entry, "cpu")
        self.loads.append(entry.name)
        self.encodes[entry.name] = 0
        encode = backend.encode

        def counted(pixels):
            self.encodes[entry.name] += 1
            return encode(pixels)

        backend.encode = counted
        return backend


def eval_cfg(root, out, *overrides):
    return cli.compose("eval", [f"data.root={root}", f"output_dir={out}", "device=cpu", "logging.progress=false",
                                *overrides])


def test_cli_command_as_written(tmp_path):
    root = make_cosmos_root(tmp_path / "data")
    out = tmp_path / "out"
    cli.main(["eval", f"data.root={root}", "models=[tiny_hf_sam]", "prompts=[box]", f"output_dir={out}",
              "device=cpu", "logging.progress=false"])
    rows = read_csv(out / "per_object.csv")
    assert tuple(rows[0]) == PER_OBJECT_COLUMNS
    # 3 slices x 2 objects x 1 prompt x 2 selections
    assert len(rows) == 12
    assert {r["selection"] for r in rows} == {"oracle", "deployable"}
    assert all(0.0 <= float(r["dice"]) <= 1.0 and 0.0 <= float(r["nsd"]) <= 1.0 for r in rows)
    assert {(r["dataset"], r["modality"]) for r in rows} == {("1_Toy", "ct"), ("2_Other", "ct")}
    summary = (out / "summary.md").read_text()
    for heading in ("## Overall", "## Per modality", "## Per dataset", "## Per object class", "## Efficiency"):
        assert heading in summary
    eff = read_csv(out / "efficiency.csv")
    assert eff[0]["model"] == "tiny_hf_sam" and int(eff[0]["parameters"]) > 0
    assert float(eff[0]["encoder_ms_per_image"]) > 0 and float(eff[0]["peak_rss_mb"]) > 0
    assert (out / "dice_by_modality.png").stat().st_size > 0
    assert (out / "dice_vs_encoder_latency.png").stat().st_size > 0


def test_each_image_is_embedded_once_and_a_rerun_resumes(tmp_path):
    root = make_cosmos_root(tmp_path / "data")
    out = tmp_path / "out"
    loader = CountingLoader()
    cfg = eval_cfg(root, out, "models=[tiny_hf_sam]", "prompts=[point1,point5neg5,box]")
    first = run(cfg, loader=loader)
    assert loader.encodes == {"tiny_hf_sam": 3}  # 3 slices, 3 prompt modes: one embedding per slice
    assert len(first.rows) == 3 * 2 * 3 * 2
    # The same command again: nothing to do, the model is not even loaded, the summary is rewritten.
    again = CountingLoader()
    second = run(cfg, loader=again)
    assert again.loads == [] and len(read_csv(out / "per_object.csv")) == len(first.rows)
    assert len(second.rows) == len(first.rows) and read_csv(out / "efficiency.csv")[0]["model"] == "tiny_hf_sam"
    # A new prompt mode: only its rows are computed (each slice embedded once more, for that mode).
    more = CountingLoader()
    run(eval_cfg(root, out, "models=[tiny_hf_sam]", "prompts=[point1,point5,point5neg5,box]"), loader=more)
    rows = read_csv(out / "per_object.csv")
    assert more.encodes == {"tiny_hf_sam": 3}
    assert len(rows) == 3 * 2 * 4 * 2 and len({tuple(r.values()) for r in rows}) == len(rows)


def test_unreadable_image_is_reported_counted_and_the_run_goes_on(tmp_path):
    root = make_cosmos_root(tmp_path / "data")
    (root / "data" / "test_data" / "1_Toy" / "images" / "1_Toy_1.png").write_bytes(b"truncated")
    out = tmp_path / "out"
    outcome = run(eval_cfg(root, out, "models=[tiny_hf_sam]", "prompts=[box]"))
    assert [f["image"] for f in outcome.failures] == ["1_Toy_1.png"]
    failures = read_csv(out / "failures.csv")
    assert len(failures) == 1 and "Cannot read image" in failures[0]["error"]
    assert {r["image"] for r in read_csv(out / "per_object.csv")} == {"1_Toy_0.png", "2_Other_0.png"}
    assert "1 slice(s) could not be evaluated" in (out / "summary.md").read_text()


def test_unknown_model_source_fails_before_any_work(tmp_path):
    root = make_cosmos_root(tmp_path / "data")
    with pytest.raises(ModelLoadError, match="no_such_model"):
        run(eval_cfg(root, tmp_path / "out", "models=[tiny_hf_sam,no_such_model]"))
    assert not (tmp_path / "out" / "per_object.csv").exists()


def test_empty_dataset_is_a_clear_error(tmp_path):
    from minisam_train.data import DataError

    root = make_cosmos_root(tmp_path / "data", {"1_Toy": 0})
    with pytest.raises(DataError, match="No images found"):
        run(eval_cfg(root, tmp_path / "out", "models=[tiny_hf_sam]"))


def test_model_entries_and_adapter_off_naming():
    assert parse_model_entry("litemedsam").name == "litemedsam"
    on = parse_model_entry({"source": "litemedsam", "adapters": ["a/ct"], "quantize": "nf4"})
    assert (on.name, on.adapter_given) == ("litemedsam+nf4+ct", False)
    off = parse_model_entry({"source": "litemedsam", "adapters": ["a/ct"], "adapter": None})
    assert (off.name, off.adapter, off.adapter_given) == ("litemedsam+adapters-off", None, True)
    assert parse_model_entry({"source": "litemedsam", "adapters": "a/ct", "adapter": "off"}).adapter is None
    with pytest.raises(ModelLoadError, match="appear twice"):
        parse_model_entries(["litemedsam", "litemedsam"])
    with pytest.raises(ModelLoadError, match="unknown key"):
        parse_model_entry({"source": "litemedsam", "adaptor": "x"})


def test_adapter_off_scores_the_bare_base_and_models_sit_side_by_side(tmp_path):
    import torch

    from napari_qlora_minisam import load_model
    from napari_qlora_minisam.adapters import add_lora, save_adapter

    base = load_model("tiny_hf_sam", device="cpu")
    add_lora(base, "toy", r=4)
    with torch.no_grad():  # a fresh LoRA is a no-op (B = 0); make it change the output
        for name, p in base.peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    adapter = save_adapter(base, tmp_path / "toy", "toy", {"modality": "ct"})
    root = make_cosmos_root(tmp_path / "data", {"1_Toy": 2})
    out = tmp_path / "out"
    models = (f"models=[tiny_hf_sam,{{source: tiny_hf_sam, adapters: [{adapter}], name: on}},"
              f"{{source: tiny_hf_sam, adapters: [{adapter}], adapter: null, name: off}},"
              "{source: tiny_hf_sam, quantize: nf4}]")
    run(eval_cfg(root, out, models, "prompts=[box]", "selection=[deployable]"))
    rows = read_csv(out / "per_object.csv")
    by_model = {m: [(r["image"], r["object"], r["dice"]) for r in rows if r["model"] == m]
                for m in ("tiny_hf_sam", "on", "off")}
    assert by_model["off"] == by_model["tiny_hf_sam"]
    assert by_model["on"] != by_model["tiny_hf_sam"]
    summary = (out / "summary.md").read_text()
    assert "Dice on / tiny_hf_sam" in summary and "Dice off / tiny_hf_sam" in summary
    eff = {r["model"]: r for r in read_csv(out / "efficiency.csv")}
    assert list(eff) == ["tiny_hf_sam", "on", "off", "tiny_hf_sam+nf4"]
    # Same logical parameter count, a fraction of the bytes once the linear layers are 4-bit.
    assert eff["tiny_hf_sam+nf4"]["parameters"] == eff["tiny_hf_sam"]["parameters"]
    assert float(eff["tiny_hf_sam+nf4"]["memory_footprint_mb"]) < 0.6 * float(eff["tiny_hf_sam"]["memory_footprint_mb"])


def test_split_file_volumes_and_random_sampling(tmp_path):
    root = make_cosmos_root(tmp_path / "data")
    split = tmp_path / "splits.json"
    split.write_text(json.dumps({"1_Toy": {"test": ["1_Toy_1.png"]}}))
    vol_dir = tmp_path / "vols"
    vol_dir.mkdir()
    label = np.zeros((3, 40, 40), np.uint8)
    label[1, 10:25, 10:25] = 1
    image = np.random.default_rng(1).integers(-500, 500, label.shape).astype(np.int16) + 600 * label.astype(np.int16)
    tifffile.imwrite(vol_dir / "v_image.tif", image)
    tifffile.imwrite(vol_dir / "v_label.tif", label)
    (vol_dir / "volumes.json").write_text(json.dumps({"v": {"modality": "ct", "object": "Blob"}}))
    overrides = ["models=[tiny_hf_sam]", "prompts=[point5neg5,box_point1]", f"data.split_file={split}",
                 "data.split_key=test", f"data.volume_root={vol_dir}", "sampling.mode=random",
                 "sampling.box_jitter=3", "sampling.seed=7"]
    run(eval_cfg(root, tmp_path / "a", *overrides))
    rows = read_csv(tmp_path / "a" / "per_object.csv")
    assert {(r["dataset"], r["image"]) for r in rows} == {("1_Toy", "1_Toy_1.png"), ("v", "v_z1")}
    # Seeded per (seed, dataset, image, object): a second run draws the same prompts, same scores.
    run(eval_cfg(root, tmp_path / "b", *overrides))
    assert read_csv(tmp_path / "b" / "per_object.csv") == rows
    assert "`random` (seed 7, box jitter 3 px)" in (tmp_path / "b" / "summary.md").read_text()


def test_modality_flag_filters_slices(tmp_path):
    from minisam_train.data import DataError
    from minisam_train.tasks.evaluate import build_sources

    a = make_cosmos_root(tmp_path / "a", {"1_Toy": 2})
    b = make_cosmos_root(tmp_path / "b", {"2_Other": 1}, modalities=False)
    cfg = cli.compose("eval", [f"data.roots=[{a},{b}]", "data.modalities={2_Other: MRI}", "--modality", "mri"])
    assert cfg.modality == "mri"
    sources = build_sources(cfg.data, 50, cfg.modality)
    assert [e.image_name for e in sources.entries] == ["2_Other_0.png"] and len(sources) == 1
    with pytest.raises(DataError, match="No slice has modality 'us'"):
        run(eval_cfg(a, tmp_path / "out", "--modality", "us"))


def test_resuming_with_other_scoring_settings_is_refused(tmp_path):
    from minisam_train.data import DataError

    root = make_cosmos_root(tmp_path / "data", {"1_Toy": 1})
    out = tmp_path / "out"
    run(eval_cfg(root, out, "models=[tiny_hf_sam]", "prompts=[box]", "plots=false"))
    with pytest.raises(DataError, match="nsd_tolerance"):
        run(eval_cfg(root, out, "models=[tiny_hf_sam]", "prompts=[box]", "nsd_tolerance=1"))
    # Settings that do not change a row (models, prompts, plots) may change between runs.
    run(eval_cfg(root, out, "models=[tiny_hf_sam]", "prompts=[box,point1]", "plots=false"))
