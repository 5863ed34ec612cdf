"""Ctrl-C in ``minisam-train adapt`` / ``distill``: a checkpoint at the current step, the resume command,
exit 130 and no traceback; the printed command continues from that step. Plus the pieces: the signal
flag, the run-length checkpoint interval, ``keep_checkpoints``, and what a written adapter looks like."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minisam_train.cli import main
from minisam_train.training.checkpointing import checkpoint_interval
from minisam_train.training.interrupts import StopOnSignal
from tests.conftest import SHARED_DATA

CLI = [sys.executable, "-m", "minisam_train.cli"]


def _rows(csv_path: Path) -> int:
    return max(0, len(csv_path.read_text().splitlines()) - 1) if csv_path.is_file() else 0


def _interrupt_when(cmd, tmp_path, ready, timeout=180):
    """Start ``cmd``, send SIGINT once ``ready()`` is true; return (returncode, stdout, stderr)."""
    out, err = open(tmp_path / "stdout.txt", "w+"), open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        t0 = time.monotonic()
        while not ready():
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.monotonic() - t0 < timeout, "training did not start in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out.close(), err.close()
    return code, (tmp_path / "stdout.txt").read_text(), (tmp_path / "stderr.txt").read_text()


def _check_interrupted(code, stderr, verb, checkpoints: Path) -> tuple[int, list[str]]:
    """The interrupted run's exit and message; returns the step and the printed resume command."""
    assert code == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    found = re.search(rf"minisam-train {verb}: interrupted at step (\d+); checkpoint written to (\S+)", stderr)
    assert found, stderr
    step = int(found.group(1))
    assert step >= 1
    assert Path(found.group(2)) == checkpoints / f"step-{step:08d}"
    assert (checkpoints / f"step-{step:08d}" / "trainer_state.json").is_file()
    assert (checkpoints / "latest").read_text().strip() == f"step-{step:08d}"
    resume = re.search(r"^Resume with: (.+)$", stderr, re.M)
    assert resume, stderr
    args = shlex.split(resume.group(1))
    assert args[:2] == ["minisam-train", verb]
    return step, args[1:]


def test_adapt_sigint_checkpoints_and_the_printed_command_resumes(tmp_path):
    out, adapter = tmp_path / "run", tmp_path / "adapter"
    cmd = ["adapt", "--modality", "mri", "base=tiny_hf_sam", "quantize=null", f"paths.data_root={SHARED_DATA}",
           "data.datasets=[22_Heart]", "data.max_samples=2", "data.val_fraction=0.5",
           "data.augment.views_per_image=2", "train.device=cpu", "train.batch_size=1", "train.steps=400",
           "train.scheduler=constant", "train.warmup_steps=0", "train.prompts.mix={box: 1.0}",
           "train.val_every=1", "train.log_every=1", "train.early_stopping.enabled=false",
           "logging.progress=false", f"output_dir={out}", f"adapter.out_dir={adapter}"]
    # metrics.csv gets a row per validated step: interrupt once training is under way.
    code, _, stderr = _interrupt_when(CLI + cmd, tmp_path, lambda: _rows(out / "metrics.csv") >= 2)
    step, args = _check_interrupted(code, stderr, "adapt", out / "checkpoints")
    assert step < 400 and not adapter.exists()  # interrupted: no adapter, the checkpoint is the state
    assert f"output_dir={out}" in args
    assert json.loads((out / "summary.json").read_text())["stopped"] == "interrupted"

    # The printed command, run for two more steps (in this process: one interpreter start less), continues
    # from the checkpoint.
    main(args + ["train.stop_after=2"])
    assert json.loads((out / "summary.json").read_text())["steps_done"] == step + 2
    steps_logged = [int(float(r.split(",")[0])) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps_logged == list(range(step + 3))  # 0 (before training), 1 .. step + 2: one unbroken log


def test_distill_sigint_checkpoints_and_the_printed_command_resumes(tmp_path):
    from tests.train.test_distill import _images, _teacher_dir

    images, teacher = _images(tmp_path / "images"), _teacher_dir(tmp_path / "teacher", "tiny_hf_sam")
    out = tmp_path / "student"
    cmd = ["distill", f"teacher.source={teacher}", "student.source=tiny_hf_sam_small", f"data.folders=[{images}]",
           "data.cosmos_roots=[]", "data.exclude_split_file=null", f"cache.dir={tmp_path / 'cache'}",
           f"output_dir={out}", "student.train_decoder=true", "train.batch_size=1", "train.steps=400",
           "train.log_every=1", "logging.progress=false", "logging.tensorboard=false", "prompts.per_image=1",
           "prompts.proposals=2", "prompts.max_area_fraction=1.0", "prompts.min_area=1"]
    code, _, stderr = _interrupt_when(CLI + cmd, tmp_path, lambda: _rows(out / "logs" / "metrics.csv") >= 2)
    step, args = _check_interrupted(code, stderr, "distill", out / "checkpoints")
    assert step < 400 and not (out / "model.safetensors").exists()

    main(args + ["train.stop_after=2"])
    summary = json.loads((out / "distill_summary.json").read_text())
    assert summary["resumed_from_step"] == step and summary["steps"] == step + 2


def test_stop_on_signal_sets_a_flag_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)  # would end the process without the handler
        time.sleep(0.01)
        assert stop() and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # a second signal does not wait for the step
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGTERM) is before


def test_checkpoint_interval_follows_the_run_length():
    assert checkpoint_interval(None, 8) == 2            # a short run still checkpoints
    assert checkpoint_interval(None, 3) == 1
    assert checkpoint_interval(None, 10_000) == 50
    assert checkpoint_interval(7, 3) == 7               # an explicit value wins


@pytest.fixture(scope="module")
def named_adapter(tmp_path_factory):
    """A 4-step adapt run whose adapter is called heart_v1 but written to a folder called elsewhere."""
    from tests.train.test_adapt_run import tiny_cfg

    from minisam_train.tasks import adapt

    tmp = tmp_path_factory.mktemp("named")
    cfg = tiny_cfg(tmp, "run", "train.steps=4", "train.checkpoint_every=1", "train.keep_checkpoints=1",
                   "adapter.name=heart_v1", f"adapter.out_dir={tmp / 'elsewhere'}")
    adapt.run(cfg)
    return tmp


def test_written_adapter_is_readable_by_others(named_adapter):
    umask = os.umask(0)
    os.umask(umask)
    folder = named_adapter / "elsewhere"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask   # 0755 under the usual umask 022
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask for f in files)


def test_adapter_name_comes_from_the_config_not_the_folder(named_adapter):
    from napari_qlora_minisam import load_model
    from napari_qlora_minisam.adapters import list_adapters

    meta = json.loads((named_adapter / "elsewhere" / "minisam_adapter.json").read_text())
    assert meta["name"] == "heart_v1"
    assert [a.name for a in list_adapters([named_adapter])] == ["heart_v1"]
    backend = load_model("tiny_hf_sam", adapters=named_adapter / "elsewhere", device="cpu")
    assert backend.active_adapter == "heart_v1"


def test_keep_checkpoints_prunes_old_ones(named_adapter):
    assert [p.name for p in (named_adapter / "run" / "checkpoints").glob("step-*")] == ["step-00000004"]
