"""CFN_REQUEST: the custom resource request CloudFormation sent the launcher, as the
worker (`custom-resource`) reads it, and the settings its properties override."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from app.errors import ConfigError

SETTING = "CFN_REQUEST"
REQUEST_TYPES = ("Create", "Update", "Delete")
# Resource property -> the setting it overrides for this run.
# ClusterId and SecretArn let the resource stand in the stack that makes the cluster.
PROPERTIES = {
    "IamUsers": "IAM_USERS",
    "GroupRoles": "GROUP_ROLES",
    "Prune": "PRUNE",
    "ClusterId": "DB_CLUSTER_ID",
    "SecretArn": "DB_SECRET_ARN",
}
# Where the launcher's own token is: CloudFormation adds it to every request.
# CloudFormation's own (ServiceToken, ServiceTimeout) and the launcher's (Triggers).
IGNORED = frozenset({"ServiceToken", "ServiceTimeout", "Triggers"})
_REQUIRED = ("RequestType", "StackId", "RequestId", "LogicalResourceId")
# Where the launcher keeps the ResponseURL instead of the request (an SSM parameter):
# the task's overrides, which others read, never hold it.
URL_PARAMETER = "ResponseURLParameter"


@dataclass(frozen=True)
class Request:
    request_type: str
    response_url: str = field(repr=False)  # pre-signed: whoever holds it can answer
    stack_id: str
    request_id: str
    logical_resource_id: str
    physical_resource_id: str | None
    properties: Mapping[str, Any]
    # The SSM parameter holding the ResponseURL, when the launcher kept it there; the
    # URL is then read from it (`with_url`) and the parameter deleted once answered.
    url_parameter: str | None = None
    # An Update the launcher sent while the stack rolls back (the old properties).
    rollback: bool = False

    def with_url(self, url: str) -> Request:
        return dataclasses.replace(self, response_url=url)

    @property
    def resource_id(self) -> str:
        """The PhysicalResourceId to answer with: the request's own on Update and
        Delete; on Create one derived from the stack and the logical id, so that every
        Create of one resource, retried or not, names it the same and no Update ever
        looks like a replacement (which would make CloudFormation delete the old one)."""
        if self.physical_resource_id:
            return self.physical_resource_id
        digest = hashlib.sha256(f"{self.stack_id}/{self.logical_resource_id}".encode())
        return f"aurora-bootstrap-{self.logical_resource_id}-{digest.hexdigest()[:16]}"

    @property
    def response_where(self) -> str:
        """The response URL without its query (the signature): what may be logged."""
        parts = urlsplit(self.response_url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"

    @property
    def response_signature(self) -> str:
        return urlsplit(self.response_url).query


def parse(text: str | None) -> Request:
    """The request, or a ConfigError naming CFN_REQUEST (then no answer can be sent:
    without a ResponseURL there is nowhere to send it)."""
    if text is None or not text.strip():
        raise ConfigError(SETTING, "not set: the custom resource request, as JSON")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(SETTING, f"not valid JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(data, dict):
        raise ConfigError(SETTING, "must be a JSON object (the custom resource request)")
    where = URL_PARAMETER if data.get(URL_PARAMETER) else "ResponseURL"
    missing = [
        key
        for key in (_REQUIRED[0], where, *_REQUIRED[1:])
        if not isinstance(data.get(key), str) or not data[key]
    ]
    if missing:
        raise ConfigError(SETTING, f"missing or not a string: {', '.join(missing)}")
    if data["RequestType"] not in REQUEST_TYPES:
        raise ConfigError(
            SETTING, f"RequestType {data['RequestType']!r} is not one of {', '.join(REQUEST_TYPES)}"
        )
    if where == "ResponseURL" and urlsplit(data["ResponseURL"]).scheme not in ("https", "http"):
        raise ConfigError(SETTING, "ResponseURL must be an http(s) URL")
    properties = data.get("ResourceProperties") or {}
    if not isinstance(properties, dict):
        raise ConfigError(SETTING, "ResourceProperties must be an object")
    physical = data.get("PhysicalResourceId")
    return Request(
        request_type=data["RequestType"],
        response_url=data.get("ResponseURL") or "",
        stack_id=data["StackId"],
        request_id=data["RequestId"],
        logical_resource_id=data["LogicalResourceId"],
        physical_resource_id=physical if isinstance(physical, str) and physical else None,
        properties=properties,
        url_parameter=data.get(URL_PARAMETER) or None,
        rollback=data.get("Rollback") is True,
    )


def _property(name: str) -> str:
    return f"ResourceProperties.{name}"


def _as_setting(name: str, value: Any) -> str:
    """A property's value as its variable would hold it. CloudFormation passes scalars
    as strings, lists and objects as JSON."""
    if isinstance(value, str):
        return value
    if name == "Prune" and isinstance(value, bool):
        return "true" if value else "false"
    if name == "IamUsers" and isinstance(value, list):
        if all(isinstance(entry, str) for entry in value):
            return ",".join(value)  # ["app_user:app_readwrite", ...]
        return json.dumps(value)  # [{"name": ..., "roles": [...]}, ...]
    if name == "GroupRoles" and isinstance(value, dict):
        return json.dumps(value)
    shapes = {
        "IamUsers": "a string or a list",
        "GroupRoles": "a string or an object",
        "Prune": '"true" or "false"',
        "ClusterId": "a string (the cluster's identifier)",
        "SecretArn": "a string (the master secret's ARN)",
    }
    raise ConfigError(_property(name), f"must be {shapes[name]}, not {type(value).__name__}")


def overrides(request: Request) -> dict[str, str]:
    """The settings the request's properties override; an unknown property fails it."""
    unknown = sorted(set(request.properties) - set(PROPERTIES) - IGNORED)
    if unknown:
        raise ConfigError(
            _property(unknown[0]),
            f"unknown propert{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; "
            f"allowed: {', '.join(PROPERTIES)} (and {', '.join(sorted(IGNORED))})",
        )
    return {
        PROPERTIES[name]: _as_setting(name, value)
        for name, value in request.properties.items()
        if name in PROPERTIES
    }


def name_property(error: ConfigError, overridden: Mapping[str, str]) -> ConfigError:
    """A settings error about a value that came from a property, naming that property
    (the user wrote IamUsers in a template, not IAM_USERS)."""
    by_setting = {setting: name for name, setting in PROPERTIES.items()}
    if error.setting in overridden and error.setting in by_setting:
        return ConfigError(_property(by_setting[error.setting]), str(error))
    return error
