"""``adapt`` and ``distill`` in two processes under ``accelerate launch`` on the CPU (issue 16).

The launch form is the documented one for CPU processes (accelerate's ``--cpu`` starts a single process):
``accelerate launch --multi_gpu --num_processes 2 ... -m minisam_train <verb> ... train.device=cpu``. Runs
that must report back go through ``_distributed_worker.py``, which runs the same ``__main__`` and records,
per process, its final trainable weights and every file it wrote. Checked:

* gradients are synchronised: both processes end with identical weights, and those equal (to float
  rounding) one process trained on the same global batch (2 processes x batch 1 = 1 process x batch 2);
* only the main process writes the run folder, log, checkpoints' shared files and output; the other adds
  its own RNG state to each checkpoint and, in distill, its share of the teacher cache (each entry written
  once, by one process, through a rename; no temporary file left);
* a run stopped early (``train.stop_after``) and started again resumes on both processes and ends with
  the weights of the uninterrupted run.

Tiny random models: each launch takes ~15-25 s on two CPU cores.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import SHARED_DATA

WORKER = Path(__file__).with_name("_distributed_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], root: Path, dump: Path | None = None, timeout: int = 300) -> str:
    """Two CPU processes of ``minisam_train`` (through the recording worker when ``dump`` is given)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port())]
    cmd += [str(WORKER)] if dump is not None else ["-m", "minisam_train"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MINISAM_TEST_WATCH": str(root),
           "MINISAM_TEST_DUMP": str(dump or root / "no-dump")}
    # The working directory is watched too: a process writing a stray log there is caught.
    proc = subprocess.run(cmd + args, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "process 0 of 2 on cpu" in out and "process 1 of 2 on cpu" in out, out[-6000:]
    return out


def weights(dump: Path, rank: int) -> dict:
    return torch.load(dump / f"weights_rank{rank}.pt", weights_only=True)


def writes(dump: Path, rank: int) -> list:
    return json.loads((dump / f"writes_rank{rank}.json").read_text())


def assert_identical(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys() and a, what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k}"


def assert_same_run(a: dict, b: dict, atol: float) -> None:
    """Two trainings of the same global batches; ``atol`` is float rounding (batch 2 vs 2 x batch 1)."""
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=atol, msg=k)


def secondary_writes(dump: Path, allowed) -> list:
    """What process 1 wrote that ``allowed(kind, path)`` does not explain."""
    return [w for w in writes(dump, 1) if not allowed(w[0], Path(w[-1]))]


def in_checkpoint_tmp(path: Path) -> bool:
    """Process 1's part of a checkpoint: its RNG state, in the folder the main process renames."""
    parent = path if path.name.startswith(".tmp-step-") else path.parent
    return parent.parent.name == "checkpoints" and parent.name.startswith(".tmp-step-") and (
        path == parent or path.name == "random_states_1.pkl")


def checkpoint_folders(run: Path, steps: list[int]) -> None:
    root = run / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == sorted([f"step-{s:08d}" for s in steps] + ["latest"])
    for s in steps:
        names = {p.name for p in (root / f"step-{s:08d}").iterdir()}
        assert {"random_states_0.pkl", "random_states_1.pkl", "trainer_state.json", "model_trainable.pt",
                "optimizer.bin", "scheduler.bin"} <= names, names


def rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


# -- adapt -----------------------------------------------------------------------------------------------
def adapt_args(root: Path, name: str, *extra: str) -> list[str]:
    """One training slice (2 views), one validation slice; LoRA dropout off, so 2 x batch 1 = 1 x batch 2."""
    return ["adapt", "--modality", "mri", "base=tiny_hf_sam", "quantize=null", f"paths.data_root={SHARED_DATA}",
            "data.datasets=[22_Heart]", "data.max_samples=2", "data.val_fraction=0.5",
            "data.augment.views_per_image=2", "train.device=cpu", "train.batch_size=1", "train.steps=3",
            "train.lr=5e-3", "train.warmup_steps=0", "train.prompts.mix={box: 1.0}",
            "train.prompts.box_jitter=0.05", "train.val_every=3", "train.log_every=1", "train.checkpoint_every=1",
            "train.early_stopping.enabled=false", "train.lora.dropout=0", "logging.progress=false",
            f"output_dir={root / name}", f"adapter.out_dir={root / (name + '_adapter')}", *extra]


@pytest.fixture(scope="module")
def adapt_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt2")
    out = launch(adapt_args(root, "run"), root, dump=root / "dump")
    return root, out


def _lora(state: dict) -> dict:
    """Trainable LoRA weights under the names peft saves them with."""
    return {"base_model.model." + k.replace(".mri.", "."): v for k, v in state.items() if ".lora_" in k}


def test_adapt_two_processes_train_one_global_batch(adapt_run):
    from minisam_train.cli import compose
    from minisam_train.tasks import adapt

    root, _ = adapt_run
    dump = root / "dump"
    w0, w1 = weights(dump, 0), weights(dump, 1)
    assert_identical(w0, w1, "rank 0 vs rank 1")  # DDP kept the processes in step
    assert_identical(_lora(w1), load_file(str(root / "run_adapter" / "adapter_model.safetensors")),
                     "rank 1 vs the adapter the main process wrote")

    # One process with the same global batch (2 views) ends where the two did: the gradients were averaged.
    ref_args = adapt_args(root, "one", "train.batch_size=2")
    _, model = adapt.train(compose("adapt", ref_args[1:]))
    assert_same_run(_lora({k: v.detach() for k, v in model.net.state_dict().items()}), _lora(w0), atol=1e-4)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rs]  # noqa: E731
    two, one = strip(rows(root / "run" / "metrics.csv")), strip(rows(root / "one" / "metrics.csv"))
    assert [r["step"] for r in two] == ["0", "1", "2", "3"] and [r["step"] for r in one] == ["0", "1", "2", "3"]
    for a, b in zip(two, one):  # the logged loss is the global batch's, not the main process's half
        for k in a:
            assert (a[k] == b[k] == "") or float(a[k]) == pytest.approx(float(b[k]), rel=1e-4, abs=1e-6), k

    summary = json.loads((root / "run" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch_size"] == 2 and summary["steps_done"] == 3

    # Only the main process wrote the run folder and the adapter.
    assert secondary_writes(dump, lambda kind, p: in_checkpoint_tmp(p)) == []
    assert ["rename", root / "run_adapter"] in [[w[0], Path(w[-1])] for w in writes(dump, 0)]  # the recorder works
    checkpoint_folders(root / "run", [2, 3])
    assert sorted(p.name for p in root.iterdir()) == ["dump", "one", "one_adapter", "run", "run_adapter"]


def test_adapt_two_processes_resume(adapt_run, tmp_path):
    root, _ = adapt_run
    launch(adapt_args(tmp_path, "run", "train.stop_after=1"), tmp_path)  # the documented form, -m minisam_train
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps_done"] == 1
    assert not (tmp_path / "run_adapter").exists()
    out = launch(adapt_args(tmp_path, "run"), tmp_path, dump=tmp_path / "dump")
    assert "resumed from" in out
    dump = tmp_path / "dump"
    assert_identical(weights(dump, 0), weights(dump, 1), "resumed: rank 0 vs rank 1")
    assert_identical(weights(dump, 0), weights(root / "dump", 0), "resumed vs uninterrupted")
    assert_identical(load_file(str(tmp_path / "run_adapter" / "adapter_model.safetensors")),
                     load_file(str(root / "run_adapter" / "adapter_model.safetensors")), "adapters")
    assert secondary_writes(dump, lambda kind, p: in_checkpoint_tmp(p)) == []


# -- distill ---------------------------------------------------------------------------------------------
DISTILL_RUN = ("train.steps=4", "train.grad_accum=2", "train.checkpoint_every=2")


def distill_args(setup: dict, root: Path, name: str, *extra: str) -> list[str]:
    return ["distill", f"teacher.source={setup['teacher']}", "student.source=tiny_hf_sam_small",
            f"data.folders=[{setup['images']}]", "data.cosmos_roots=[]", "data.exclude_split_file=null",
            f"cache.dir={root / 'cache'}", f"output_dir={root / name}", "student.train_decoder=true",
            "train.batch_size=1", "train.lr=3e-3", "train.log_every=1", "logging.progress=false",
            "logging.tensorboard=false", "prompts.per_image=1", "prompts.proposals=2",
            "prompts.max_area_fraction=1.0", "prompts.min_area=1", "train.device=cpu", *DISTILL_RUN, *extra]


@pytest.fixture(scope="module")
def distill_run(tmp_path_factory):
    from tests.train.test_distill import _images, _teacher_dir

    setup_root = tmp_path_factory.mktemp("distill2_inputs")
    setup = {"images": _images(setup_root / "images"), "teacher": _teacher_dir(setup_root / "teacher",
                                                                                "tiny_hf_sam")}
    root = tmp_path_factory.mktemp("distill2")
    launch(distill_args(setup, root, "run"), root, dump=root / "dump")  # a cold cache: the teacher pass too
    return setup, root


def test_distill_two_processes_share_the_teacher_pass_and_train_one_global_batch(distill_run):
    from minisam_train.cli import compose
    from minisam_train.tasks.distill import run

    setup, root = distill_run
    dump = root / "dump"
    w0, w1 = weights(dump, 0), weights(dump, 1)
    assert_identical(w0, w1, "rank 0 vs rank 1")
    student = load_file(str(root / "run" / "model.safetensors"))
    assert_identical({k: student[k] for k in w1 if k in student}, {k: w1[k] for k in w1 if k in student},
                     "rank 1 vs the student the main process wrote")

    # The teacher pass was split: 3 entries, each written once (a rename), none left half-written.
    cache = next((root / "cache").iterdir())
    entries = sorted(p.name for p in cache.glob("*.pt") if p.name != "teacher_decoder.pt")
    assert len(entries) == 3 and sorted(p.name for p in cache.iterdir()) == sorted(
        entries + ["manifest.json", "teacher_decoder.pt"])
    renamed = [Path(w[2]).name for r in (0, 1) for w in writes(dump, r)
               if w[0] == "rename" and Path(w[2]).parent == cache and Path(w[2]).name in entries]
    assert sorted(renamed) == entries  # one writer per entry
    assert any(Path(w[2]).parent == cache for w in writes(dump, 1) if w[0] == "rename")  # rank 1 took a share
    summary = json.loads((root / "run" / "distill_summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch_size"] == 4
    assert summary["cache"]["computed"] == 3 and summary["cache"]["teacher_encode_calls"] == 3  # both shares

    # Only the main process wrote the run folder; process 1 wrote its cache entries and RNG states.
    def allowed(kind, p):
        own_entry = p.parent == cache and not p.name.lstrip(".").startswith(("manifest", "teacher_decoder"))
        return in_checkpoint_tmp(p) or own_entry or (kind == "mkdir" and p in (root / "cache", cache))

    assert secondary_writes(dump, allowed) == []
    checkpoint_folders(root / "run", [2, 4])
    assert len(rows(root / "run" / "logs" / "metrics.csv")) == 4

    # One process on the same global batch (2 slices per micro-batch) ends where the two did.
    ref = run(compose("distill", distill_args(setup, root, "one", "train.batch_size=2")[1:]))
    assert_same_run(load_file(str(root / "one" / "model.safetensors")), student, atol=1e-4)
    assert [h["loss"] for h in summary["history"]] == pytest.approx([h["loss"] for h in ref["history"]], rel=1e-4)


def test_distill_two_processes_resume(distill_run, tmp_path):
    setup, root = distill_run
    # The warm cache of the first run: no teacher this time, and nothing written into the cache.
    args = lambda *extra: distill_args(setup, root, str(tmp_path / "run"), *extra)  # noqa: E731
    launch(args("train.stop_after=3"), tmp_path)  # the documented form, -m minisam_train
    assert not (tmp_path / "run" / "model.safetensors").exists()
    launch(args(), tmp_path, dump=tmp_path / "dump")
    summary = json.loads((tmp_path / "run" / "distill_summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["steps"] == 4 and summary["cache"]["computed"] == 0
    dump = tmp_path / "dump"
    assert_identical(weights(dump, 0), weights(dump, 1), "resumed: rank 0 vs rank 1")
    assert_identical(weights(dump, 0), weights(root / "dump", 0), "resumed vs uninterrupted")
    assert_identical(load_file(str(tmp_path / "run" / "model.safetensors")),
                     load_file(str(root / "run" / "model.safetensors")), "students")
    assert secondary_writes(dump, lambda kind, p: in_checkpoint_tmp(p)) == []
