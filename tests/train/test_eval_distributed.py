"""``minisam-train eval`` over several processes: ``accelerate launch --multi_gpu --num_processes 2 -m
minisam_train eval ... device=cpu`` (torchrun underneath, two CPU processes) writes the files a single
process writes, and an interrupted run resumes with any process count, computing only the missing rows.

The end-to-end tests launch real processes with the tiny random HF SAM on an 8-slice folder, one torch thread
per process (as in the single-process reference, so the numbers can agree to the last digit).
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from minisam_train import cli
from minisam_train.__main__ import rank_overrides
from minisam_train.evaluation import distributed
from minisam_train.evaluation.distributed import Processes, choose_threads, process_device
from minisam_train.evaluation.model_entries import load_entry
from minisam_train.evaluation.results import PER_OBJECT_COLUMNS, format_rows
from minisam_train.evaluation.shards import assign, canonical_order, merge_rows, shard_path
from minisam_train.tasks.evaluate import run

from .test_eval_data import make_cosmos_root

SLICES = {"1_Toy": 5, "2_Other": 3}
N_SLICES = sum(SLICES.values())
# Random prompts (seeded per dataset, image, object and mode): a slice must get the same prompts in whichever
# process scores it.
OVERRIDES = ["models=[tiny_hf_sam]", "prompts=[point1,box]", "sampling.mode=random", "sampling.box_jitter=2",
             "device=cpu", "threads=1", "logging.progress=false", "plots=false"]
# Loaded before anything else in the launched processes (PYTHONPATH): each image's rows are followed by a
# pause, so that a test can kill the run between two images.
SLOW_SITECUSTOMIZE = '''
import os
_delay = float(os.environ.get("MINISAM_TEST_APPEND_DELAY") or 0)
if _delay:
    import time
    from minisam_train.evaluation import results as _results
    _append = _results.PerObjectResults.append
    def _slow_append(self, rows):
        _append(self, rows)
        time.sleep(_delay)
    _results.PerObjectResults.append = _slow_append
'''


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(root, out, processes=2):
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()),
            "-m", "minisam_train", "eval", f"data.root={root}", f"output_dir={out}", *OVERRIDES]


def launch_env(**extra):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", **extra)
    env.pop("WORLD_SIZE", None)
    return env


def launch(root, out, processes=2):
    done = subprocess.run(launch_command(root, out, processes), env=launch_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def kill_with_workers(proc) -> None:
    """SIGKILL the launcher and every process under it (torchrun starts its workers in sessions of their own,
    so killing the launcher's process group would leave them running)."""
    import psutil

    try:
        family = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=60)
    proc.wait(timeout=60)


def assert_same_rows(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):  # same keys in the same order, the same numbers
        assert [g[k] for k in PER_OBJECT_COLUMNS[:7]] == [w[k] for k in PER_OBJECT_COLUMNS[:7]]
        assert float(g["dice"]) == pytest.approx(float(w["dice"]), abs=1e-6)
        assert float(g["nsd"]) == pytest.approx(float(w["nsd"]), abs=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The data folder and the output of a plain one-process run."""
    base = tmp_path_factory.mktemp("dist")
    root = make_cosmos_root(base / "data", SLICES)
    out = base / "one_process"
    run(cli.compose("eval", [f"data.root={root}", f"output_dir={out}", *OVERRIDES]))
    rows = read_csv(out / "per_object.csv")
    assert len({(r["dataset"], r["image"]) for r in rows}) == N_SLICES
    return root, out


# -- end to end --------------------------------------------------------------------------------------------
def test_two_processes_write_what_one_process_writes(reference, tmp_path):
    root, one = reference
    out = tmp_path / "two"
    log = launch(root, out)
    assert "process 0 of 2 on cpu" in log and "process 1 of 2 on cpu" in log
    assert_same_rows(read_csv(out / "per_object.csv"), read_csv(one / "per_object.csv"))
    summary, want = read_csv(out / "summary.csv"), read_csv(one / "summary.csv")
    assert [(r["level"], r["group"], r["prompt"], r["selection"], r["classes"], r["objects"]) for r in summary] \
        == [(r["level"], r["group"], r["prompt"], r["selection"], r["classes"], r["objects"]) for r in want]
    assert [(float(r["dice"]), float(r["nsd"])) for r in summary] == \
        pytest.approx([(float(r["dice"]), float(r["nsd"])) for r in want], abs=1e-6)
    eff = read_csv(out / "efficiency.csv")
    assert [(r["process"], r["processes"]) for r in eff] == [("0", "2"), ("1", "2"), ("all", "2")]
    parts, total = eff[:2], eff[2]
    assert {r["invocation"] for r in eff} == {total["invocation"]}
    assert sum(int(r["slices"]) for r in parts) == int(total["slices"]) == N_SLICES  # each slice once
    assert sum(int(r["images_timed"]) for r in parts) == int(total["images_timed"]) == N_SLICES
    assert all(int(r["torch_threads"]) == 1 for r in parts) and float(total["slices_per_s"]) > 0
    assert float(total["wall_s"]) >= max(float(r["wall_s"]) for r in parts)
    assert not (out / "shards").exists() and read_csv(out / "failures.csv") == []
    text = (out / "summary.md").read_text()
    assert "| tiny_hf_sam | all (2) | cpu x2 |" in text and "2 processes" in text
    assert sorted(p.name for p in (out / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]


def test_an_interrupted_run_resumes_with_one_process_and_then_two(reference, tmp_path):
    root, one = reference
    out = tmp_path / "run"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_SITECUSTOMIZE)
    env = launch_env(MINISAM_TEST_APPEND_DELAY="1.0",
                     PYTHONPATH=os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p))
    # 1. two processes, killed (SIGKILL, launcher and workers: no clean-up at all, as when a machine dies)
    #    once a shard holds an image's rows
    proc = subprocess.Popen(launch_command(root, out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not any(len(read_csv(p)) for p in (out / "shards").glob("per_object.*-of-2.csv")):
            assert proc.poll() is None and time.monotonic() < deadline, "no shard rows before the run ended"
            time.sleep(0.02)
    finally:
        kill_with_workers(proc)
    assert not (out / "per_object.csv").exists()
    shard_rows = [r for p in (out / "shards").glob("per_object.*-of-2.csv") for r in read_csv(p)]
    done = {(r["dataset"], r["image"]) for r in shard_rows}
    assert 0 < len(done) < N_SLICES

    # 2. one process (a different N), stopped by an error on its second new image
    encoded = []

    def loader(entry):
        backend = load_entry(entry, "cpu")
        encode = backend.encode

        def stop_on_the_second(pixels):
            encoded.append(1)
            if len(encoded) == 2:
                raise RuntimeError("stopped")
            return encode(pixels)

        backend.encode = stop_on_the_second
        return backend

    with pytest.raises(RuntimeError, match="stopped"):
        run(cli.compose("eval", [f"data.root={root}", f"output_dir={out}", *OVERRIDES]), loader=loader)
    rows = read_csv(out / "per_object.csv")
    images = {(r["dataset"], r["image"]) for r in rows}
    assert not (out / "shards").exists()             # the shards were folded into per_object.csv first
    assert done < images and len(images) == len(done) + 1   # then one missing slice was computed
    assert len({tuple(r[k] for k in PER_OBJECT_COLUMNS[:7]) for r in rows}) == len(rows)  # no row twice

    # 3. two processes again: only the remaining slices are computed
    launch(root, out)
    eff = read_csv(out / "efficiency.csv")
    total = next(r for r in eff if r["process"] == "all")
    assert int(total["images_timed"]) == int(total["slices"]) == N_SLICES - len(images)
    assert_same_rows(read_csv(out / "per_object.csv"), read_csv(one / "per_object.csv"))
    assert (out / "per_object.csv").read_bytes() == (one / "per_object.csv").read_bytes()


# -- the parts ---------------------------------------------------------------------------------------------
def test_assignment_is_deterministic_disjoint_and_covering():
    units = [("1_A", f"a{i}") for i in range(7)] + [("2_B", f"b{i}") for i in range(4)]
    for world in (1, 2, 3, 8, 20):
        shares = [assign(units, r, world) for r in range(world)]
        assert shares == [assign(units, r, world) for r in range(world)]
        flat = [u for s in shares for u in s]
        assert sorted(flat) == sorted(units) and len(flat) == len(set(flat))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert assign(units, 1, 2)[:3] == [("1_A", "a1"), ("1_A", "a3"), ("1_A", "a5")]
    with pytest.raises(ValueError):
        assign(units, 2, 2)


def per_object_row(model, ds, img, prompt, sel, obj="X", dice=0.5):
    return {"model": model, "dataset": ds, "modality": "ct", "object": obj, "image": img, "prompt": prompt,
            "selection": sel, "dice": dice, "nsd": 0.25}


def test_canonical_order_follows_models_slices_and_modes_and_keeps_objects_in_place():
    units = [("1_A", "a0"), ("1_A", "a1"), ("2_B", "b0")]
    rows = [per_object_row("m2", "1_A", "a0", "box", "oracle"),
            per_object_row("m1", "2_B", "b0", "box", "oracle"),
            per_object_row("m1", "1_A", "a1", "box", "oracle", obj="Y"),
            per_object_row("m1", "1_A", "a1", "box", "oracle", obj="X"),
            per_object_row("m1", "1_A", "a1", "point1", "oracle"),
            per_object_row("old", "1_A", "a0", "box", "oracle")]
    got = canonical_order(rows, ["m1", "m2"], units, ["point1", "box"])
    assert [(r["model"], r["image"], r["prompt"], r["object"]) for r in got] == [
        ("m1", "a1", "point1", "X"), ("m1", "a1", "box", "Y"), ("m1", "a1", "box", "X"), ("m1", "b0", "box", "X"),
        ("m2", "a0", "box", "X"), ("old", "a0", "box", "X")]


def test_merge_folds_shards_of_any_process_count_drops_duplicates_and_leaves_a_canonical_file_alone(tmp_path):
    units = [("1_A", f"a{i}") for i in range(4)]
    a = [per_object_row("m", "1_A", f"a{i}", "box", "oracle", dice=i / 10) for i in range(4)]
    (tmp_path / "per_object.csv").write_text(format_rows([a[2]], header=True))
    for path, rows in ((shard_path(tmp_path, "per_object", 1, 2), [a[3], a[1]]),
                       (shard_path(tmp_path, "per_object", 0, 3), [a[0], a[2]])):  # a[2] twice
        path.parent.mkdir(exist_ok=True)
        path.write_text(format_rows(rows, header=True))
    with shard_path(tmp_path, "per_object", 1, 3).open("w") as fh:  # a torn last line is not a row
        fh.write(format_rows([a[1]], header=True) + "m,1_A,ct,X,a3,box,ora")
    merged = merge_rows(tmp_path, ["m"], units, ["box"])
    assert [r["image"] for r in merged] == ["a0", "a1", "a2", "a3"]
    assert [r["image"] for r in read_csv(tmp_path / "per_object.csv")] == ["a0", "a1", "a2", "a3"]
    assert not list((tmp_path / "shards").glob("per_object.*"))
    stamp = (tmp_path / "per_object.csv").stat().st_mtime_ns
    merge_rows(tmp_path, ["m"], units, ["box"])
    assert (tmp_path / "per_object.csv").stat().st_mtime_ns == stamp


def test_threads_and_devices_per_process(monkeypatch):
    single, two = Processes(), Processes(rank=1, world=2, local_rank=1, local_world=2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert choose_threads(None, "cpu", single, 16) is None         # a plain command: torch's default
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")         # accelerate launch, one process
    assert choose_threads(None, "cpu", single, 16) == 16
    assert choose_threads(None, "cpu", two, 16) == 8               # cores / processes on this machine
    assert choose_threads(None, "cpu", Processes(world=4, local_world=4), 2) == 1
    assert choose_threads(3, "cpu", two, 16) == 3                  # the setting wins
    assert choose_threads(None, "cuda:1", two, 16) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "1")                     # accelerate launch's default: not a choice
    assert choose_threads(None, "cpu", two, 16) == 8
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert choose_threads(None, "cpu", two, 16) == 4
    with pytest.raises(ValueError, match="threads"):
        choose_threads(0, "cpu", two, 16)
    assert process_device("auto", single) == "auto" and process_device("cpu", two) == "cpu"
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert process_device("auto", two) == "cpu"


def test_a_plain_command_is_one_process_without_torch_distributed(monkeypatch):
    import torch.distributed as dist

    for var in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    procs = distributed.start()
    assert (procs.rank, procs.world, procs.state) == (0, 1, None) and procs.share("x") == "x"
    procs.barrier()
    assert not dist.is_initialized()


def test_processes_other_than_the_main_one_keep_hydra_records_out_of_the_run_folder(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    assert rank_overrides(["eval"]) == []
    monkeypatch.setenv("RANK", "3")
    assert rank_overrides(["eval", "x=1"]) == ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    assert rank_overrides(["eval", "hydra/job_logging=none"]) == ["hydra.output_subdir=null"]
