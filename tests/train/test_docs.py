"""docs/training.md's example runs as written."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "training.md"


def test_callback_example_runs(capsys):
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(code) == 1
    exec(compile(code[0], str(DOC), "exec"), {})  # noqa: S102 -- running the documented example is the test
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "epoch 2"]
