"""Print the entries of a hashed lock file for the named packages, for an install of
a few of its packages alone with --require-hashes.

    python -m tools.lock_subset requirements-dev.lock pytest iniconfig pluggy ...
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def subset(lock: str, names: set[str]) -> str:
    kept: list[str] = []
    keeping = False
    for line in lock.splitlines():
        start = re.match(r"^([A-Za-z0-9_.\-]+)==", line)
        if start:
            keeping = start.group(1).lower() in names
        elif not line.startswith(" "):
            keeping = False
        if keeping and not line.lstrip().startswith("#"):
            kept.append(line)
    return "\n".join(kept) + "\n"


def main() -> int:
    lock, *names = sys.argv[1:]
    wanted = {n.lower() for n in names}
    text = subset(Path(lock).read_text(), wanted)
    found = {m.lower() for m in re.findall(r"^([A-Za-z0-9_.\-]+)==", text, re.MULTILINE)}
    if found != wanted:
        print(f"lock_subset: not in {lock}: {sorted(wanted - found)}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
