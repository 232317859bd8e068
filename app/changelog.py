"""The changes of a run, kept on disk as they arrive, one JSON object per line.

Changes alike but for one name are one entry that lists the names and their count
(sql/report/changes.sql): 10,000 new users are a few entries, each naming them all.
The entries are written to a temporary file as the server sends them, and copied from
it into the result line, so that the job's memory holds no more than one of them.
Where no temporary file can be made (a read-only root file system), they are kept in
memory as text. The log's length is the number of changes, not of entries.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

Change = dict[str, object]


def _changes_in(text: str) -> int:
    """How many changes an entry stands for: its count, where it has one."""
    if '"count"' not in text:
        return 1
    count = json.loads(text).get("count", 1)
    return count if isinstance(count, int) else 1


def _spool() -> IO[str]:
    try:
        return tempfile.TemporaryFile("w+", encoding="utf-8")
    except OSError:
        return io.StringIO()


class ChangeLog:
    def __init__(self) -> None:
        self._file = _spool()
        self._count = 0

    def add_json(self, text: str) -> None:
        """One entry, as the JSON text of an object."""
        self._file.write(text.replace("\n", " ") + "\n")
        self._count += _changes_in(text)

    def add_lines(self, block: str) -> None:
        """Entries as JSON objects, one a line (none holding a newline)."""
        self._file.write(block + "\n")
        self._count += sum(_changes_in(line) for line in block.split("\n"))

    def add(self, change: Change) -> None:
        self.add_json(json.dumps(change, separators=(",", ":"), ensure_ascii=False))

    def extend(self, other: ChangeLog) -> None:
        for text in other:
            self.add_json(text)

    def where(self, keep: Callable[[Change], bool]) -> ChangeLog:
        """The changes `keep` is true of, in order."""
        kept = ChangeLog()
        for text in self:
            if keep(json.loads(text)):
                kept.add_json(text)
        return kept

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[str]:
        """The JSON text of each change, in order."""
        self._file.seek(0)
        for line in self._file:
            yield line.rstrip("\n")
        self._file.seek(0, io.SEEK_END)

    def as_list(self) -> list[Change]:
        return [json.loads(text) for text in self]
