"""Remove from the image's virtual environment what the job never runs.

Run in the build stage, after the install: setuptools, pkg_resources and
_distutils_hack (python -m venv puts them there), botocore's data for every service
but app.services.kept() (the job's own and those botocore's credential and token
providers make clients for: web identity, assume-role and SSO profiles, `aws login`),
the examples in what is kept, and boto3's resource models (the job uses clients
only). Prints what it kept, what it removed and how much.
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path

from app.services import kept


def size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    site = Path(sysconfig.get_paths()["purelib"])
    doomed = [
        *site.glob("setuptools"),
        *site.glob("setuptools-*.dist-info"),
        *site.glob("pkg_resources"),
        *site.glob("_distutils_hack"),
        *site.glob("distutils-precedence.pth"),
        site / "boto3" / "data",
    ]
    data = site / "botocore" / "data"
    services = kept(site / "botocore")
    missing = [s for s in services if not (data / s).is_dir()]
    if missing:
        print(f"trim-image: botocore has no data for {missing}", file=sys.stderr)
        return 1
    print(f"trim-image: keeping botocore's data for {', '.join(services)}", file=sys.stderr)
    doomed += [p for p in data.iterdir() if p.is_dir() and p.name not in services]
    doomed += [p for s in services for p in (data / s).rglob("examples-1.json")]
    freed = 0
    for path in doomed:
        if not path.exists():
            continue
        freed += size(path)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    print(f"trim-image: removed {len(doomed)} paths, {freed / 1e6:.1f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
