"""Ship the adapters of an adapter experiment run as the package's pretrained adapters.

    python experiments/ship_adapters.py runs/adapt_experiment [--modalities ct mri]

Copies ``OUT/adapters/<modality>/`` (peft files + ``minisam_adapter.json``, with the scores that
experiments/adapt_report.py added) into ``src/napari_qlora_minisam/pretrained_adapters/<modality>/``. This is
the only script that writes there; a report never does. Each adapter is checked before anything is replaced:
it must load onto its base, and its metadata must carry measured scores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE_ADAPTERS = REPO / "src" / "napari_qlora_minisam" / "pretrained_adapters"
FILES = ("adapter_config.json", "adapter_model.safetensors", "minisam_adapter.json")


def check(src: Path) -> None:
    missing = [f for f in FILES if not (src / f).exists()]
    if missing:
        raise SystemExit(f"{src}: missing {', '.join(missing)}; is it an adapter folder written by minisam-train adapt?")
    meta = json.loads((src / "minisam_adapter.json").read_text())
    if not meta.get("scores"):
        raise SystemExit(f"{src}: no measured scores in minisam_adapter.json; run experiments/adapt_report.py first")
    from napari_qlora_minisam import load_model

    load_model(meta.get("base_source", "litemedsam"), quantize=meta.get("quantize"), adapters=[str(src)])


def ship(src: Path, dst: Path) -> None:
    """Replace ``dst`` with a copy of ``src``'s adapter files; the old adapter stays until the copy is whole."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}-", dir=dst.parent))
    for f in FILES:
        shutil.copy(src / f, tmp / f)
        (tmp / f).chmod(0o644)
    tmp.chmod(0o755)
    old = dst.with_name(f".{dst.name}-old")
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the experiment folder (holds adapters/<modality>/)")
    ap.add_argument("--modalities", nargs="+", default=["ct", "mri"])
    ap.add_argument("--prefix", default="", help="folder-name prefix in the package (minisam- for MiniSAM's)")
    args = ap.parse_args(argv)
    for mod in args.modalities:
        check(args.out / "adapters" / mod)
    for mod in args.modalities:
        dst = PACKAGE_ADAPTERS / f"{args.prefix}{mod}"
        ship(args.out / "adapters" / mod, dst)
        print(f"shipped {args.out / 'adapters' / mod} -> {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
