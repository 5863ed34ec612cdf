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
import signal
import sys
import threading
from pathlib import Path

from .cli_report import Run, report

# verb -> (primary config in minisam_train/conf, module whose run(cfg) does the work, one-line help)
VERBS = {
    "eval": ("eval", "minisam_train.tasks.evaluate", "COSMOS 1050K protocol: Dice/NSD, oracle and deployable"),
    "adapt": ("adapt", "minisam_train.tasks.adapt", "QLoRA modality adapter on an NF4 base (few-shot)"),
    "distill": ("distill", "minisam_train.tasks.distill", "teacher -> student knowledge distillation"),
    "average": ("average", "minisam_train.tasks.average", "weight average (model soup) of students of one shape"),
}
CONFIG_MODULE = "minisam_train.conf"

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
        else:
            _check_value_kind(key, node, o.value() if not o.is_sweep_override() else None)


def _check_value_kind(key: str, default, value) -> None:
    """A number or true/false setting given a word is refused here, naming the key, instead of failing later
    inside the run as ``could not convert string to float: 'abc'``."""
    from .errors import ConfigError

    if not isinstance(value, str) or value.startswith("${") or default is None:
        return  # a typed value, an interpolation, or a setting whose kind the default does not say
    if isinstance(default, bool):
        raise ConfigError(f"{key}={value!r}: true or false is expected (default {str(default).lower()})")
    if isinstance(default, (int, float)):
        kind = "a whole number" if isinstance(default, int) else "a number"
        raise ConfigError(f"{key}={value!r}: {kind} is expected (default {default})")


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


def _launch(run: Run) -> None:
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
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing; cli_report words the error
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
    run = Run(verb, [a for a in args if a != "--debug"])
    try:
        if "-h" in run.args or "--help" in run.args:
            print(verb_help(verb))
            return
        _launch(run)
    except SystemExit:
        raise
    except BaseException as exc:
        code = report(run, exc, debug, *_process_rank())
        if code is None:
            raise
        raise SystemExit(code) from None


if __name__ == "__main__":  # pragma: no cover
    main()
