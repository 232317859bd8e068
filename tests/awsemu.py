"""The AWS emulator for tests: a moto server, and a proxy in front of it that can
answer throttling errors and run hooks, so that subprocess tests see AWS misbehave
exactly when they ask it to."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import boto3

from tools.localpg import free_port
from tools.loopback import LoopbackHttp, reply

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
_SERVICE_RE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")


def client_env(endpoint: str) -> dict[str, str]:
    """The SDK's own variables for a client of the emulator, and nothing from ~/.aws."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "AKIDEMULATOR",
        "AWS_SECRET_ACCESS_KEY": "emulator-secret-key",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def fargate_network(ec2: Any, prefix: str, subnets: int = 1) -> tuple[str, list[str], str]:
    """A VPC as Fargate needs it, with DNS host names (moto's RunTask names the task's
    ENI by its DNS name, and fails without), `subnets` subnets and a security group:
    (vpc, subnet ids, group id). `prefix` is the CIDR's first two octets."""
    vpc = ec2.create_vpc(CidrBlock=f"{prefix}.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    made = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"{prefix}.{i}.0/24")["Subnet"]["SubnetId"]
        for i in range(1, subnets + 1)
    ]
    group = ec2.create_security_group(GroupName="task", Description="task", VpcId=vpc)["GroupId"]
    return vpc, made, str(group)


class MotoServer:
    def __init__(self, logdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        moto_server = Path(sys.executable).parent / "moto_server"
        self._log = (logdir / "moto.log").open("wb")
        self._proc = subprocess.Popen(
            [str(moto_server), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1).close()  # noqa: S310
                break
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")  # noqa: S310
        urllib.request.urlopen(request, timeout=5).close()  # noqa: S310

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._log.close()


_THROTTLE_BODIES = {
    # JSON protocol services (Secrets Manager)
    "json": (
        "application/x-amz-json-1.1",
        json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}),
    ),
    # query protocol services (RDS)
    "query": (
        "text/xml",
        "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>"
        "<Message>Rate exceeded</Message></Error><RequestId>emulated</RequestId></ErrorResponse>",
    ),
}


@dataclass
class ProxyState:
    """What the proxy does; tests change it between and during runs."""

    throttle: dict[str, int] = field(default_factory=dict)  # service -> calls left to refuse
    throttle_forever: set[str] = field(default_factory=set)
    throttled: dict[str, int] = field(default_factory=dict)  # service -> calls refused
    calls: list[tuple[str, str]] = field(default_factory=list)  # (service, operation)
    bodies: list[bytes] = field(default_factory=list)  # each request's body, in order
    # Called as hook(service, operation) after each forwarded call
    hooks: list[Callable[[str, str], None]] = field(default_factory=list)
    # Called as rewrite(service, operation, body) -> body on each forwarded answer
    rewrites: list[Callable[[str, str, bytes], bytes]] = field(default_factory=list)
    # operation -> calls whose answer is lost: forwarded (AWS acts), then a 503 comes back
    lose_replies: dict[str, int] = field(default_factory=dict)
    # (service, operation) -> an error answered instead of forwarding: (status, code)
    errors: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    # (service, operation) -> how many more times its error is answered (else: always)
    error_times: dict[tuple[str, str], int] = field(default_factory=dict)

    def reset(self) -> None:
        self.throttle.clear()
        self.throttle_forever.clear()
        self.throttled.clear()
        self.calls.clear()
        self.bodies.clear()
        self.hooks.clear()
        self.rewrites.clear()
        self.lose_replies.clear()
        self.errors.clear()
        self.error_times.clear()


class ThrottlingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.state = ProxyState()
        state, lock = self.state, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                match = _SERVICE_RE.search(self.headers.get("Authorization", ""))
                service = match.group(1) if match else "unknown"
                target = self.headers.get("X-Amz-Target", "")
                action = re.search(rb"Action=(\w+)", body)
                operation = (
                    target.split(".")[-1]
                    if target
                    else (action.group(1).decode() if action else "")
                )
                with lock:
                    state.calls.append((service, operation))
                    state.bodies.append(body)
                    refuse = service in state.throttle_forever or state.throttle.get(service, 0) > 0
                    if refuse:
                        if service in state.throttle:
                            state.throttle[service] -= 1
                        state.throttled[service] = state.throttled.get(service, 0) + 1
                if refuse:
                    kind = "json" if target else "query"
                    content_type, text = _THROTTLE_BODIES[kind]
                    self._answer(400, {"Content-Type": content_type}, text.encode())
                    return
                with lock:
                    error = state.errors.get((service, operation))
                    if error is not None and (service, operation) in state.error_times:
                        state.error_times[(service, operation)] -= 1
                        if state.error_times[(service, operation)] <= 0:
                            del state.errors[(service, operation)]
                            del state.error_times[(service, operation)]
                if error is not None:
                    status, code = error
                    body_text = json.dumps({"__type": code, "message": f"emulated {code}"})
                    self._answer(
                        status, {"Content-Type": "application/x-amz-json-1.1"}, body_text.encode()
                    )
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                upstream.request("POST", self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                upstream.close()
                # Hooks run before the caller sees the answer: what they change is in
                # place for its next call, without a race.
                for hook in list(state.hooks):
                    hook(service, operation)
                for rewrite in list(state.rewrites):
                    data = rewrite(service, operation, data)
                with lock:
                    lose = state.lose_replies.get(operation, 0) > 0
                    if lose:
                        state.lose_replies[operation] -= 1
                if lose:
                    lost = {"__type": "ServiceUnavailableException", "message": "reply lost"}
                    self._answer(
                        503,
                        {"Content-Type": "application/x-amz-json-1.1"},
                        json.dumps(lost).encode(),
                    )
                    return
                self._answer(
                    response.status,
                    {
                        k: v
                        for k, v in response.getheaders()
                        if k.lower() not in ("content-length", "transfer-encoding", "connection")
                    },
                    data,
                )

            def _answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
                reply(self, status, headers, data)

        self._http = LoopbackHttp(Handler)
        self.url = self._http.url

    def stop(self) -> None:
        self._http.stop()


class Emulator:
    """moto behind the proxy: the job talks to `url`; tests set up through `admin`."""

    def __init__(self, logdir: Path) -> None:
        self.moto = MotoServer(logdir)
        self.proxy = ThrottlingProxy(self.moto.port)
        self.url = self.proxy.url
        self.state = self.proxy.state

    def admin(self, service: str, region: str = REGION) -> Any:
        """A client straight to moto: set-up calls are never throttled or counted."""
        env = client_env(self.moto.url)
        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.moto.url,
            region_name=region,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )

    def reset(self) -> None:
        self.moto.reset()
        self.state.reset()

    def stop(self) -> None:
        self.proxy.stop()
        self.moto.stop()
