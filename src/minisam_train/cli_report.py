"""What a failed or interrupted ``minisam-train`` run tells its user, and what it leaves on disk.

An expected error (bad data, model, adapter, setting) becomes one line on stderr and an exit code (1, or 2
for settings); a training run stopped by Ctrl-C or SIGTERM prints the command that resumes it; a failed run's
folder is removed unless it holds something a rerun continues from.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

# Modules of the `[train]` extra: without them the command line cannot run at all.
TRAIN_EXTRA_MODULES = ("hydra", "omegaconf", "accelerate", "tensorboard", "matplotlib", "imageio", "tifffile")
# A failed run's folder is removed unless it holds something a rerun continues from (or eval's failures).
RESUMABLE = ("checkpoints/latest", "per_object.csv", "efficiency.csv", "failures.csv", "shards")


def exit_code(exc: BaseException) -> int | None:
    """2 for a setting, 1 for data / model / adapter / file errors, None for an unexpected error (a bug)."""
    from napari_qlora_minisam.errors import MiniSamError

    from .errors import ConfigError

    if isinstance(exc, ConfigError):
        return 2
    if isinstance(exc, (MiniSamError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return 1
    config_errors: tuple = (ValueError, KeyError)
    try:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        config_errors += (HydraException, OmegaConfBaseException)
    except ImportError:  # pragma: no cover - reported as a missing extra before any config is read
        pass
    return 2 if isinstance(exc, config_errors) else None


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line: Hydra's option lists joined, OmegaConf's node details dropped."""
    text = str(exc) or type(exc).__name__
    if type(exc) is KeyError:
        text = f"KeyError: {text}"
    out: list[str] = []
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith(("full_key:", "object_type=", "reference_type=", "Config search path")):
            break
        if line[:1].isspace() and out:  # an indented continuation, e.g. Hydra's list of options
            out[-1] += (" " if out[-1].endswith(":") else ", ") + s
        else:
            out.append(s)
    text = " ".join(out)
    missing = re.search(r"Missing mandatory value: ([\w.]+)", text)
    if missing:  # `modality: ???` and the like
        key = missing.group(1)
        return f"{key} is required: {'--modality X (e.g. ct)' if key == 'modality' else key + '=...'}"
    cause = exc.__cause__
    if cause is not None and type(exc).__module__.startswith("hydra") and str(cause):
        text += f" ({one_line(cause)})"  # e.g. "Error merging override ..." says nothing without its cause
    return text


@dataclass
class Run:
    """What main() learns about a run, to clean up or to resume it."""

    verb: str
    args: list
    output_dir: Path | None = None
    fresh: bool = False             # the run folder held nothing but Hydra's records when the task began
    created_root: Path | None = None  # the topmost folder of output_dir that did not exist before the run
    signum: int | None = None
    error: BaseException | None = None  # what the task raised


def is_resumable(out: Path) -> bool:
    return any((out / r).exists() for r in RESUMABLE)


def remove_failed_run_dir(run: Run) -> None:
    out = run.output_dir
    if out is None or not run.fresh or not out.is_dir() or is_resumable(out):
        return
    shutil.rmtree(out, ignore_errors=True)
    root = run.created_root
    parent = out.parent
    while root is not None and (parent == root or root in parent.parents):
        try:
            parent.rmdir()  # only if empty
        except OSError:
            break
        parent = parent.parent


def resume_command(verb: str, args: list[str], output_dir) -> str:
    """The command line that continues a run in ``output_dir``: the same arguments, the folder pinned."""
    def sets(a: str, key: str) -> bool:
        return a.lstrip("+~").split("=", 1)[0] == key

    keep = [a for a in args if not (sets(a, "output_dir") or sets(a, "train.resume"))]
    return shlex.join(["minisam-train", verb, *keep, f"output_dir={output_dir}"])


def report(run: Run, exc: BaseException, debug: bool, rank: int = 0, processes: int = 1) -> int | None:
    """Print what went wrong; return the exit code, or None to let the exception show its traceback."""
    from .errors import TrainingInterrupted

    verb = run.verb
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in TRAIN_EXTRA_MODULES:
        print('minisam-train needs the training extra: pip install "napari-qlora-minisam[train]" '
              f"(missing module: {exc.name.split('.')[0]})", file=sys.stderr)
        return 2
    if isinstance(exc, TrainingInterrupted):
        if rank == 0:  # one message for the whole launch
            print(f"minisam-train {verb}: {exc}", file=sys.stderr)
            command = resume_command(verb, run.args, exc.output_dir)
            if processes > 1:  # the same launch again: exact resume needs the same number of processes
                command = command.replace("minisam-train ", f"accelerate launch <the same options, {processes} "
                                          "processes> -m minisam_train ", 1)
            print(f"Resume with: {command}", file=sys.stderr)
        return 128 + exc.signum
    if rank == 0:
        remove_failed_run_dir(run)
    if isinstance(exc, KeyboardInterrupt):
        if debug:
            return None
        signum = run.signum or signal.SIGINT
        kept = run.output_dir is not None and run.output_dir.is_dir() and is_resumable(run.output_dir)
        print(f"minisam-train {verb}: interrupted ({signal.Signals(signum).name})"
              + ("" if kept else "; nothing was saved"), file=sys.stderr)
        if kept:
            print(f"Resume with: {resume_command(verb, run.args, run.output_dir)}", file=sys.stderr)
        return 128 + signum
    code = exit_code(exc)
    if code is None or debug:
        return None
    print(f"minisam-train {verb}: error: {one_line(exc)}", file=sys.stderr)
    if code == 2:
        print(f"(the keys of {verb}, their defaults and meanings: minisam-train {verb} --help)", file=sys.stderr)
    return code
