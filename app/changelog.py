"""The changes of a run, kept on disk as they arrive, one JSON object per line.

A run that creates 10,000 users reports about 40,000 changes; held as Python objects
and then as one JSON string they doubled the job's memory. They are written to a
temporary file as the server sends them, and copied from it into the result line.
Where no temporary file can be made (a read-only root file system), they are kept in
memory as text.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

Change = dict[str, object]


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
        """One change, as the JSON text of an object."""
        self._file.write(text.replace("\n", " ") + "\n")
        self._count += 1

    def add_lines(self, block: str) -> None:
        """Changes as JSON objects, one a line (none holding a newline)."""
        self._file.write(block + "\n")
        self._count += block.count("\n") + 1

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
