"""Every Python example in README.md and docs/*.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


@pytest.mark.parametrize(
    "page", [p for p in DOCS if BLOCK.search(p.read_text())], ids=lambda p: p.name
)
def test_examples_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The page's python blocks, run in order in one namespace, raise nothing and print."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HIVEMEM_DATA_DIR", str(tmp_path / "data"))
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in BLOCK.findall(page.read_text()):
        exec(compile(block, str(page), "exec"), namespace)
    assert capsys.readouterr().out.strip()
