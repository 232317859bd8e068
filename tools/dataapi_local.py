"""The RDS Data API for the tests and the benchmark: data-api-local (npm) over a real
PostgreSQL server, behind a proxy that scripts what AWS does and the emulator does not.

The emulator (tools/dataapi/server.js, which says where it is brought in line with
AWS) keeps a real transaction per transactionId on a session of its own, logs in as
the master it was started with (it reads no secret), and has none of AWS's limits.
The proxy adds, when a test asks: DatabaseResumingException (a cluster waking up),
throttling, an answer lost after the call was carried out, a call that ends at the
API's 45 s while its statement runs on, and AWS's 1 MiB limit on a response.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tools import localpg
from tools.localpg import free_port
from tools.loopback import LoopbackHttp, reply

# The operations, by the path of their REST call.
OPERATIONS = {
    "/BeginTransaction": "BeginTransaction",
    "/Execute": "ExecuteStatement",
    "/CommitTransaction": "CommitTransaction",
    "/RollbackTransaction": "RollbackTransaction",
}
RESPONSE_LIMIT = 1024 * 1024
TOO_LARGE = "Database returned more than the allowed response size limit"


@dataclass
class Script:
    """What the proxy does; tests change it between and during runs."""

    calls: list[str] = field(default_factory=list)  # each operation, in order
    statements: list[str] = field(default_factory=list)  # each ExecuteStatement's SQL
    # operation -> how many of its next calls are answered with (status, code) instead
    refuse: dict[str, tuple[int, str, int]] = field(default_factory=dict)
    # operation -> how many of its next answers are lost (the call was carried out)
    lose: dict[str, int] = field(default_factory=dict)
    # SQL text that, once forwarded, is answered as a call that timed out at 45 s
    time_out: list[str] = field(default_factory=list)
    # AWS's limit on a response: off unless a test turns it on
    response_limit: int | None = None
    refused: dict[str, int] = field(default_factory=dict)

    def reset(self) -> None:
        self.calls.clear()
        self.statements.clear()
        self.refuse.clear()
        self.lose.clear()
        self.time_out.clear()
        self.response_limit = None
        self.refused.clear()


def _error(message: str) -> bytes:
    return json.dumps({"message": message}).encode()


class DataApiProxy:
    def __init__(self, upstream_port: int) -> None:
        self.script = Script()
        script, lock = self.script, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                operation = OPERATIONS.get(self.path, self.path)
                request = json.loads(body or b"{}")
                with lock:
                    script.calls.append(operation)
                    if operation == "ExecuteStatement":
                        script.statements.append(str(request.get("sql", "")))
                    refusal = script.refuse.get(operation)
                    if refusal is not None:
                        status, code, left = refusal
                        if left <= 1:
                            del script.refuse[operation]
                        else:
                            script.refuse[operation] = (status, code, left - 1)
                        script.refused[code] = script.refused.get(code, 0) + 1
                if refusal is not None:
                    self._answer(status, code, _error(f"emulated {code}"))
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                upstream.request("POST", self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                error_type = response.getheader("x-amzn-ErrorType")
                upstream.close()
                with lock:
                    lost = script.lose.get(operation, 0) > 0
                    if lost:
                        script.lose[operation] -= 1
                    timed_out = operation == "ExecuteStatement" and any(
                        t in str(request.get("sql", "")) for t in script.time_out
                    )
                    limit = script.response_limit
                if lost:
                    # Carried out, and its answer never comes: the connection ends.
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if timed_out and response.status == 200:
                    code = "StatementTimeoutException"
                    self._answer(400, code, _error("The statement ran past 45 s"))
                    return
                if limit is not None and response.status == 200 and len(data) > limit:
                    self._answer(400, "BadRequestException", _error(TOO_LARGE))
                    return
                self._answer(response.status, error_type, data)

            def _answer(self, status: int, code: str | None, data: bytes) -> None:
                headers = {"Content-Type": "application/json"}
                if code:
                    headers["x-amzn-ErrorType"] = code
                reply(self, status, headers, data)

        self._http = LoopbackHttp(Handler)
        self.url = self._http.url

    def stop(self) -> None:
        self._http.stop()


class DataApiEmulator:
    """data-api-local logged in to `server` as its master, and the proxy before it."""

    def __init__(self, server: localpg.LocalPostgres, node_script: str) -> None:
        self.port = free_port()
        args = [
            "node",
            node_script,
            str(self.port),
            "127.0.0.1",
            str(server.port),
            localpg.MASTER_USER,
            server.master_password,
        ]
        if server.tls is not None:
            args.append(str(server.tls.ca_pem))
        self._proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 30
        output = self._proc.stdout
        if output is None:
            raise RuntimeError("data-api-local's output is not a pipe")
        while (line := output.readline().strip()) != "ready":
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"data-api-local did not start: {line}")
        self.proxy = DataApiProxy(self.port)
        self.url = self.proxy.url
        self.script = self.proxy.script

    def stop(self) -> None:
        self.proxy.stop()
        self._proc.terminate()
        self._proc.wait(timeout=10)
