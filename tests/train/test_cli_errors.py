"""``minisam-train``: expected errors are one or two lines and an exit code, never a traceback (unless asked
for); unknown keys are refused; ``<verb> --help`` is a key table; a failed run leaves no folder behind."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from minisam_train.cli import main
from tests.conftest import SHARED_DATA

COSMOS = SHARED_DATA / "cosmos_sample"


def _fails(capsys, argv, code):
    """Run ``minisam-train argv`` in-process; assert exit ``code`` and return stderr."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == code, err
    assert "Traceback" not in err
    return err


def _lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def test_bad_data_root_is_one_line_and_leaves_no_folder(tmp_path):
    # Through the real entry point, as a user runs it.
    out = tmp_path / "runs" / "eval" / "today"
    proc = subprocess.run([sys.executable, "-m", "minisam_train.cli", "eval", f"data.root={tmp_path / 'test_data'}",
                           f"output_dir={out}"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HYDRA_FULL_ERROR": ""})
    assert proc.returncode == 1, proc.stderr
    lines = _lines(proc.stderr)
    assert len(lines) <= 2, proc.stderr
    assert lines[0].startswith("minisam-train eval: error: ") and "test_data does not exist" in lines[0]
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # neither the run folder nor the runs/eval it made


def test_unknown_model_source(tmp_path, capsys):
    err = _fails(capsys, ["eval", f"data.root={COSMOS}", "data.datasets=[22_Heart]", "models=[no_such_model]",
                          f"output_dir={tmp_path / 'out'}"], 1)
    assert len(_lines(err)) <= 2 and "error: Unknown model source 'no_such_model'" in err
    assert not (tmp_path / "out").exists()  # eval_config.yaml and Hydra's records went with it


def test_bad_prompt_mode_is_a_config_error(tmp_path, capsys):
    err = _fails(capsys, ["eval", f"data.root={COSMOS}", "data.datasets=[22_Heart]", "prompts=[pont1]",
                          f"output_dir={tmp_path / 'out'}"], 2)
    assert "error: Unknown prompt mode(s) ['pont1']" in err and len(_lines(err)) <= 2
    assert "minisam-train eval --help" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override", ["+modls=[x]", "modls=[x]", "++modls=[x]"])
def test_unknown_key_is_refused_with_a_suggestion(tmp_path, capsys, override):
    # (data.root is wrong too, so that a key let through fails fast instead of evaluating the defaults)
    err = _fails(capsys, ["eval", override, f"data.root={tmp_path / 'nope'}", f"output_dir={tmp_path / 'out'}"], 2)
    assert "unknown key 'modls'" in err and "did you mean 'models'" in err
    assert not (tmp_path / "out").exists()


def test_unknown_nested_key_and_missing_modality(capsys):
    err = _fails(capsys, ["adapt", "--modality", "ct", "train.lrr=1e-3", "--cfg", "job"], 2)
    assert "unknown key 'train.lrr'" in err and "'train.lr'" in err
    err = _fails(capsys, ["distill", "--modality", "ct", "--cfg", "job"], 2)  # distill has no modality
    assert "unknown key 'modality'" in err
    err = _fails(capsys, ["adapt", "train.steps=3"], 2)
    assert "modality is required: --modality" in err


@pytest.mark.parametrize("override, expected", [
    ("train.lr=abc", "train.lr='abc': a number is expected (default 0.001)"),
    ("train.steps=many", "train.steps='many': a whole number is expected (default 200)"),
    ("logging.csv=maybe", "logging.csv='maybe': true or false is expected (default true)"),
])
def test_a_word_for_a_number_or_switch_names_the_key(capsys, override, expected):
    err = _fails(capsys, ["adapt", "--modality", "ct", override, "--cfg", "job"], 2)
    assert f"error: {expected}" in err and len(_lines(err)) <= 2


def test_numbers_nulls_and_interpolations_still_pass(capsys):
    main(["adapt", "--modality", "ct", "train.lr=1e-4", "train.steps=5", "train.epochs=null", "logging.csv=false",
          "train.weight_decay=${train.lr}", "--cfg", "job"])
    assert "lr: 0.0001" in capsys.readouterr().out


def test_missing_data_roots_are_named_with_the_launch_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _fails(capsys, ["adapt", "--modality", "ct", "data.roots=[cosmos]", f"output_dir={tmp_path / 'out'}"], 1)
    assert "data.roots: ['cosmos'] does not exist" in err and str(tmp_path) in err


def test_open_mappings_and_hydra_keys_still_take_new_keys(capsys):
    main(["adapt", "--modality", "ct", "+data.modalities.Kidney=ct", "+hydra.job.env_set.FOO=1", "--cfg", "job"])
    out = capsys.readouterr().out
    assert "Kidney: ct" in out


def test_verb_help_is_a_key_table(capsys):
    main(["eval", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: minisam-train eval")
    row = next(line for line in out.splitlines() if line.startswith("data.root "))
    assert "${paths.data_root}/cosmos_sample" in row and "one COSMOS-layout root" in row
    assert any(line.split()[:2] == ["nsd_tolerance", "2.0"] for line in out.splitlines())
    assert "docs/evaluation.md" in out
    main(["adapt", "--help"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("train.checkpoint_every "))
    assert row.split()[1] == "null" and "quarter of the run" in row
    assert "train.early_stopping.monitor" not in out and "docs/adapters.md" in out


def test_debug_switch_shows_the_traceback(tmp_path, monkeypatch):
    from minisam_train.data import DataError

    with pytest.raises(DataError, match="does not exist"):
        main(["eval", f"data.root={tmp_path / 'nope'}", "--debug", f"output_dir={tmp_path / 'a'}"])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(DataError, match="does not exist"):
        main(["eval", f"data.root={tmp_path / 'nope'}", f"output_dir={tmp_path / 'b'}"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_missing_training_extra_names_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "hydra", None)  # as if hydra-core were not installed
    err = _fails(capsys, ["eval", "data.root=x"], 2)
    assert err.strip() == ('minisam-train needs the training extra: pip install "napari-qlora-minisam[train]" '
                           "(missing module: hydra)")


def test_logging_level_is_applied_and_checked(tmp_path, capsys):
    root = logging.getLogger()
    before = root.level
    try:
        err = _fails(capsys, ["eval", "logging.level=LOUD", f"data.root={tmp_path / 'nope'}",
                              f"output_dir={tmp_path / 'out'}"], 2)
        assert "logging.level='LOUD' is not a log level" in err
        _fails(capsys, ["eval", "logging.level=warning", f"data.root={tmp_path / 'nope'}",
                        f"output_dir={tmp_path / 'out'}"], 1)
        assert root.level == logging.WARNING
    finally:
        root.setLevel(before)


def test_failed_run_keeps_a_folder_that_was_there(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _fails(capsys, ["eval", f"data.root={tmp_path / 'nope'}", f"output_dir={out}"], 1)
    assert (out / "notes.txt").read_text() == "mine"
