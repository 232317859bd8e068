"""Where the SQL the package ships lies: `app/sql/` of the installed wheel, or `sql/`
of the source tree."""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def root() -> Path:
    here = Path(__file__).resolve().parent
    packaged = here / "sql"
    return packaged if (packaged / "init.sql").exists() else here.parent / "sql"


def path(name: str) -> Path:
    """A shipped file, by its path under sql/ (`init.sql`, `report/changes.sql`)."""
    return root() / name


@functools.cache
def query(name: str) -> str:
    """A shipped query as the job sends it: without its comment lines, which are for
    whoever reads the file (and would be read by the server at every run)."""
    lines = path(name).read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("--"))
