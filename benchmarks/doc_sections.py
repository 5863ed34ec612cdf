"""Writing a benchmark's figures into its marked section of a doc (the one helper every report script uses)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (for the "Machine:" line every benchmark writes)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def write_section(doc: Path, text: str, start: str, end: str, *, after: str | None = None,
                  title: str = "# Benchmarks") -> None:
    """Replace the ``start``..``end`` block of ``doc`` with ``text``, leaving the rest of the file alone.

    A doc without the block gets it after the marker ``after`` if that is present, else at the end; a missing
    doc is created with ``title``. Re-running a benchmark therefore updates its own figures only.
    """
    doc = Path(doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    body = doc.read_text() if doc.exists() else f"{title}\n"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in body and end in body:
        head, rest = body.split(start, 1)
        body = head + block + rest.split(end, 1)[1]
    elif after and after in body:
        head, rest = body.split(after, 1)
        body = head + after + "\n\n" + block + rest
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    doc.write_text(body)
