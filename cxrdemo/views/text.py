"""User-derived text (class and folder names, run names, file names, DICOM values) made safe for where it goes.

Markdown: every ASCII punctuation character is backslash-escaped (CommonMark allows it for all of them), so a
class folder named `![x](https://...)` shows as those characters instead of loading a remote image, and line
breaks become spaces so a name cannot start a new block. CSV: a cell a spreadsheet would run as a formula gets
a leading single quote (the OWASP advice for CSV injection).
"""

from __future__ import annotations

import re
import string

_MARKDOWN_SPECIAL = re.compile("([" + re.escape(string.punctuation) + "])")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def escape_markdown(s: object) -> str:
    """`s` as Markdown that renders as exactly its characters (links, images, emphasis and directives inert)."""
    text = " ".join(str(s).splitlines())
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def code_block(text: str, lang: str = "") -> str:
    """`text` as a fenced Markdown code block that it cannot close: the fence is longer than any run of backticks
    inside (CommonMark), so a folder name holding ``` cannot end the block and start Markdown of its own."""
    longest = max((len(m) for m in re.findall("`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def safe_csv_cell(v: object) -> object:
    """A CSV cell a spreadsheet shows as text: strings starting with = + - @, tab or CR get a leading quote."""
    if isinstance(v, str) and v.startswith(_FORMULA_START):
        return "'" + v
    return v
