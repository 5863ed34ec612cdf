"""The helper every benchmark uses to write its figures into docs (benchmarks/doc_sections.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from doc_sections import write_section  # noqa: E402


def test_sections_are_replaced_in_place_and_new_ones_placed(tmp_path):
    doc = tmp_path / "docs" / "benchmarks.md"
    write_section(doc, "first figures\n", "<!-- a:start -->", "<!-- a:end -->")
    assert doc.read_text() == "# Benchmarks\n\n<!-- a:start -->\nfirst figures\n<!-- a:end -->\n"
    doc.write_text(doc.read_text() + "\nhand-written prose\n")
    write_section(doc, "second figures", "<!-- a:start -->", "<!-- a:end -->")
    text = doc.read_text()
    assert "first figures" not in text and "second figures" in text and "hand-written prose" in text
    write_section(doc, "b figures", "<!-- b:start -->", "<!-- b:end -->", after="<!-- a:end -->")
    text = doc.read_text()
    assert text.index("<!-- a:end -->") < text.index("b figures") < text.index("hand-written prose")
