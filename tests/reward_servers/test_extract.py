"""extract_code: fenced blocks, unterminated fences, bare code, prose."""

from __future__ import annotations

import pytest

from reward_servers.extract import extract_code


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sure:\n```python\nimport numpy\nprint(1)\n```\nDone.", "import numpy\nprint(1)\n"),
        ("```py\nx = 1\n```", "x = 1\n"),
        ("```Python3\nx = 1\n```", "x = 1\n"),
        ("```\nx = 2\n```", "x = 2\n"),
        ('```json\n{"a": 1}\n```\nthen\n```python\nx = 3\n```', "x = 3\n"),
        ("```python\nx = 1\n```\n```python\nx = 2\n```", "x = 1\n"),
        ("text\n```python\nx = 4\nplt.show()", "x = 4\nplt.show()"),
        ("import matplotlib", "import matplotlib"),
        ("x = 1\ny = 2", "x = 1\ny = 2"),
        ("I cannot draw this.", None),
        ("```json\n{}\n```", None),
        ("```json\n{}", None),
        ("```python\n```", ""),
    ],
    ids=[
        "python",
        "py",
        "python3",
        "bare",
        "skip_json",
        "first_of_two",
        "unterminated",
        "import_no_fence",
        "multiline_no_fence",
        "prose",
        "only_other_language",
        "unterminated_other",
        "empty_block",
    ],
)
def test_extract_code(text: str, expected: str | None) -> None:
    assert extract_code(text) == expected


def test_not_a_string() -> None:
    assert extract_code(None) is None  # type: ignore[arg-type]
