"""The AWS services whose botocore data the image keeps (`docker/trim-image.py`):
the ones the job makes clients for, and the ones botocore's own credential and token
providers make clients for.

SERVICES is the job's: a test derives it from the code (every `.client("...")`) and
holds this list to it. The providers' are derived from botocore's own code when the
image is built, so that a provider a later botocore adds (as `signin` came with
`aws login`) is never trimmed away unnoticed.
"""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = ("ecs", "logs", "rds", "rds-data", "secretsmanager", "ssm", "stepfunctions")

# botocore's modules that resolve credentials and tokens, and the calls through which
# they make a client: the service is their first string argument.
_PROVIDER_MODULES = ("credentials.py", "tokens.py")
_CLIENT_MAKERS = ("client_creator", "_client_creator", "create_client", "create_nested_client")


def provider_services(botocore_dir: Path | None = None) -> tuple[str, ...]:
    """Every service botocore's credential and token providers make a client for, read
    from their source (assume-role and web identity: sts; IAM Identity Center: sso
    and sso-oidc; `aws login`: signin)."""
    if botocore_dir is None:
        import botocore  # noqa: PLC0415 (only the image build and its test ask)

        botocore_dir = Path(botocore.__file__).parent
    found: set[str] = set()
    for name in _PROVIDER_MODULES:
        tree = ast.parse((botocore_dir / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called not in _CLIENT_MAKERS:
                continue
            first = next(
                (
                    a.value
                    for a in node.args
                    if isinstance(a, ast.Constant) and isinstance(a.value, str)
                ),
                None,
            )
            if first is not None:
                found.add(first)
    return tuple(sorted(found))


def kept(botocore_dir: Path | None = None) -> tuple[str, ...]:
    """What the image keeps: the job's services and the providers'."""
    return tuple(sorted({*SERVICES, *provider_services(botocore_dir)}))
