"""What the CPU can do fast: whether the plugin offers its bfloat16 decoder option."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.lru_cache(maxsize=1)
def bf16_is_native() -> bool:
    """True when the CPU has bfloat16 dot-product instructions (AVX512-BF16 or AMX-BF16).

    Without them oneDNN emulates bfloat16 and autocast is slower than float32, so bf16 must stay opt-in.
    Read from ``/proc/cpuinfo`` (Linux); elsewhere this answers False, the safe choice.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool({"avx512_bf16", "amx_bf16"} & flags)


__all__ = ["bf16_is_native"]
