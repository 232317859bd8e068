"""init.sql as a list of statements, each knowing the line of the file it starts on.

The job sends init.sql one statement at a time so that a failure can be pinned to a
line of the file: the server reports positions relative to the statement it ran, and
PL/pgSQL errors by line of the DO body. A small lexer is enough to split PostgreSQL
text (quotes, dollar quotes, comments); it adds nothing to start-up time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from app.errors import ConfigError

SETTING = "INIT_SQL"
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9\x80-\U0010ffff]*)?\$")
_PLPGSQL_LINE = re.compile(r"PL/pgSQL function inline_code_block line (\d+)")


@dataclass(frozen=True)
class Statement:
    text: str
    line: int  # line of the file where the statement starts
    body_line: int | None  # line where its first dollar-quoted body starts, if any

    def line_of(self, position: int) -> int:
        """File line of a 1-based character position within the statement."""
        return self.line + self.text.count("\n", 0, max(position - 1, 0))


@dataclass(frozen=True)
class Script:
    path: Path
    statements: tuple[Statement, ...]

    def error_line(self, statement: Statement, position: int | None, context: str | None) -> int:
        """Best file line for an error the server raised while running `statement`."""
        if position:
            return statement.line_of(position)
        if context and statement.body_line is not None:
            lines = _PLPGSQL_LINE.findall(context)
            if lines:
                # The outermost frame is the DO block itself: the last one listed.
                return statement.body_line + int(lines[-1]) - 1
        return statement.line


def _skip_quoted(text: str, i: int, quote: str, backslashes: bool) -> int:
    """Index just past the closing quote of a literal or identifier opened at i."""
    j = i + 1
    while j < len(text):
        ch = text[j]
        if backslashes and ch == "\\":
            j += 2
            continue
        if ch == quote:
            if j + 1 < len(text) and text[j + 1] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    raise ValueError(f"unterminated {quote}-quoted text")


def _skip_block_comment(text: str, i: int) -> int:
    depth, j = 0, i
    while j < len(text):
        if text.startswith("/*", j):
            depth, j = depth + 1, j + 2
        elif text.startswith("*/", j):
            depth, j = depth - 1, j + 2
            if depth == 0:
                return j
        else:
            j += 1
    raise ValueError("unterminated /* comment")


def split(text: str) -> list[tuple[int, int, int | None]]:
    """(start, end, first dollar body offset) of each statement, by character offset."""
    spans: list[tuple[int, int, int | None]] = []
    start, i, body = 0, 0, None
    while i < len(text):
        ch = text[i]
        if ch == "-" and text.startswith("--", i):
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline + 1
        elif ch == "/" and text.startswith("/*", i):
            i = _skip_block_comment(text, i)
        elif ch == "'":
            escaped = i > 0 and text[i - 1] in "eE" and not (text[i - 2 : i - 1].isalnum())
            i = _skip_quoted(text, i, "'", escaped)
        elif ch == '"':
            i = _skip_quoted(text, i, '"', False)
        elif ch == "$" and (tag := _DOLLAR_TAG.match(text, i)) and not _in_word(text, i):
            close = text.find(tag.group(), tag.end())
            if close < 0:
                raise ValueError(f"unterminated dollar quote {tag.group()}")
            if body is None:
                body = tag.end()
            i = close + len(tag.group())
        elif ch == ";":
            spans.append((start, i + 1, body))
            start, i, body = i + 1, i + 1, None
        else:
            i += 1
    spans.append((start, len(text), body))
    return spans


def _in_word(text: str, i: int) -> bool:
    # `$1`-style parameters and identifiers containing `$` are not dollar quotes.
    return i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")


def _has_code(fragment: str) -> bool:
    try:
        return any(text.strip() for text in _strip_comments(fragment))
    except ValueError:
        return True


def _strip_comments(fragment: str) -> list[str]:
    parts, i, last = [], 0, 0
    while i < len(fragment):
        if fragment.startswith("--", i):
            parts.append(fragment[last:i])
            newline = fragment.find("\n", i)
            i = last = len(fragment) if newline < 0 else newline + 1
        elif fragment.startswith("/*", i):
            parts.append(fragment[last:i])
            i = last = _skip_block_comment(fragment, i)
        else:
            i += 1
    parts.append(fragment[last:])
    return parts


def parse(path: Path, text: str) -> Script:
    try:
        spans = split(text)
    except ValueError as exc:
        raise ConfigError(SETTING, f"{path}: {exc}") from None
    statements = []
    for start, end, body in spans:
        fragment = text[start:end]
        if not _has_code(fragment.rstrip(";")):
            continue
        lead = len(fragment) - len(fragment.lstrip())
        begin = start + lead
        statements.append(
            Statement(
                text=text[begin:end],
                line=text.count("\n", 0, begin) + 1,
                body_line=None if body is None else text.count("\n", 0, body) + 1,
            )
        )
    return Script(path=path, statements=tuple(statements))


def load(path: Path) -> Script:
    """Read init.sql; an unreadable or non-UTF-8 file is a configuration error."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(SETTING, f"cannot read {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(SETTING, f"{path} is not UTF-8 (byte {exc.start})") from None
    script = parse(path, text)
    if not script.statements:
        raise ConfigError(SETTING, f"{path} holds no SQL statement")
    return script
