"""The README's "Quantize your own model" snippets run as written."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def snippets() -> list[str]:
    text = README.read_text()
    section = text.split("## Quantize your own model\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_section_has_three_snippets():
    assert len(snippets()) == 3


KEPT_FLOAT = [lambda s: [s[0], s[8]], lambda s: [s.classifier], lambda s: [s.lm_head]]  # what the comments promise


@pytest.mark.parametrize("index", range(3))
def test_snippet_runs_and_trains(index, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)  # the transformers snippet writes student.onnx
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(snippets()[index], f"README snippet {index}", "exec"), namespace)  # noqa: S102 (the README is ours)
    student, loss = namespace["student"], namespace["loss"]
    assert torch.isfinite(loss) and student.qdistill_summary.quantized
    assert any(p.grad is not None for p in student.parameters())
    assert all(type(m) in (torch.nn.Conv2d, torch.nn.Linear) for m in KEPT_FLOAT[index](student))
