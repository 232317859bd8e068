"""The RDS CA bundle the image ships: tracked in the repository, checked as `make
ca-bundle` checks what it fetches, and refused by `make image` when it fails."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tools import ca_bundle

ROOT = Path(__file__).resolve().parent.parent


def test_the_tracked_bundle_holds_current_roots_for_every_region_it_covers() -> None:
    report = ca_bundle.check(ca_bundle.TRACKED.read_bytes())
    regions = report["regions"]
    assert isinstance(regions, list) and len(regions) >= 20
    assert {"us-east-1", "eu-west-1", "ap-southeast-2"} <= set(regions)


def _root(region: str, kind: str, days: int) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.NameAttribute(x509.NameOID.COMMON_NAME, f"Amazon RDS {region} Root CA {kind} G1")]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("bundle", "problem"),
    [
        (b"not a certificate", "does not parse"),
        (_root("xx-test-1", "RSA2048", 3650), "xx-test-1 lacks RSA4096, ECC384"),
        (
            b"".join(
                _root("xx-test-1", k, d)
                for k, d in (("RSA2048", 3650), ("RSA4096", 3650), ("ECC384", 5))
            ),
            "xx-test-1 ECC384 G1 expires",
        ),
    ],
    ids=["garbage", "a kind missing", "expiring"],
)
def test_a_bundle_that_is_not_the_real_one_is_refused(bundle: bytes, problem: str) -> None:
    with pytest.raises(ca_bundle.BadBundle, match=problem):
        ca_bundle.check(bundle)


def test_a_stand_in_ca_is_refused_and_make_image_checks_first(tmp_path: Path) -> None:
    stand_in = tmp_path / "stand-in.pem"
    trustme.CA().cert_pem.write_to_path(str(stand_in))
    done = subprocess.run(
        [sys.executable, "-m", "tools.ca_bundle", "check", str(stand_in)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "no current RDS root" in done.stderr
    plan = subprocess.run(
        ["make", "-n", "image", "BASE_IMAGE=base"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert plan.index("tools.ca_bundle check") < plan.index("docker build")
