"""Untrusted text (file names, task ids, row fields, error messages) made safe to show.

`terminal` keeps text from driving the terminal (escape sequences, control characters, bidi overrides);
`markdown` keeps it from becoming live markup in report.md (HTML, links, images, emphasis, table cells).
"""

from __future__ import annotations

import re
import unicodedata

# characters that reorder or hide text (Trojan-source style) besides the C0/C1 controls
_BIDI = {0x200E, 0x200F, 0x061C, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
# inline markup a cell or list item can hold (line-start markup cannot occur: every line starts with ours)
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def _unsafe(ch: str) -> bool:
    code = ord(ch)
    return code in _BIDI or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp")


def terminal(text: object, limit: int | None = None) -> str:
    """`str(text)` with control / format characters shown as `\\x1b`-style escapes; cut to `limit` chars."""
    s = str(text)
    if limit is not None and len(s) > limit:
        s = s[: max(limit - 1, 0)] + "…"
    if not any(_unsafe(ch) for ch in s):
        return s
    out = []
    for ch in s:
        if not _unsafe(ch):
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


def markdown(text: object, limit: int | None = 500) -> str:
    """Inert inline Markdown on one line: HTML-escaped (`<`, `>`, `&`, `"`), inline markup characters
    backslash-escaped (code, emphasis, links / images, table cells, strikethrough), controls escaped."""
    s = " ".join(terminal(text, limit).split())
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    return _MD_SPECIAL.sub(r"\\\1", s)
