"""bench/report.py: each benchmark rewrites only its own section of docs/benchmarks.md."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from report import machine, write_section  # noqa: E402


def test_a_section_is_added_then_replaced_and_the_others_are_kept(tmp_path):
    doc = tmp_path / "benchmarks.md"
    write_section("## A (bench/a.py)", "## A (bench/a.py)\n\nfirst\n", doc)
    assert doc.read_text().startswith("# Benchmarks\n")
    write_section("## B (bench/b.py)", "## B (bench/b.py)\n\nb\n", doc)
    write_section("## A (bench/a.py)", "## A (bench/a.py)\n\nsecond\n", doc)
    text = doc.read_text()
    assert "first" not in text and "second" in text and "\nb\n" in text
    assert text.index("## A") < text.index("## B")  # replaced in place
    assert "\n\n## B" in text  # still a paragraph of its own


def test_machine_names_the_cores_memory_python_and_extras():
    facts = machine("jupyterhub 6.1.1")
    assert "cores (nproc)" in facts and "GiB RAM" in facts and "jupyterhub 6.1.1" in facts
