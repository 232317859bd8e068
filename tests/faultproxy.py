"""A TCP proxy that misbehaves on request, between the job and PostgreSQL.

- refuse_for(seconds): nothing listens at first (a cluster resuming from auto-pause),
  then connections go through;
- cut_on(marker, occurrence=1): the connection whose client sends `marker` for the
  occurrence-th time (counted over all connections) is cut right there, both ways (a
  network fault mid-transaction); later connections pass. It
  reads the client's bytes, so it needs a server without TLS;
- delay(seconds): every chunk, both ways, waits that long first;
- drop_reply_to(marker): the first client chunk holding `marker` reaches the server,
  and the server's reply to it is thrown away as both sides are closed (a COMMIT
  whose answer is lost);
- hold_reply_to(marker): the first client chunk holding `marker` reaches the server,
  and from then on nothing the server sends reaches the client, while both stay
  connected (a COMMIT waiting on a synchronous standby that is down);
- cut_handshakes(n): the first n connections are closed on the client's second chunk,
  which under TLS is the ClientHello (a server failing over mid-handshake);
- freeze_on(marker, hook): on the first client chunk holding `marker`, forwarding
  stops both ways while every socket stays open, and hook(client_port) is called, so
  that a test can make that connection silent in the kernel (packets dropped).

It runs an asyncio loop in a thread of the test process and binds only 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tools.localpg import free_port


@dataclass
class Faults:
    listen_after: float = 0.0  # monotonic time before which nothing listens
    cut_marker: bytes | None = None
    cut_skip: int = 0  # occurrences of cut_marker to let through first
    refuse_after_cut: bool = False
    cuts: int = 0  # connections cut so far
    delay: float = 0.0
    connections: int = 0
    drop_reply_marker: bytes | None = None
    hold_reply_marker: bytes | None = None
    replies_held: int = 0
    replies_dropped: int = 0
    handshake_cuts_left: int = 0
    handshake_cuts: int = 0
    freeze_marker: bytes | None = None
    freeze_hook: Callable[[int], None] | None = None
    frozen_ports: list[int] = field(default_factory=list)


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.faults = Faults()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._listen())

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)  # type: ignore[arg-type]

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def refuse_for(self, seconds: float) -> None:
        """Stop listening now, and listen again after `seconds`."""
        self._call(self._close())
        self.faults.listen_after = time.monotonic() + seconds

        async def reopen() -> None:
            await asyncio.sleep(seconds)
            await self._listen()

        asyncio.run_coroutine_threadsafe(reopen(), self._loop)

    def cut_on(self, marker: bytes, then_refuse: bool = False, occurrence: int = 1) -> None:
        """Cut the connection that sends `marker` for the occurrence-th time; with
        then_refuse, accept no connection afterwards (the job cannot retry its way out)."""
        self.faults.cut_marker = marker
        self.faults.cut_skip = occurrence - 1
        self.faults.refuse_after_cut = then_refuse

    def delay(self, seconds: float) -> None:
        self.faults.delay = seconds

    def drop_reply_to(self, marker: bytes) -> None:
        self.faults.drop_reply_marker = marker

    def hold_reply_to(self, marker: bytes) -> None:
        self.faults.hold_reply_marker = marker

    def cut_handshakes(self, count: int) -> None:
        self.faults.handshake_cuts_left = count

    def freeze_on(self, marker: bytes, hook: Callable[[int], None]) -> None:
        self.faults.freeze_marker = marker
        self.faults.freeze_hook = hook

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.faults.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return
        done = asyncio.Event()
        frozen = asyncio.Event()
        reply_doomed = asyncio.Event()  # the next server chunk is thrown away
        reply_held = asyncio.Event()  # server chunks are thrown away, sockets kept
        cut_handshake = self.faults.handshake_cuts_left > 0
        if cut_handshake:
            self.faults.handshake_cuts_left -= 1
        client_port = int(client_w.get_extra_info("peername")[1])

        def close_both() -> None:
            done.set()
            for writer in (client_w, server_w):
                with contextlib.suppress(Exception):
                    writer.close()

        def seen_in(seen: bytes, marker: bytes | None) -> bool:
            return marker is not None and marker in seen

        # One loop per direction that applies each fault in turn, in the order a
        # chunk meets them.
        async def pump(  # noqa: PLR0912
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, inspect: bool
        ) -> None:
            seen = b""
            chunks = 0
            try:
                while not done.is_set():
                    chunk = await src.read(65536)
                    if not chunk:
                        break
                    chunks += 1
                    if self.faults.delay:
                        await asyncio.sleep(self.faults.delay)
                    if frozen.is_set():
                        continue
                    if not inspect and reply_doomed.is_set():
                        self.faults.replies_dropped += 1
                        break
                    if not inspect and reply_held.is_set():
                        self.faults.replies_held += 1
                        continue
                    if inspect:
                        if cut_handshake and chunks == 2:
                            self.faults.handshake_cuts += 1
                            break
                        seen = (seen + chunk)[-65536:]
                        if seen_in(seen, self.faults.cut_marker) and self.faults.cut_skip:
                            self.faults.cut_skip -= 1
                            seen = b""  # this occurrence is let through
                        elif seen_in(seen, self.faults.cut_marker):
                            self.faults.cut_marker = None  # only the first time
                            self.faults.cuts += 1
                            if self.faults.refuse_after_cut:
                                await self._close()
                            break
                        if seen_in(seen, self.faults.freeze_marker):
                            self.faults.freeze_marker = None
                            frozen.set()
                            self.faults.frozen_ports.append(client_port)
                            if self.faults.freeze_hook is not None:
                                self.faults.freeze_hook(client_port)
                            continue
                        if seen_in(seen, self.faults.drop_reply_marker):
                            self.faults.drop_reply_marker = None
                            reply_doomed.set()
                        if seen_in(seen, self.faults.hold_reply_marker):
                            self.faults.hold_reply_marker = None
                            reply_held.set()
                    dst.write(chunk)
                    await dst.drain()
                if frozen.is_set() or reply_held.is_set():
                    # Silent, not closed: the peers must find out by themselves.
                    await done.wait()
            except (ConnectionError, OSError):
                pass
            finally:
                close_both()

        await asyncio.gather(
            pump(client_r, server_w, inspect=True), pump(server_r, client_w, inspect=False)
        )

    async def _cancel_connections(self) -> None:
        # A frozen connection never ends by itself.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        self._call(self._close())
        self._call(self._cancel_connections())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
