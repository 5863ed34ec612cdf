"""Keep Triton's bundled LLVM out of a process whose OpenGL driver already loaded the system LLVM.

Mesa's OpenGL drivers (llvmpipe — what Xvfb and VMs use — and radeonsi) map ``libLLVM``. Importing
``triton`` afterwards loads a second, statically linked LLVM and the process segfaults (seen here in
``triton/knobs.py`` and in ``glDrawArrays``). The model code never needs Triton, but torchvision imports
``torch._dynamo``, which imports it when installed. Marking ``triton`` as absent makes that import raise
``ImportError``, which torch handles as "no Triton". Only done when ``libLLVM`` is already mapped and
Triton was not imported yet. The other order is safe (Triton first, then Mesa), so when no GL driver is
loaded yet (a script importing the widget before making a viewer) Triton is imported right away.
"""

from __future__ import annotations

import sys
from pathlib import Path


def llvm_already_loaded() -> bool:
    try:
        return "libLLVM" in Path("/proc/self/maps").read_text()
    except OSError:  # not Linux: no Mesa LLVM clash known there
        return False


def keep_triton_out() -> bool:
    """Block ``import triton`` if the GL driver's LLVM is loaded, else load it first; True if blocked."""
    if "triton" in sys.modules:
        return sys.modules["triton"] is None
    if llvm_already_loaded():
        sys.modules["triton"] = None
        return True
    try:
        import triton  # noqa: F401 - its LLVM before Mesa's is the order that works
    except Exception:  # noqa: BLE001 - not installed or broken: nothing can clash then
        pass
    return False
