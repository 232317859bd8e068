"""The installed package's version, as pip and the image know it: `--version`, the
result line and custom-resource's answer carry it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed


def version() -> str:
    try:
        return installed("aurora-bootstrap")
    except PackageNotFoundError:
        return "unknown (not installed)"
