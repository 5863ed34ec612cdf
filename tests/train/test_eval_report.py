"""``summary.md`` of ``minisam-train eval``: the COSMOS pivot, single-mask modes printed once, efficiency
compared only within one invocation (with the load average beside it), atomic replacement of the summary,
no folder left behind by a failed run, and a readable plot with 7 models.

Most tests feed hand-made rows to the report (no model); the end-to-end ones use the tiny random HF SAM on
one-slice folders.
"""

import csv
import re
from pathlib import Path

import pytest

from minisam_train import cli
from minisam_train.evaluation import efficiency, report
from minisam_train.evaluation.efficiency import ModelTimer
from minisam_train.tasks.evaluate import rewrite_report, run

from .test_eval_data import make_cosmos_root


def row(model, dataset, modality, obj, image, prompt, selection, dice, nsd=0.5):
    return {"model": model, "dataset": dataset, "modality": modality, "object": obj, "image": image,
            "prompt": prompt, "selection": selection, "dice": dice, "nsd": nsd}


def hand_rows(models=("m1",)):
    """ct: class 1_A/X on two slices (0.5, 0.7 -> 0.6) and 1_A/Y on one (0.9); mri: 2_B/Z on one (0.2).
    point1 oracle = those values, deployable = 0.1 less; box: the same under both selections (one mask);
    every model after the first adds 0.05."""
    out = []
    for k, m in enumerate(models):
        for ds, mod, obj, img, d in (("1_A", "ct", "X", "a0", 0.5), ("1_A", "ct", "X", "a1", 0.7),
                                     ("1_A", "ct", "Y", "a0", 0.9), ("2_B", "mri", "Z", "b0", 0.2)):
            d += 0.05 * k
            out += [row(m, ds, mod, obj, img, "point1", "oracle", d),
                    row(m, ds, mod, obj, img, "point1", "deployable", d - 0.1),
                    row(m, ds, mod, obj, img, "box", "oracle", d / 2),
                    row(m, ds, mod, obj, img, "box", "deployable", d / 2)]
    return out


def table_rows(text, heading):
    """The data rows (lists of cells) of the first markdown table after ``heading``."""
    lines = text[text.index(heading):].splitlines()[1:]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return rows


def table_head(text, heading):
    lines = text[text.index(heading):].splitlines()
    ln = next(ln for ln in lines if ln.startswith("|"))
    return [c.strip() for c in ln.strip().strip("|").split("|")]


def write(tmp_path, rows, models, prompts=("point1", "box"), selections=("oracle", "deployable"), **kw):
    path = report.write_report(tmp_path, rows, kw.pop("eff_rows", []), [], list(models), list(prompts),
                               list(selections), plots=False, **kw)
    return path.read_text()


# -- the COSMOS pivot ------------------------------------------------------------------------------------
def test_pivot_has_percent_dice_and_object_counts_per_modality_and_mode(tmp_path):
    text = write(tmp_path, hand_rows(), ["m1"], single_mask=("box",))
    # one table per selection; only the modes that were run, in S order, single-mask ones marked
    assert table_head(text, "### oracle") == ["modality", "S2 point1", "S5 box (single mask)"]
    # ct = mean of class means (0.6, 0.9) over 3 objects; mri 0.2 over 1; all = mean(0.6, 0.9, 0.2) over 4
    assert table_rows(text, "### oracle") == [["ct", "75.0 (3)", "37.5 (3)"], ["mri", "20.0 (1)", "10.0 (1)"],
                                              ["**all**", "56.7 (4)", "28.3 (4)"]]
    assert table_rows(text, "### deployable") == [["ct", "65.0 (3)", "37.5 (3)"], ["mri", "10.0 (1)", "10.0 (1)"],
                                                  ["**all**", "46.7 (4)", "28.3 (4)"]]
    assert text.index("COSMOS layout") < text.index("## Overall")


def test_pivot_with_several_models_has_a_row_per_modality_and_model(tmp_path):
    text = write(tmp_path, hand_rows(("m1", "m2")), ["m1", "m2"], prompts=("box", "point1"), selections=("oracle",))
    assert table_head(text, "### oracle") == ["modality", "model", "S2 point1", "S5 box"]
    rows = table_rows(text, "### oracle")
    assert [r[:2] for r in rows] == [["ct", "m1"], ["ct", "m2"], ["mri", "m1"], ["mri", "m2"],
                                     ["**all**", "m1"], ["**all**", "m2"]]
    assert rows[1][2:] == ["80.0 (3)", "40.0 (3)"] and rows[3][2:] == ["25.0 (1)", "12.5 (1)"]


# -- single-mask modes once -------------------------------------------------------------------------------
def test_single_mask_modes_are_printed_once(tmp_path):
    text = write(tmp_path, hand_rows(("m1", "m2")), ["m1", "m2"], single_mask=("box",))
    overall = table_rows(text, "## Overall")
    assert [(r[1], r[2]) for r in overall] == [("point1", "oracle"), ("point1", "deployable"),
                                               ("box", "single mask")]
    assert overall[2][5:7] == ["0.283", "0.308"]  # Dice m1, Dice m2
    per_class = table_rows(text, "## Per object class")
    assert sum(r[1] == "box" for r in per_class) == 3 and all(r[2] == "single mask" for r in per_class
                                                               if r[1] == "box")
    # summary.csv keeps both selections (long form, for scripts)
    with open(tmp_path / "summary.csv", newline="") as fh:
        sels = {r["selection"] for r in csv.DictReader(fh) if r["prompt"] == "box"}
    assert sels == {"oracle", "deployable"}


def test_a_mode_is_collapsed_only_when_declared_and_the_selections_agree(tmp_path):
    rows = hand_rows()
    assert [(r[1], r[2]) for r in table_rows(write(tmp_path, rows, ["m1"]), "## Overall")][2:] == \
        [("box", "oracle"), ("box", "deployable")]  # not declared single mask
    for r in rows:
        if r["prompt"] == "box" and r["selection"] == "deployable" and r["object"] == "Z":
            r["dice"] = 0.0  # the two selections disagree: never hide a difference
    text = write(tmp_path, rows, ["m1"], single_mask=("box",))
    assert [(r[1], r[2]) for r in table_rows(text, "## Overall")][2:] == [("box", "oracle"), ("box", "deployable")]


# -- efficiency: ratios within one invocation, load average ------------------------------------------------
def eff(model, inv, enc, mem=40.0, load=1.5, cpus=2):
    return {"model": model, "device": "cpu", "parameters": 1000, "memory_footprint_mb": mem,
            "encoder_ms_per_image": enc, "decoder_ms_per_prompt": 10.0, "peak_rss_mb": 900, "peak_vram_mb": None,
            "images_timed": 5, "invocation": inv, "load_avg_1min": load, "cpu_count": cpus, "torch_threads": 2,
            "device_name": "Test CPU"}


def ratio_cells(lines):
    """model -> (encoder time / first, memory / first) from efficiency_table's markdown lines."""
    out = {}
    for ln in lines:
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        if ln.startswith("|") and cells[0] not in ("model",) and not cells[0].startswith("---"):
            out[cells[0]] = (cells[-2], cells[-1])
    return out


def test_efficiency_ratios_are_only_taken_within_one_invocation():
    rows = [eff("fp32", "2026-01-01T10:00:00-aaaaaa", 1000.0), eff("nf4", "2026-01-01T10:00:00-aaaaaa", 500.0, 16.0),
            eff("fp32 again", "2026-01-02T09:00:00-bbbbbb", 160.0, load=7.5)]
    lines = report.efficiency_table(rows, current_invocation="2026-01-02T09:00:00-bbbbbb")
    text = "\n".join(lines)
    ratios = ratio_cells(lines)
    assert ratios["nf4"] == ("0.50", "0.40")          # same invocation: compared
    assert ratios["fp32 again"] == ("1.00", "1.00")   # the other invocation: only to itself, never 0.16
    assert "0.16" not in text
    assert text.count("### Invocation") == 2 and "`2026-01-02T09:00:00-bbbbbb` (this run)" in text
    assert "separate invocations" in text
    # machine and load average beside the timings; an overloaded machine is flagged
    assert "Test CPU, 2 CPUs usable" in text and "fp32 again 7.5" in text
    first_block = text[:text.index("2026-01-02T09")]
    assert "Busy machine" not in first_block and "Busy machine" in text[text.index("2026-01-02T09"):]


def test_efficiency_rows_without_invocation_get_no_ratio():
    old = [{k: v for k, v in eff(m, "", e).items() if k not in ("invocation", "load_avg_1min")}
           for m, e in (("a", 1000.0), ("b", 160.0))]
    lines = report.efficiency_table(old)
    assert ratio_cells(lines) == {"a": ("–", "–"), "b": ("–", "–")}
    assert "without an invocation id" in "\n".join(lines)


def test_timer_records_load_average_cpus_and_device(monkeypatch):
    monkeypatch.setattr(efficiency.os, "getloadavg", lambda: (3.5, 1.0, 1.0))

    class Backend:
        def num_parameters(self):
            return 10

        def memory_footprint(self):
            return 2**20

    timer = ModelTimer("cpu", invocation="inv-1")
    with timer.encoder():
        pass
    monkeypatch.setattr(efficiency.os, "getloadavg", lambda: (4.5, 1.0, 1.0))
    with timer.encoder():
        pass
    r = timer.row("m", Backend())
    assert r["invocation"] == "inv-1" and r["load_avg_1min"] == 4.0
    assert r["cpu_count"] >= 1 and r["torch_threads"] >= 1 and r["device_name"]
    assert set(r) == set(efficiency.EFFICIENCY_COLUMNS)


def eval_cfg(root, out, *overrides):
    return cli.compose("eval", [f"data.root={root}", f"output_dir={out}", "device=cpu", "logging.progress=false",
                                "plots=false", *overrides])


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_resumed_run_does_not_compare_its_timings_with_earlier_ones(tmp_path):
    root = make_cosmos_root(tmp_path / "data", {"1_Toy": 1})
    out = tmp_path / "out"
    run(eval_cfg(root, out, "models=[tiny_hf_sam]", "prompts=[box]"))
    # the same network under a second name, timed by a second invocation; tiny_hf_sam is resumed, not timed
    run(eval_cfg(root, out, "models=[tiny_hf_sam,{source: tiny_hf_sam, name: again}]", "prompts=[box]"))
    rows = {r["model"]: r for r in read_csv(out / "efficiency.csv")}
    assert rows["tiny_hf_sam"]["invocation"] != rows["again"]["invocation"]
    for r in rows.values():  # when and where, beside the timings
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d-[0-9a-f]{6}$", r["invocation"])
        assert float(r["load_avg_1min"]) >= 0 and int(r["cpu_count"]) >= 1 and r["device_name"]
    text = (out / "summary.md").read_text()
    assert text.count("### Invocation") == 2
    assert f"### Invocation `{rows['again']['invocation']}` (this run)" in text
    assert ratio_cells(text[text.index("## Efficiency"):].splitlines())["again"] == ("1.00", "1.00")
    # a model left out of a later command keeps its efficiency row in the CSV
    run(eval_cfg(root, out, "models=[{source: tiny_hf_sam, name: again}]", "prompts=[box]"))
    assert {r["model"] for r in read_csv(out / "efficiency.csv")} == {"tiny_hf_sam", "again"}


# -- summary.md is never missing or half-written ------------------------------------------------------------
def test_summary_stays_in_place_while_a_rerun_computes_and_when_it_fails(tmp_path):
    root = make_cosmos_root(tmp_path / "data", {"1_Toy": 1})
    out = tmp_path / "out"
    run(eval_cfg(root, out, "models=[tiny_hf_sam]", "prompts=[box]"))
    before = (out / "summary.md").read_text()
    seen = []

    def loader(entry):  # called while the new model's rows are being computed
        seen.append((out / "summary.md").read_text())
        raise RuntimeError("model failed to load")

    with pytest.raises(RuntimeError, match="failed to load"):
        run(eval_cfg(root, out, "models=[tiny_hf_sam,{source: tiny_hf_sam, name: new}]", "prompts=[box]"),
            loader=loader)
    assert seen == [before] and (out / "summary.md").read_text() == before
    assert (out / "per_object.csv").is_file()  # a folder with results is left alone


def test_a_failure_while_writing_the_summary_keeps_the_old_one(tmp_path, monkeypatch):
    rows = hand_rows()
    write(tmp_path, rows, ["m1"])
    before = (tmp_path / "summary.md").read_text()
    real = Path.write_text

    def half_written(self, data, *a, **k):  # a disk that fills up after the first bytes
        real(self, data[:20], *a, **k)
        raise OSError("No space left on device")

    monkeypatch.setattr(Path, "write_text", half_written)
    with pytest.raises(OSError, match="No space"):
        write(tmp_path, rows[:8], ["m1"])
    monkeypatch.undo()
    assert (tmp_path / "summary.md").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv", "summary.md"]  # no temporary file left


def test_rewrite_report_rebuilds_the_summary_from_the_folder(tmp_path):
    root = make_cosmos_root(tmp_path / "data", {"1_Toy": 1})
    out = tmp_path / "out"
    run(eval_cfg(root, out, "models=[tiny_hf_sam]", "prompts=[point1,box]"))
    before = (out / "summary.md").read_text()
    (out / "summary.md").unlink()
    rewrite_report(out, plots=False)
    assert (out / "summary.md").read_text() == before.replace(" (this run)", "")


# -- failed runs leave no folder ---------------------------------------------------------------------------
def test_a_bad_data_root_leaves_no_output_folder(tmp_path):
    from minisam_train.data import DataError

    with pytest.raises(DataError):
        run(eval_cfg(tmp_path / "nowhere", tmp_path / "out", "models=[tiny_hf_sam]"))
    assert not (tmp_path / "out").exists()


def test_a_failed_cli_run_leaves_no_timestamped_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((Exception, SystemExit)):
        cli.main(["eval", f"data.root={tmp_path / 'nowhere'}", "models=[tiny_hf_sam]", "device=cpu"])
    assert not (tmp_path / "runs").exists()
    # an output folder given on the command line, not there before: also gone
    with pytest.raises((Exception, SystemExit)):
        cli.main(["eval", f"data.root={tmp_path / 'nowhere'}", "models=[tiny_hf_sam]", "output_dir=given"])
    assert not (tmp_path / "given").exists()


def test_a_model_that_fails_to_load_leaves_no_folder(tmp_path):
    root = make_cosmos_root(tmp_path / "data", {"1_Toy": 1})

    def loader(entry):
        assert (tmp_path / "out" / "eval_config.yaml").is_file()  # the failure comes after the folder was made
        raise RuntimeError("corrupt checkpoint")

    with pytest.raises(RuntimeError, match="corrupt"):
        run(eval_cfg(root, tmp_path / "out", "models=[tiny_hf_sam]"), loader=loader)
    assert not (tmp_path / "out").exists()


def test_a_run_where_every_slice_failed_keeps_failures_csv_and_names_the_first_error(tmp_path):
    from minisam_train.data import DataError

    root = make_cosmos_root(tmp_path / "data", {"1_Toy": 1})
    (root / "data" / "test_data" / "1_Toy" / "images" / "1_Toy_0.png").write_bytes(b"truncated")
    with pytest.raises(DataError, match=r"first: 1_Toy/1_Toy_0.png: Cannot read image"):
        run(eval_cfg(root, tmp_path / "out", "models=[tiny_hf_sam]", "prompts=[box]"))
    assert [r["image"] for r in read_csv(tmp_path / "out" / "failures.csv")] == ["1_Toy_0.png"]


def test_a_failed_run_into_an_existing_folder_of_the_user_keeps_the_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(Exception):
        run(eval_cfg(tmp_path / "nowhere", tmp_path / "mine", "models=[tiny_hf_sam]"))
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


# -- plots with many models --------------------------------------------------------------------------------
def test_seven_models_legend_sits_outside_the_bars(tmp_path, monkeypatch):
    models = [f"model_{k}_with_a_long_name" for k in range(7)]
    prompts = ["point1", "point5", "point5neg5", "box", "box_point1"]
    rows = [row(m, ds, mod, "O", "i0", p, s, 0.3 + 0.05 * k)
            for k, m in enumerate(models) for ds, mod in (("1_A", "ct"), ("2_B", "mri"))
            for p in prompts for s in ("oracle", "deployable")]
    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig) or Path(path))
    report.plot_dice_by_modality(rows, models, prompts, ["oracle", "deployable"], tmp_path / "a.png")
    eff_rows = [eff(m, "inv", 100.0 + k) for k, m in enumerate(models)]
    report.plot_dice_vs_latency(rows, eff_rows, models, prompts, "deployable", tmp_path / "b.png")
    assert len(figures) == 2
    for fig, n_entries in zip(figures, (7, 5)):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
        assert len(legends) == 1
        box = legends[0].get_window_extent(renderer)
        assert len(legends[0].get_texts()) == n_entries
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), "legend covers a panel"
        fig_box = fig.bbox
        assert fig_box.x0 <= box.x0 and box.x1 <= fig_box.x1 and fig_box.y0 <= box.y0 and box.y1 <= fig_box.y1
    # the bars figure widens with the number of models
    few = report.dice_by_modality_figure(rows, models[:2], prompts, ["oracle"])
    assert figures[0].get_figwidth() > few.get_figwidth() + 2
    import matplotlib.pyplot as plt

    plt.close("all")


def test_an_empty_slot_says_why():
    """S1 (everything) is scored by the oracle only: its deployable slot says so instead of showing nothing."""
    import matplotlib.pyplot as plt

    prompts = ["everything", "box"]
    rows = [row("m", "1_A", "ct", "O", "i0", "box", s, 0.6) for s in ("oracle", "deployable")]
    rows.append(row("m", "1_A", "ct", "O", "i0", "everything", "oracle", 0.4))
    fig = report.dice_by_modality_figure(rows, ["m"], prompts, ["oracle", "deployable"])
    oracle_ax, deployable_ax = fig.axes[0], fig.axes[1]
    assert [t.get_text() for t in oracle_ax.texts] == []
    assert [t.get_text() for t in deployable_ax.texts] == ["oracle\nonly"]
    assert deployable_ax.texts[0].get_position()[0] == 0  # under the everything tick
    plt.close("all")
