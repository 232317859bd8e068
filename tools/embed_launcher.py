"""Write deploy/launcher.py into the template as the launcher's inline code, so that
the template deploys as it is (no packaging step) and the file stays the one source.

python -m tools.embed_launcher [--check]: --check fails when the template's copy
differs from the file."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "cloudformation.yaml"
LAUNCHER = ROOT / "deploy" / "launcher.py"
INDENT = " " * 10
# The literal block after the marker, to the first line indented less than its body.
_BLOCK = re.compile(
    r"(# deploy/launcher\.py, embedded by `make template`\.\n\s*ZipFile: \|\n)((?:(?:"
    + INDENT
    + r".*)?\n)*)"
)


def embedded(template: str, code: str) -> str:
    body = "".join(INDENT + line if line.strip() else "\n" for line in code.splitlines(True))
    found = _BLOCK.search(template)
    if found is None:
        raise SystemExit(f"{TEMPLATE}: the launcher's ZipFile marker is missing")
    # Blank lines the block swallowed past its end belong to what follows it.
    trailing = len(found.group(2)) - len(found.group(2).rstrip("\n")) - 1
    return template[: found.start(2)] + body + "\n" * max(trailing, 0) + template[found.end(2) :]


def main(argv: list[str]) -> int:
    template = TEMPLATE.read_text()
    wanted = embedded(template, LAUNCHER.read_text())
    if "--check" in argv:
        if wanted != template:
            print(f"{TEMPLATE} does not carry {LAUNCHER}: run make template", file=sys.stderr)
            return 1
        return 0
    if wanted != template:
        TEMPLATE.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
