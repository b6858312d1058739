"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    acc = namespace["trainer"].callback_metrics["test/acc"]  # type: ignore[attr-defined]
    assert 0.0 <= float(acc) <= 1.0
    assert set(namespace["labeler"].metrics) >= {"pseudo_labels/nmi"}  # type: ignore[attr-defined]
    for block in blocks[1:]:  # later examples continue the first
        exec(compile(block, "README.md", "exec"), namespace)
    assert float(namespace["probe"].callback_metrics["val/embedding_norm"]) > 0  # type: ignore[attr-defined]
