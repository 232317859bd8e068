"""Benchmark: iam-auth-server's login rate with fresh tokens, and its memory.

    python -m bench.standin [--seconds 10] [--clients 4] [--out bench/out/standin.md]

Real clients sign a fresh token for each login (as `generate-db-auth-token` does) and
open one connection per login, as PostgreSQL's ldap authentication does. Tokens are
signed beforehand, so that the client's signing is not measured. The server runs as
a subprocess on loopback; its RSS is read from /proc at the start and the end, and
the rate is reported per second of the run, so that a rate that falls shows.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from unittest import mock

import boto3
import botocore.auth

from app.iamauth import ldap as ldapbind
from tools.localpg import free_port

REGION = "eu-west-1"
KEY_ID, SECRET = "AKIABENCHSTANDIN0001", "bench-standin-secret"
ENDPOINT = "db.example.internal:5432"


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
    return kb / 1024


def _login(port: int, user: str, token: str) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(ldapbind.bind_request(1, f"cn={user},dc=rds-iam", token))
        data = b""
        while (size := ldapbind.message_size(data)) is None:
            chunk = sock.recv(4096)
            if not chunk:
                return False
            data += chunk
        return ldapbind.result_of(data[:size])[1] == ldapbind.SUCCESS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=40_000)
    parser.add_argument("--out", type=Path, default=Path("bench/out/standin.md"))
    args = parser.parse_args()

    client = boto3.client(
        "rds", region_name=REGION, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET
    )
    host, port_text = ENDPOINT.split(":")
    # Fresh tokens: each signed for its own second (within the last ten minutes, all
    # still valid) and user, so that no two are alike, as no two real clients' are.
    now = datetime.datetime.now(datetime.UTC)
    tokens = []
    for i in range(args.tokens):
        signed_at = now - datetime.timedelta(seconds=i % 600)
        with mock.patch.object(botocore.auth, "get_current_datetime", return_value=signed_at):
            tokens.append(
                (
                    f"app_{i // 600}",
                    client.generate_db_auth_token(
                        DBHostname=host, Port=int(port_text), DBUsername=f"app_{i // 600}"
                    ),
                )
            )
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="aurora-bootstrap-standin-")) / "server.log"
    server = subprocess.Popen(
        ["aurora-bootstrap", "iam-auth-server"],
        env={
            "PATH": os.environ["PATH"],
            "IAM_AUTH_LISTEN": f"127.0.0.1:{port}",
            "IAM_AUTH_ENDPOINT": ENDPOINT,
            "IAM_AUTH_KEYS": f"{KEY_ID}:{SECRET}",
            "AWS_REGION": REGION,
        },
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    try:
        while "iam_auth_server_listening" not in log.read_text():
            time.sleep(0.05)
        rss_start = _rss_mb(server.pid)
        done: list[float] = []
        failures = 0
        lock = threading.Lock()
        stop_at = time.monotonic() + args.seconds
        started = time.monotonic()

        def worker(k: int) -> None:
            nonlocal failures
            i = k
            while time.monotonic() < stop_at and i < len(tokens):
                ok = _login(port, *tokens[i])
                with lock:
                    if ok:
                        done.append(time.monotonic() - started)
                    else:
                        failures += 1
                i += args.clients

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rss_end = _rss_mb(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    per_second = [0] * int(args.seconds + 1)
    for at in done:
        per_second[min(int(at), len(per_second) - 1)] += 1
    lines = [
        "# iam-auth-server: fresh-token logins",
        "",
        f"{len(done)} logins in {args.seconds:g} s from {args.clients} clients "
        f"(one connection per login), {failures} refused or dropped; "
        f"server RSS {rss_start:.1f} MB at the start, {rss_end:.1f} MB at the end.",
        "",
        "| second | logins |",
        "|---|---|",
        *(f"| {i + 1} | {n} |" for i, n in enumerate(per_second[: int(args.seconds)])),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
