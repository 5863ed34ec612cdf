"""``python -m minisam_train <verb> ...`` = ``minisam-train <verb> ...``; the form ``accelerate launch`` starts:

    accelerate launch --num_processes 8 -m minisam_train eval <overrides>

On every process but the main one (``RANK`` > 0), Hydra is told to keep its records (``.hydra/``, the log
file) out of the run folder: the main process writes them, the others log to the console only.
"""

import os
import sys

from .cli import main


def rank_overrides(args: list[str]) -> list[str]:
    """Hydra settings for a process other than the main one of a launched run (none for the main one)."""
    if int(os.environ.get("RANK", "0") or 0) == 0:
        return []
    extra = []
    if not any(a.lstrip("+~").startswith("hydra.output_subdir=") for a in args):
        extra.append("hydra.output_subdir=null")
    if not any(a.lstrip("+~").startswith("hydra/job_logging=") for a in args):
        extra.append("hydra/job_logging=stdout")
    return extra


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args + rank_overrides(args) if args and args[0] == "eval" else args)
