"""init.sql as a list of statements, each knowing the line of the file it starts on.

The job sends init.sql one statement at a time so that a failure can be pinned to a
line of the file: the server reports positions relative to the statement it ran, and
PL/pgSQL errors by line of the DO body. A small lexer is enough to split PostgreSQL
text as psql does (quotes, dollar quotes, comments, parentheses, and the BEGIN ATOMIC
bodies of SQL-standard functions); it adds nothing to start-up time.

The whole file runs inside the job's one transaction, under its lock. A statement
that would end that transaction, or that PostgreSQL refuses to run inside one, is
refused while loading, before any connection, as is a psql meta-command: psql would
run it, the server would not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from app.errors import ConfigError

SETTING = "INIT_SQL"
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9\x80-\U0010ffff]*)?\$")
_IDENTIFIER = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9$\x80-\U0010ffff]*")
_PLPGSQL_LINE = re.compile(r"PL/pgSQL function inline_code_block line (\d+)")

# Leading words of statements that end or escape the job's transaction, and of those
# PostgreSQL will not run inside a transaction block.
_ENDS_TRANSACTION = (
    ("begin",),
    ("start", "transaction"),
    ("commit",),
    ("end",),
    ("abort",),
    ("prepare", "transaction"),
)
_NOT_IN_TRANSACTION = (
    ("vacuum",),
    ("create", "database"),
    ("drop", "database"),
    ("create", "tablespace"),
    ("drop", "tablespace"),
    ("alter", "system"),
    ("discard", "all"),
    ("reindex", "system"),
    ("reindex", "database"),
    ("create", "subscription"),
    ("drop", "subscription"),
)
# CREATE INDEX, DROP INDEX, REINDEX and DETACH PARTITION ... CONCURRENTLY.
_CONCURRENT_KINDS = frozenset({"create", "drop", "reindex", "alter"})


@dataclass(frozen=True)
class Statement:
    text: str
    line: int  # line of the file where the statement starts
    body_line: int | None  # line where its first dollar-quoted body starts, if any
    words: tuple[str, ...] = ()  # its keywords and identifiers, lower case, in order
    top: tuple[str, ...] = ()  # the same, outside parentheses

    def line_of(self, position: int) -> int:
        """File line of a 1-based character position within the statement."""
        return self.line + self.text.count("\n", 0, max(position - 1, 0))


@dataclass(frozen=True)
class Script:
    path: Path
    statements: tuple[Statement, ...]

    @property
    def last_line(self) -> int:
        """The line where the last statement ends: where the script's transaction work
        ends, which deferred constraints are checked at."""
        last = self.statements[-1] if self.statements else None
        return 1 if last is None else last.line + last.text.rstrip().count("\n")

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


@dataclass
class _Span:
    start: int
    end: int = 0
    body: int | None = None  # offset of the first dollar-quoted body
    code: int | None = None  # offset of the first character that is not a comment
    words: tuple[str, ...] = ()
    top: tuple[str, ...] = ()  # the words outside parentheses
    meta: int | None = None  # offset of a psql meta-command (a backslash outside quotes)


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


def _in_function_definition(words: list[str]) -> bool:
    # psql's rule: the statement starts CREATE [OR REPLACE] {FUNCTION|PROCEDURE}.
    head = words[:4]
    return head[:1] == ["create"] and (
        head[1:2] in (["function"], ["procedure"])
        or (head[1:3] == ["or", "replace"] and head[3:4] in (["function"], ["procedure"]))
    )


def _skip_comment(text: str, i: int) -> int | None:
    """Index past the comment or white space at i; None if there is none."""
    if text.startswith("--", i):
        newline = text.find("\n", i)
        return len(text) if newline < 0 else newline + 1
    if text.startswith("/*", i):
        return _skip_block_comment(text, i)
    return i + 1 if text[i].isspace() else None


def _skip_literal(text: str, i: int) -> tuple[int, int | None] | None:
    """(index past it, offset of its body if dollar-quoted) for a quoted literal or
    identifier at i; None if there is none."""
    ch = text[i]
    if ch == "'":
        # E'...' only where the E stands alone: my_e'...' is a typed literal.
        escaped = i > 0 and text[i - 1] in "eE" and not _in_word(text, i - 1)
        return _skip_quoted(text, i, "'", escaped), None
    if ch == '"':
        return _skip_quoted(text, i, '"', False), None
    if ch == "$" and (tag := _DOLLAR_TAG.match(text, i)) and not _in_word(text, i):
        close = text.find(tag.group(), tag.end())
        if close < 0:
            raise ValueError(f"unterminated dollar quote {tag.group()}")
        return close + len(tag.group()), tag.end()
    return None


def _atomic_depth(words: list[str], depth: int) -> int:
    """BEGIN ATOMIC ... END nesting after the word just added to `words`."""
    if not _in_function_definition(words):
        return depth
    word = words[-1]
    if word == "begin" or (word == "case" and depth):  # CASE ... END inside a body
        return depth + 1
    if word == "end" and depth:
        return depth - 1
    return depth


def split(text: str) -> list[_Span]:
    """The statements of `text`, by character offset, split where psql splits them."""
    spans: list[_Span] = []
    span, words, top = _Span(0), [], []
    parens = depth = 0
    i = 0
    while i < len(text):
        skipped = _skip_comment(text, i)
        if skipped is not None:
            i = skipped
            continue
        if span.code is None:
            span.code = i
        literal = _skip_literal(text, i)
        ch = text[i]
        if literal is not None:
            i, body = literal
            span.body = span.body if span.body is not None else body
        elif ch == "\\":
            span.meta = i if span.meta is None else span.meta
            i += 1
        elif (word := _IDENTIFIER.match(text, i)) and not _in_word(text, i):
            words.append(word.group().lower())
            if parens == 0:
                top.append(words[-1])
                depth = _atomic_depth(words, depth)
            i = word.end()
        elif ch in "()":
            parens = max(parens + (1 if ch == "(" else -1), 0)
            i += 1
        elif ch == ";" and parens == 0 and depth == 0:
            span.end, span.words, span.top = i + 1, tuple(words), tuple(top)
            spans.append(span)
            span, words, top = _Span(i + 1), [], []
            i += 1
        else:
            i += 1
    span.end, span.words, span.top = len(text), tuple(words), tuple(top)
    spans.append(span)
    return spans


def _in_word(text: str, i: int) -> bool:
    # `$1`-style parameters and identifiers containing `$` are not dollar quotes.
    return i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_$")


def _escape(words: tuple[str, ...], top: tuple[str, ...]) -> str | None:
    """What, in a statement with these words (all, and those outside parentheses),
    cannot run inside the job's transaction; None when it can."""
    if words[:2] in (("commit", "prepared"), ("rollback", "prepared")):
        return " ".join(words[:2]).upper()
    if words[:1] == ("rollback",):
        # ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] s stays inside.
        rest = words[2:] if words[1:2] in (("work",), ("transaction",)) else words[1:]
        return None if rest[:1] == ("to",) else "ROLLBACK"
    leads = [lead for lead in _ENDS_TRANSACTION + _NOT_IN_TRANSACTION if words[: len(lead)] == lead]
    if leads:
        return " ".join(leads[0]).upper()
    if words[:1] and words[0] in _CONCURRENT_KINDS and "concurrently" in words:
        return f"{words[0].upper()} ... CONCURRENTLY"
    # CLUSTER without a table (every table) cannot run in a transaction block.
    if top[:1] == ("cluster",) and set(top[1:]) <= {"verbose"}:
        return "CLUSTER without a table"
    return None


def _unsafe_setting(top: tuple[str, ...]) -> str | None:
    """What, in a SET or RESET with these words, would break the job's own reading of
    the script or of its transaction; None when nothing does."""
    if top[:1] not in (("set",), ("reset",)):
        return None
    name = top[2:3] if top[1:2] in (("session",), ("local",)) else top[1:2]
    if top[:2] == ("reset", "all"):
        return (
            "RESET ALL would clear the settings the job passes init.sql its inputs in, and its own"
        )
    if name == ("standard_conforming_strings",):
        return (
            "standard_conforming_strings is kept on: the job splits init.sql into "
            "statements as PostgreSQL reads it with that setting on"
        )
    return None


def _check(path: Path, text: str, spans: list[_Span], statements: list[Statement]) -> None:
    for span in spans:
        if span.meta is not None:
            line = text.count("\n", 0, span.meta) + 1
            command = text[span.meta :].split(None, 1)[0] if text[span.meta :].strip() else "\\"
            raise ConfigError(
                SETTING,
                f"{path}:{line}: {command} is a psql meta-command: the job sends SQL to the "
                "server, which has no such command; use plain SQL",
            )
    for statement in statements:
        what = _escape(statement.words, statement.top)
        if what is not None:
            raise ConfigError(
                SETTING,
                f"{path}:{statement.line}: {what} cannot run in init.sql: the job runs the "
                "whole file in one transaction under its lock, and this statement would "
                "end that transaction or cannot run inside one",
            )
        unsafe = _unsafe_setting(statement.top)
        if unsafe is not None:
            raise ConfigError(SETTING, f"{path}:{statement.line}: {unsafe}")


def parse(path: Path, text: str) -> Script:
    try:
        spans = split(text)
    except ValueError as exc:
        raise ConfigError(SETTING, f"{path}: {exc}") from None
    statements = []
    for span in spans:
        if span.code is None or text[span.code : span.end].strip() == ";":
            continue  # only comments and white space
        statements.append(
            Statement(
                text=text[span.code : span.end],
                line=text.count("\n", 0, span.code) + 1,
                body_line=None if span.body is None else text.count("\n", 0, span.body) + 1,
                words=span.words,
                top=span.top,
            )
        )
    _check(path, text, spans, statements)
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
