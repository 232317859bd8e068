"""The process's entry point: stop signals are caught before anything else loads.

Importing the command line and what it needs takes tens of milliseconds; a SIGTERM
in that time used to end the process with no result line.
"""

from __future__ import annotations


def main() -> int:
    from app import interrupt  # noqa: PLC0415 (first, before the heavier imports)

    interrupt.install()
    from app import cli  # noqa: PLC0415

    return cli.main()
