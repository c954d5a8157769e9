"""Pull the program out of a model completion (used by the pool before scoring).

>>> extract_code("Here:\\n```python\\nprint(1)\\n```")
'print(1)\\n'
"""

from __future__ import annotations

import re

_OPEN = re.compile(r"```[ \t]*([^\n`]*)\n")
_PYTHON_TAGS = ("python", "py", "python3", "")


def extract_code(text: str) -> str | None:
    """Return the first ```python (or ```py / bare ```) fenced block of ``text``.

    An unterminated fence yields the rest of the text after it. With no fence at all, the whole text is returned
    if it looks like code (contains a newline or ``import``), else None. Fences of other languages are skipped.
    """
    if not isinstance(text, str):
        return None
    pos = 0
    saw_fence = False
    while True:
        m = _OPEN.search(text, pos)
        if m is None:
            break
        saw_fence = True
        tag = m.group(1).strip().lower()
        end = text.find("```", m.end())
        if tag in _PYTHON_TAGS:
            return text[m.end() :] if end < 0 else text[m.end() : end]
        if end < 0:
            return None  # an unterminated block of another language swallows the rest
        pos = end + 3
    if saw_fence:
        return None
    if "\n" in text or "import" in text:
        return text
    return None
