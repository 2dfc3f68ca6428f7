"""Grid <-> text encoders, the prompt template, and a tolerant parser of model output.

Encoders: "minimal" (rows of digits joined by newlines, "012\\n340") and "shape" (arc24 style: a header
"<h>x<w>" then one line per row, "<row number 1-based> <digits>"). Prompts and targets use only the
characters of ALPHABET plus the MARKERS, so a word-level tokenizer of a few dozen tokens covers them.
``parse_output`` never raises on model output: it returns a ParseError value whose ``kind`` says what
went wrong ("empty", "ragged", "stray_characters", "too_large", "truncated", "shape_mismatch"). Generation
stops at STOP_STRINGS (a blank line or a template marker), which is where the parser cuts the grid anyway.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ttft.tasks import MAX_SIDE, Grid, Pair

ALPHABET: str = "0123456789 x\n"
MARKERS: tuple[str, ...] = ("<in>", "<out>")

# Where generation stops besides EOS: a blank line, or the model starting the next example (a marker).
STOP_STRINGS: tuple[str, ...] = ("\n\n", *MARKERS)

PARSE_ERROR_KINDS = ("empty", "ragged", "stray_characters", "too_large", "truncated", "shape_mismatch")


class ParseError(ValueError):
    """Text that is not a grid; ``kind`` is one of PARSE_ERROR_KINDS."""

    def __init__(self, kind: str, message: str = "") -> None:
        if kind not in PARSE_ERROR_KINDS:
            raise ValueError(f"unknown ParseError kind {kind!r}")
        self.kind = kind
        self.message = message
        super().__init__(f"{kind}: {message}" if message else kind)

    def __reduce__(self):
        return (ParseError, (self.kind, self.message))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParseError) and (self.kind, self.message) == (other.kind, other.message)

    def __hash__(self) -> int:
        return hash((self.kind, self.message))


@runtime_checkable
class Encoder(Protocol):
    """Grid <-> text codec."""

    name: str

    def encode(self, grid: Grid) -> str: ...

    def decode(self, text: str) -> Grid: ...


_DIGITS = re.compile(r"[0-9]+")


def _digit_row(line: str, line_no: int) -> list[int]:
    if not _DIGITS.fullmatch(line) and line:
        bad = next(ch for ch in line if ch not in "0123456789")
        raise ParseError("stray_characters", f"line {line_no}: unexpected character {bad!r}")
    return [ord(ch) - 48 for ch in line]


def _check_rows(rows: list[list[int]]) -> Grid:
    """Shape checks shared by the encoders: size limits, then ragged vs truncated."""
    if not rows:
        raise ParseError("empty", "no rows")
    if len(rows) > MAX_SIDE or any(len(r) > MAX_SIDE for r in rows):
        width = max(len(r) for r in rows)
        raise ParseError("too_large", f"{len(rows)} rows, up to {width} columns; at most {MAX_SIDE} each")
    width = len(rows[0])
    bad = [i for i, r in enumerate(rows) if len(r) != width]
    if bad:
        last = len(rows) - 1
        if bad == [last] and len(rows[last]) < width:
            raise ParseError("truncated", f"last row has {len(rows[last])} cells, the others {width}")
        i = bad[0]
        raise ParseError("ragged", f"row {i + 1} has {len(rows[i])} cells, row 1 has {width}")
    if width == 0:
        raise ParseError("empty", "rows have no cells")
    return rows


class MinimalEncoder:
    """Rows of digits joined by newlines: [[0, 1], [3, 4]] <-> "01\\n34"."""

    name = "minimal"
    self_delimiting = False  # a grid's end is only known from what follows it

    def encode(self, grid: Grid) -> str:
        return "\n".join("".join(str(c) for c in row) for row in grid)

    def parse_lines(self, lines: list[str]) -> tuple[Grid, int]:
        """Parse a grid from the start of ``lines``; returns it and the number of lines used."""
        if not lines or lines == [""]:
            raise ParseError("empty", "no text")
        rows = [_digit_row(line, i + 1) for i, line in enumerate(lines)]
        return _check_rows(rows), len(lines)

    def decode(self, text: str) -> Grid:
        grid, _ = self.parse_lines(text.split("\n"))
        return grid


_HEADER = re.compile(r"([0-9]+)x([0-9]+)")
_SHAPE_ROW = re.compile(r"([0-9]+) ([0-9]*)")


class ShapeEncoder:
    """arc24 style: header "<h>x<w>", then "<row number 1-based> <digits>" per row: "2x2\\n1 01\\n2 34"."""

    name = "shape"
    self_delimiting = True  # the header says how many rows of how many cells follow

    def encode(self, grid: Grid) -> str:
        h, w = len(grid), len(grid[0]) if grid else 0
        rows = [f"{i + 1} " + "".join(str(c) for c in row) for i, row in enumerate(grid)]
        return "\n".join([f"{h}x{w}", *rows])

    def parse_lines(self, lines: list[str]) -> tuple[Grid, int]:
        """Parse a grid from the start of ``lines``; returns it and the number of lines used (1 + rows)."""
        if not lines or lines == [""]:
            raise ParseError("empty", "no text")
        m = _HEADER.fullmatch(lines[0])
        if m is None:
            if len(lines) == 1 and re.fullmatch(r"[0-9]+x?", lines[0]):
                raise ParseError("truncated", f"incomplete shape header {lines[0]!r}")
            raise ParseError(
                "stray_characters", f"line 1: expected a shape header '<h>x<w>', got {lines[0]!r}"
            )
        h, w = int(m.group(1)), int(m.group(2))
        if h > MAX_SIDE or w > MAX_SIDE:
            raise ParseError("too_large", f"shape {h}x{w}; at most {MAX_SIDE} per side")
        if h == 0 or w == 0:
            raise ParseError("empty", f"shape {h}x{w} has no cells")
        rows: list[list[int]] = []
        for i in range(h):
            line_no = i + 2
            if i + 1 >= len(lines):
                raise ParseError("truncated", f"header says {h} rows, got {len(rows)}")
            line = lines[i + 1]
            rm = _SHAPE_ROW.fullmatch(line)
            if rm is None:
                if line_no == len(lines) and re.fullmatch(r"[0-9]*", line):
                    raise ParseError("truncated", f"line {line_no}: row {i + 1} is incomplete")
                raise ParseError("stray_characters", f"line {line_no}: expected '<row number> <digits>'")
            if int(rm.group(1)) != i + 1:
                raise ParseError(
                    "shape_mismatch", f"line {line_no}: row number {rm.group(1)}, expected {i + 1}"
                )
            row = [ord(ch) - 48 for ch in rm.group(2)]
            if len(row) != w:
                if len(row) < w and line_no == len(lines):
                    raise ParseError("truncated", f"row {i + 1} has {len(row)} cells of {w}")
                raise ParseError("shape_mismatch", f"row {i + 1} has {len(row)} cells, header says {w}")
            rows.append(row)
        return rows, h + 1

    def decode(self, text: str) -> Grid:
        lines = text.split("\n")
        grid, used = self.parse_lines(lines)
        if used != len(lines):
            raise ParseError("stray_characters", f"line {used + 1}: text after the last row")
        return grid


ENCODERS: dict[str, Encoder] = {"minimal": MinimalEncoder(), "shape": ShapeEncoder()}


def get_encoder(encoder: str | Encoder) -> Encoder:
    """Look up an encoder by name (instances pass through); raises ValueError for an unknown name."""
    if isinstance(encoder, str):
        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r}; expected one of {sorted(ENCODERS)}")
        return ENCODERS[encoder]
    return encoder


def _grid_lines(text: str) -> tuple[list[str], bool]:
    """Lines of the grid part of model output, each line's ends stripped, and whether the grid visibly ended.

    Leading whitespace is skipped; the grid is cut at the first blank line or the first line starting with
    '<' (a template marker or special token): then it ended (True). Running out of text is not an end.
    """
    raw = text.lstrip().split("\n")
    lines = []
    for i, line in enumerate(raw):
        line = line.strip(" \t\r")
        if line.startswith("<") or (not line and i < len(raw) - 1):
            return lines, True
        if line:
            lines.append(line)
    return lines, False


def parse_output(text: str, encoder: str | Encoder, *, length_stop: bool = False) -> Grid | ParseError:
    """Parse model output into a grid, tolerating surrounding whitespace and text after the grid's end.

    Returns (never raises) a ParseError on failure. The grid ends at a blank line, at a line starting with
    '<' (e.g. a marker), or, for "shape", after the rows the header announces. ``length_stop``: the
    generation was cut at its token limit; the grid is then accepted only if it is known to be complete
    (a "shape" grid with every announced row, or any grid followed by a blank line or a marker), else it
    is "truncated".
    """
    enc = get_encoder(encoder)
    if not isinstance(text, str):
        return ParseError("empty", f"expected text, got {type(text).__name__}")
    try:
        lines, ended = _grid_lines(text)
        if not lines:
            return ParseError("empty", "no grid text")
        parse_lines = getattr(enc, "parse_lines", None)
        grid = parse_lines(lines)[0] if parse_lines is not None else enc.decode("\n".join(lines))
    except ParseError as e:
        return e
    if length_stop and not (ended or getattr(enc, "self_delimiting", False)):
        return ParseError("truncated", "generation hit its token limit before the grid's end")
    return grid


def build_prompt(train: Sequence[Pair], test_input: Grid, encoder: str = "minimal") -> str:
    """ "<in>\\n{in}\\n<out>\\n{out}\\n" for each train pair, then "<in>\\n{test}\\n<out>\\n"."""
    enc = get_encoder(encoder)
    parts = [f"<in>\n{enc.encode(p.input)}\n<out>\n{enc.encode(p.output)}\n" for p in train]
    parts.append(f"<in>\n{enc.encode(test_input)}\n<out>\n")
    return "".join(parts)


def build_target(output: Grid, encoder: str = "minimal") -> str:
    """The text the model should generate for ``output``: enc(output) + "\\n" (EOS added by tokenization)."""
    return get_encoder(encoder).encode(output) + "\n"


def split_tokens(text: str) -> list[str]:
    """Split prompt/target text into tokens: each marker is one token, every other character one token.

    Raises ValueError on a character outside ALPHABET (the tiny tokenizer's vocabulary).
    """
    tokens: list[str] = []
    i = 0
    while i < len(text):
        for m in MARKERS:
            if text.startswith(m, i):
                tokens.append(m)
                i += len(m)
                break
        else:
            ch = text[i]
            if ch not in ALPHABET:
                raise ValueError(f"character {ch!r} at {i} is not in the ARC alphabet")
            tokens.append(ch)
            i += 1
    return tokens
