"""A loopback stand-in for the pre-signed S3 URL CloudFormation waits on: it records
each PUT (headers and body) and answers as a test tells it, also never."""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.conftest import SECRETS

STACK = (
    "arn:aws:cloudformation:us-east-1:123456789012:stack/db/5b0a1e40-9f3c-11ef-8a51-0a1b2c3d4e5f"
)
TOKEN = "arn:aws:lambda:us-east-1:123456789012:function:db-AuroraBootstrapLauncher"


def request(
    url: str, request_type: str = "Create", physical: str | None = None, **properties: Any
) -> dict[str, Any]:
    """A custom resource request for Custom::AuroraBootstrap, as CloudFormation sends it."""
    sent: dict[str, Any] = {
        "RequestType": request_type,
        "ServiceToken": TOKEN,
        "ResponseURL": url,
        "StackId": STACK,
        "RequestId": str(uuid.uuid4()),
        "LogicalResourceId": "DatabaseUsers",
        "ResourceType": "Custom::AuroraBootstrap",
        "ResourceProperties": {"ServiceToken": TOKEN, **properties},
    }
    if physical is not None:
        sent["PhysicalResourceId"] = physical
    return sent


@dataclass
class Put:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class Replies:
    statuses: list[int] = field(default_factory=list)  # answered in turn, then 200
    silent: bool = False  # read the request, never answer
    puts: list[Put] = field(default_factory=list)


class ResponseServer:
    def __init__(self) -> None:
        self.replies = Replies()
        self.release = threading.Event()
        replies, release = self.replies, self.release

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                headers = {k.lower(): v for k, v in self.headers.items()}
                replies.puts.append(Put(self.path, headers, self.rfile.read(length)))
                if replies.silent:
                    release.wait(120)
                    return
                status = replies.statuses.pop(0) if replies.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        # A signature like S3's: a capability, so it must never be logged.
        self.signature = f"X-Amz-Signature={secrets.token_hex(32)}"
        SECRETS.add(self.signature)
        self.url = (
            f"http://127.0.0.1:{self.httpd.server_port}/bucket/stack/resource?{self.signature}"
        )

    @property
    def puts(self) -> list[Put]:
        return self.replies.puts

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
