"""``minisam-train <verb> [--modality X] [key=value ...]``: a thin front end over Hydra.

Hydra owns argv, so the front end only pops the verb, maps ``--modality X`` to the override
``modality=X``, and hands the rest to ``@hydra.main`` with the verb's primary config. The configs ship in
the package (``minisam_train/conf``), so an installed wheel works from any folder.

Around Hydra it adds what a command line owes its user: ``<verb> --help`` lists the verb's keys; a key the
verb does not have is refused (also with ``+``); an expected error (bad data, model, adapter, setting) is
one line on stderr and exit code 1 (2 for settings), with the traceback only under ``--debug`` or
``HYDRA_FULL_ERROR=1``; a failed run leaves no empty run folder behind; Ctrl-C or SIGTERM in ``adapt`` or
``distill`` checkpoints the current step and prints the command that resumes (exit ``128 + signal``).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

# verb -> (primary config in minisam_train/conf, module whose run(cfg) does the work, one-line help)
VERBS = {
    "eval": ("eval", "minisam_train.tasks.evaluate", "COSMOS 1050K protocol: Dice/NSD, oracle and deployable"),
    "adapt": ("adapt", "minisam_train.tasks.adapt", "QLoRA modality adapter on an NF4 base (few-shot)"),
    "distill": ("distill", "minisam_train.tasks.distill", "teacher -> student knowledge distillation"),
    "average": ("average", "minisam_train.tasks.average", "weight average (model soup) of students of one shape"),
}
CONFIG_MODULE = "minisam_train.conf"
# Modules of the `[train]` extra: without them the command line cannot run at all.
TRAIN_EXTRA_MODULES = ("hydra", "omegaconf", "accelerate", "tensorboard", "matplotlib", "imageio", "tifffile")
# A failed run's folder is removed unless it holds something a rerun continues from (or eval's failures).
RESUMABLE = ("checkpoints/latest", "per_object.csv", "efficiency.csv", "failures.csv", "shards")

USAGE = """usage: minisam-train <verb> [--modality X] [key=value ...] [--debug] [hydra flags: --cfg job, ...]

verbs:
{verbs}

Every setting is a Hydra override, e.g.
  minisam-train eval data.root=../shared/data/cosmos_sample "models=[litemedsam]" "prompts=[box]" output_dir=out
  minisam-train adapt --modality ct train.device=cuda train.lora.r=16
  minisam-train distill train.steps=200
A verb's keys, defaults and meanings:  minisam-train <verb> --help
Its composed config:                   minisam-train <verb> --cfg job
--debug (or HYDRA_FULL_ERROR=1) shows the traceback of an error.
"""


def usage() -> str:
    return USAGE.format(verbs="\n".join(f"  {v:<8} {h}" for v, (_, _, h) in VERBS.items()))


def translate_args(args: list[str]) -> list[str]:
    """Map ``--modality X`` / ``--modality=X`` to the Hydra override ``modality=X``; keep the rest."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a == "--modality":
            if i + 1 >= len(args):
                raise SystemExit("minisam-train: --modality needs a value, e.g. --modality ct")
            out.append(f"modality={args[i + 1]}")
            i += 2
            continue
        if a.startswith("--modality="):
            out.append("modality=" + a.split("=", 1)[1])
        else:
            out.append(a)
        i += 1
    return out


def run_task(verb: str, cfg):
    """Import the verb's task module and call its ``run(cfg)``."""
    return importlib.import_module(VERBS[verb][1]).run(cfg)


def compose(verb: str, overrides: list[str] | None = None):
    """Compose a verb's config without running it (tests, notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name=VERBS[verb][0], overrides=translate_args(list(overrides or [])))


def verb_help(verb: str) -> str:
    """``minisam-train <verb> --help``: the verb's keys with defaults and meanings, and its document."""
    from .config_help import verb_help as table

    config_name, _, summary = VERBS[verb]
    return table(verb, config_name, summary, compose(verb))


# -- unknown keys -----------------------------------------------------------------------------------------
def check_overrides(verb: str, overrides: list[str]) -> None:
    """Refuse an override whose key the verb's config does not have, ``+key`` included.

    New keys are accepted only under a mapping the config leaves open (declared empty or null, such as
    ``data.modalities``) and in Hydra's own ``hydra.*`` settings.

    Raises:
        ConfigError: naming the key and the closest known one.
    """
    import difflib

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from .errors import ConfigError

    tree = OmegaConf.to_container(compose(verb), resolve=False)
    known: list[str] = []

    def walk(prefix, node):
        for k, v in node.items():
            known.append(f"{prefix}{k}")
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)

    walk("", tree)
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group
        if o.is_delete() or o.package is not None or "/" in key or key.split(".")[0] == "hydra":
            continue  # Hydra checks these itself (and config groups live in files, not in the tree)
        node = tree
        for part in key.split("."):
            if isinstance(node, dict) and part in node:
                node = node[part]
                continue
            if node is None or node == {} or isinstance(node, list):
                break  # an open mapping (or a list index): Hydra decides
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown key {key!r}{hint}; minisam-train {verb} has no such setting")


# -- errors -----------------------------------------------------------------------------------------------
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
class _Run:
    """What main() learns about a run, to clean up or to resume it."""

    verb: str
    args: list
    output_dir: Path | None = None
    fresh: bool = False             # the run folder held nothing but Hydra's records when the task began
    created_root: Path | None = None  # the topmost folder of output_dir that did not exist before the run
    signum: int | None = None
    error: BaseException | None = None  # what the task raised


def _process_rank() -> tuple[int, int]:
    """(rank, processes) of this process in an ``accelerate launch`` / torchrun group; (0, 1) alone."""
    def env(*names, default):
        for n in names:
            if os.environ.get(n, "").strip().isdigit():
                return int(os.environ[n])
        return default

    return (env("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", default=0),
            env("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", default=1))


# Hydra settings for every process but the first of a launch: Hydra's records (.hydra/, the job log) are
# written once, by the main process, and no folder is made for a run folder name this process resolved
# on its own (a `${now:...}` may differ by a second; the tasks use the main process's output_dir).
SECONDARY_PROCESS_OVERRIDES = ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout"]


def _is_resumable(out: Path) -> bool:
    return any((out / r).exists() for r in RESUMABLE)


def _remove_failed_run_dir(run: _Run) -> None:
    out = run.output_dir
    if out is None or not run.fresh or not out.is_dir() or _is_resumable(out):
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


def _report(run: _Run, exc: BaseException, debug: bool) -> int | None:
    """Print what went wrong; return the exit code, or None to let the exception show its traceback."""
    from .errors import TrainingInterrupted

    verb = run.verb
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in TRAIN_EXTRA_MODULES:
        print('minisam-train needs the training extra: pip install "napari-qlora-minisam[train]" '
              f"(missing module: {exc.name.split('.')[0]})", file=sys.stderr)
        return 2
    rank, processes = _process_rank()
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
        _remove_failed_run_dir(run)
    if isinstance(exc, KeyboardInterrupt):
        if debug:
            return None
        signum = run.signum or signal.SIGINT
        kept = run.output_dir is not None and run.output_dir.is_dir() and _is_resumable(run.output_dir)
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


# -- running ----------------------------------------------------------------------------------------------
def _planned_run_root(verb: str, overrides: list[str]) -> Path | None:
    """The topmost folder of the run's output_dir that does not exist yet (removed again if the run fails)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = hydra_compose(config_name=VERBS[verb][0], overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # for ${hydra:...} in output_dir
        out = Path(str(cfg.hydra.run.dir))
    missing = None
    for p in [out, *out.parents]:
        if p.exists():
            break
        missing = p
    return missing


def _set_log_level(cfg) -> None:
    from omegaconf import OmegaConf

    from .errors import ConfigError

    level = OmegaConf.select(cfg, "logging.level")
    if level is None:
        return
    try:
        logging.getLogger().setLevel(str(level).upper())
    except ValueError:
        raise ConfigError(f"logging.level={level!r} is not a log level; use DEBUG, INFO, WARNING or ERROR") from None


def _launch(run: _Run) -> None:
    import hydra
    from hydra._internal.utils import get_args_parser

    verb = run.verb
    overrides = translate_args(run.args)
    flags = get_args_parser().parse_args(overrides)  # the overrides and Hydra's own flags, as Hydra reads them
    check_overrides(verb, flags.overrides)
    writes = not (flags.cfg or flags.info or flags.hydra_help or flags.shell_completion or flags.multirun)
    if _process_rank()[0] > 0:
        keys = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
        overrides = overrides + [o for o in SECONDARY_PROCESS_OVERRIDES if o.split("=", 1)[0] not in keys]
    elif writes:
        run.created_root = _planned_run_root(verb, flags.overrides)

    @hydra.main(config_path="pkg://" + CONFIG_MODULE, config_name=VERBS[verb][0], version_base="1.3")
    def _entry(cfg):
        from hydra.core.hydra_config import HydraConfig

        run.output_dir = Path(str(cfg.output_dir))
        records = {".hydra", f"{HydraConfig.get().job.name}.log"}
        run.fresh = not run.output_dir.is_dir() or all(p.name in records for p in run.output_dir.iterdir())
        try:
            _set_log_level(cfg)
            run_task(verb, cfg)
        except BaseException as exc:  # kept from Hydra, which would print its own line before re-raising
            run.error = exc

    def on_sigterm(signum, frame):
        run.signum = signum
        raise KeyboardInterrupt  # outside a training loop SIGTERM stops like Ctrl-C (no traceback)

    saved_argv, saved_full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    sys.argv = [f"minisam-train {verb}", *overrides]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing; _report words the error
    try:
        _entry()
        if run.error is not None:
            raise run.error
    finally:
        sys.argv = saved_argv
        if saved_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_full_error
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return
    verb = args.pop(0)
    if verb not in VERBS:
        print(f"minisam-train: unknown verb {verb!r}.\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    debug = "--debug" in args or os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")
    run = _Run(verb, [a for a in args if a != "--debug"])
    try:
        if "-h" in run.args or "--help" in run.args:
            print(verb_help(verb))
            return
        _launch(run)
    except SystemExit:
        raise
    except BaseException as exc:
        code = _report(run, exc, debug)
        if code is None:
            raise
        raise SystemExit(code) from None


if __name__ == "__main__":  # pragma: no cover
    main()
