"""No module over 450 lines without a reason: a module that long is usually two modules. A longer
one names why it is whole in a `# size: <reason>` comment among its first lines."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 450
HEAD_LINES = 5  # where the `# size:` line must be


def size_reason(text: str) -> str | None:
    """The reason of a `# size: ...` line among the first lines, or None."""
    for line in text.splitlines()[:HEAD_LINES]:
        if line.startswith("# size:") and line[len("# size:"):].strip():
            return line[len("# size:"):].strip()
    return None


def oversized(paths) -> list[str]:
    bad = []
    for path in paths:
        text = path.read_text()
        n = len(text.splitlines())
        if n > MAX_LINES and size_reason(text) is None:
            bad.append(f"{path.relative_to(ROOT)}: {n} lines (> {MAX_LINES}) and no `# size: <reason>` "
                       f"in its first {HEAD_LINES} lines; split it along its seams or say why it is whole")
    return bad


def test_modules_are_short_or_say_why():
    paths = sorted((ROOT / "dive").rglob("*.py")) + [ROOT / "app.py"]
    assert len(paths) > 50
    bad = oversized(paths)
    assert not bad, "\n".join(bad)


def test_the_reason_must_be_at_the_top_and_not_empty():
    assert size_reason("# size: one training loop, clearer whole\nimport x\n") == "one training loop, clearer whole"
    assert size_reason('"""Doc."""\n# size: one loop\n') == "one loop"
    assert size_reason("# size:\nimport x\n") is None
    assert size_reason("\n" * HEAD_LINES + "# size: too late\n") is None
