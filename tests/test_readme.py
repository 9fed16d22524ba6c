"""The README's API example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_api_example_runs():
    (example,) = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    namespace: dict = {}
    exec(compile(example, str(README), "exec"), namespace)
    assert tuple(namespace["warp"].shape) == (1, 3, 96, 128)
    assert namespace["warp"].requires_grad  # the coordinate gradient path is live
