"""Test hook of ``test_train_distributed.py``: ``python -m minisam_train`` with two records per process.

Launched as ``accelerate launch ... tests/train/_distributed_worker.py <verb> <overrides>``; every process
runs ``minisam_train``'s ``__main__`` exactly as ``-m minisam_train`` would, and leaves in
``$MINISAM_TEST_DUMP``:

* ``writes_rank<r>.json``: what it created, renamed or removed under ``$MINISAM_TEST_WATCH`` (Python's
  audit events for opens, renames, mkdir and removals, plus ``torch.save``, whose writer opens files in C++);
* ``weights_rank<r>.pt``: its trainable weights when training ended (adapt: the adapter, distill: the student).

Nothing in the package knows about this file.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
from pathlib import Path

DUMP = Path(os.environ["MINISAM_TEST_DUMP"]).resolve()
WATCH = str(Path(os.environ["MINISAM_TEST_WATCH"]).resolve())
RANK = int(os.environ.get("RANK", "0"))
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
writes: list[list[str]] = []


def _watched(path) -> str | None:
    if isinstance(path, int):
        return None
    try:
        full = os.path.abspath(os.fsdecode(path))
    except TypeError:
        return None
    if full.startswith(WATCH + os.sep) and not full.startswith(str(DUMP)):
        return full
    return None


def _audit(event: str, args) -> None:
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
        if writing and (p := _watched(path)):
            writes.append(["write", p])
    elif event == "os.rename":
        if (p := _watched(args[1])) or _watched(args[0]):
            writes.append(["rename", os.path.abspath(os.fsdecode(args[0])), p or os.fsdecode(args[1])])
    elif event == "os.mkdir":
        if (p := _watched(args[0])) and not os.path.isdir(p):
            writes.append(["mkdir", p])
    elif event in ("os.remove", "os.rmdir", "shutil.rmtree"):
        if p := _watched(args[0]):
            writes.append(["remove", p])


def _record_torch_save() -> None:
    import torch

    real = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and (p := _watched(f)):
            writes.append(["write", p])
        return real(obj, f, *args, **kwargs)

    torch.save = save
    return real


def _dump_weights(module, real_save) -> None:
    from napari_qlora_minisam.adapter_training.trainable_state import trainable_state_dict

    real_save(trainable_state_dict(module), DUMP / f"weights_rank{RANK}.pt")


def _capture_final_weights(verb: str, real_save) -> None:
    if verb == "adapt":
        from minisam_train.tasks import adapt

        def run(cfg):
            summary, model = adapt.train(cfg)
            _dump_weights(model.net, real_save)
            return summary

        adapt.run = run
    elif verb == "distill":
        from minisam_train.training import distill_loop

        train_student = distill_loop.train_student

        def wrapped(accelerator, *args, **kwargs):
            result = train_student(accelerator, *args, **kwargs)
            _dump_weights(accelerator.unwrap_model(result["model"]).student, real_save)
            return result

        distill_loop.train_student = wrapped


def _save_writes() -> None:
    (DUMP / f"writes_rank{RANK}.json").write_text(json.dumps(writes, indent=1))


if __name__ == "__main__":
    DUMP.mkdir(parents=True, exist_ok=True)
    real_save = _record_torch_save()
    _capture_final_weights(sys.argv[1] if len(sys.argv) > 1 else "", real_save)
    atexit.register(_save_writes)
    sys.addaudithook(_audit)
    sys.argv = ["minisam_train", *sys.argv[1:]]
    runpy.run_module("minisam_train", run_name="__main__", alter_sys=True)
