"""Multiply-accumulates (MACs) and parameters of one image-encoder forward, per model.

    python benchmarks/model_flops.py [--models litemedsam random_student_256_global random_vit_b random_vit_h]

Counts with ``torch.utils.flop_counter`` and reports MACs in the convention of the SAM-distillation
literature (a multiply-add counts once: torch's figure / 2). torch counts nothing for attention that runs
through ``scaled_dot_product_attention``'s CPU kernel, so that op is given its formula here
(QKᵀ and AV: L·S·(E + Eᵥ) MACs per head); the SDPA share is printed on its own. Prints a markdown table and
writes it into docs/benchmarks.md (section "Encoder cost"), unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import doc_sections  # noqa: E402 - the shared section writer

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
START, END = "<!-- flops:start -->", "<!-- flops:end -->"
DEFAULT = ["litemedsam", "minisam", "random_student_256", "random_student_256_global", "random_student_256_g1",
           "random_vit_b", "random_vit_h"]


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs (2 per MAC) of softmax(QKᵀ)V for shapes (..., L, E), (..., S, E), (..., S, Ev)."""
    *batch, length, embed = query
    source, embed_v = key[-2], value[-1]
    count = 1
    for b in batch:
        count *= b
    return 2 * count * length * source * (embed + embed_v)


def encoder_of(name: str):
    """(encoder module, input tensor) for a load_model source, built on the CPU."""
    import torch

    from napari_qlora_minisam import load_model

    backend = load_model(name, device="cpu")
    encoder = backend.image_encoder
    size = int(backend.spec.image_size)
    return encoder, torch.zeros(1, 3, size, size), backend


def encoder_macs(encoder, pixels) -> dict:
    """MACs of one forward of ``encoder`` on ``pixels``: in all (fused attention by its formula), as torch
    counts them, and the fused attention's share."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    encoder.eval()
    sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    with torch.inference_mode():
        with FlopCounterMode(display=False) as plain:
            encoder(pixels)
        with FlopCounterMode(display=False, custom_mapping={sdpa: _sdpa_flops}) as full:
            encoder(pixels)
    sdpa_flops = sum(v for k, v in full.get_flop_counts()["Global"].items() if "scaled_dot_product" in str(k))
    return {"macs": full.get_total_flops() / 2, "torch_macs": plain.get_total_flops() / 2,
            "sdpa_macs": sdpa_flops / 2}


def count(name: str) -> dict:
    encoder, pixels, backend = encoder_of(name)
    return {"name": name, "input": pixels.shape[-1], "encoder_params": sum(p.numel() for p in encoder.parameters()),
            "total_params": backend.num_parameters(), **encoder_macs(encoder, pixels)}


def table(rows) -> str:
    lines = ["## Encoder cost (MACs per forward)", "",
             "Command: `python benchmarks/model_flops.py`. MACs = multiply-accumulates of one image-encoder forward "
             "(torch.utils.flop_counter's FLOPs / 2), with attention run through `scaled_dot_product_attention` "
             "counted from its formula (torch counts 0 for it on the CPU); the SDPA column is that share.", "",
             "| model | input | encoder parameters | all parameters | GMACs | of which SDPA | torch's own count / 2 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['name']}` | {r['input']}² | {r['encoder_params'] / 1e6:.2f} M | {r['total_params'] / 1e6:.2f} M "
                     f"| **{r['macs'] / 1e9:.1f}** | {r['sdpa_macs'] / 1e9:.1f} | {r['torch_macs'] / 1e9:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=DEFAULT)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args(argv)
    rows = []
    for name in args.models:
        print(f"[model_flops] {name} ...", file=sys.stderr, flush=True)
        rows.append(count(name))
    text = table(rows)
    print(text)
    if not args.no_write:
        doc_sections.write_section(DOC, text, START, END)
        print(f"wrote {DOC.relative_to(REPO)} ({START} ... {END})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
