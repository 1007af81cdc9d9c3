"""The README's API tour runs and prints what the README says it prints."""

import contextlib
import io
import re
from pathlib import Path

import numpy as np

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


def _numbers_and_words(text):
    tokens = re.findall(r"[-+]?\d*\.?\d+(?:e[-+]?\d+)?|[^\s\d]+", text)
    numbers = [float(x) for x in tokens if re.fullmatch(r"[-+]?\d*\.?\d+(?:e[-+]?\d+)?", x)]
    words = [x for x in tokens if not re.fullmatch(r"[-+]?\d*\.?\d+(?:e[-+]?\d+)?", x)]
    return numbers, words


def test_readme_research_loop_runs_and_matches_its_printed_output():
    text = README.read_text()
    section = re.search(r"## Research loop.*?```python\n(.*?)```\n\n```\n(.*?)```", text, re.S)
    code, expected = section.group(1), section.group(2)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_research_loop"})
    got_numbers, got_words = _numbers_and_words(out.getvalue())
    want_numbers, want_words = _numbers_and_words(expected)
    assert got_words == want_words
    np.testing.assert_allclose(got_numbers, want_numbers, rtol=0.1, atol=0.01)
