"""``minisam-train <verb> [--modality X] [key=value ...]``: a thin front end over Hydra.

Hydra owns argv, so the front end only pops the verb, maps ``--modality X`` to the override
``modality=X``, and hands the rest to ``@hydra.main`` with the verb's primary config. The configs ship in
the package (``minisam_train/conf``), so an installed wheel works from any folder.
"""

from __future__ import annotations

import importlib
import sys

# verb -> (primary config in minisam_train/conf, module whose run(cfg) does the work, one-line help)
VERBS = {
    "eval": ("eval", "minisam_train.tasks.evaluate", "COSMOS 1050K protocol: Dice/NSD, oracle and deployable"),
    "adapt": ("adapt", "minisam_train.tasks.adapt", "QLoRA modality adapter on an NF4 base (few-shot)"),
    "distill": ("distill", "minisam_train.tasks.distill", "teacher -> student knowledge distillation"),
    "average": ("average", "minisam_train.tasks.average", "weight average (model soup) of students of one shape"),
}
CONFIG_MODULE = "minisam_train.conf"

USAGE = """usage: minisam-train <verb> [--modality X] [key=value ...] [hydra flags: --cfg job, --help, ...]

verbs:
{verbs}

Every setting is a Hydra override, e.g.
  minisam-train eval data.root=../shared/data/cosmos_sample "models=[litemedsam]" "prompts=[box]" output_dir=out
  minisam-train adapt --modality ct train.device=cuda train.lora.r=16
  minisam-train distill train.steps=200
Show a verb's full config with:  minisam-train <verb> --cfg job
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


def main(argv: list[str] | None = None) -> None:
    import hydra

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return
    verb = args.pop(0)
    if verb not in VERBS:
        raise SystemExit(f"minisam-train: unknown verb {verb!r}.\n\n{usage()}")
    config_name, _, _ = VERBS[verb]

    @hydra.main(config_path="pkg://" + CONFIG_MODULE, config_name=config_name, version_base="1.3")
    def _entry(cfg):
        return run_task(verb, cfg)

    saved = sys.argv
    sys.argv = [f"minisam-train {verb}", *translate_args(args)]
    try:
        _entry()
    finally:
        sys.argv = saved


if __name__ == "__main__":  # pragma: no cover
    main()
