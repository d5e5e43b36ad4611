"""Every Python example in README.md and docs/*.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from hivemem.pool.settings import HivememSettings

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


def _variables(model: type[BaseModel], prefix: str) -> list[str]:
    """Every leaf setting of ``model`` as its environment variable."""
    names = []
    for name, field in model.model_fields.items():
        variable = f"{prefix}{name.upper()}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += _variables(annotation, f"{variable}__")
        else:
            names.append(variable)
    return names


def test_the_readme_lists_every_setting() -> None:
    """The README's configuration reference names every HIVEMEM_ variable the settings read."""
    readme = (ROOT / "README.md").read_text()
    missing = [v for v in _variables(HivememSettings, "HIVEMEM_") if f"`{v}`" not in readme]
    assert missing == []
