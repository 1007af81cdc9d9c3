"""The README's API tour runs and prints what the README says it prints."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tour_runs_and_matches_its_printed_output():
    text = README.read_text()
    code = re.search(r"## A tour of the API.*?```python\n(.*?)```", text, re.S).group(1)
    expected = re.search(r"## A tour of the API.*?```python\n.*?```\n\n```\n(.*?)```", text,
                         re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().split() == expected.split()
