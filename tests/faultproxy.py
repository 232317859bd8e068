"""A TCP proxy that misbehaves on request, between the job and PostgreSQL.

- refuse_for(seconds): nothing listens at first (a cluster resuming from auto-pause),
  then connections go through;
- cut_on(marker): the first connection whose client sends `marker` is cut right
  there, both ways (a network fault mid-transaction); later connections pass. It
  reads the client's bytes, so it needs a server without TLS;
- delay(seconds): every chunk, both ways, waits that long first.

It runs an asyncio loop in a thread of the test process and binds only 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass

from tools.localpg import free_port


@dataclass
class Faults:
    listen_after: float = 0.0  # monotonic time before which nothing listens
    cut_marker: bytes | None = None
    refuse_after_cut: bool = False
    cuts: int = 0  # connections cut so far
    delay: float = 0.0
    connections: int = 0


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

    def cut_on(self, marker: bytes, then_refuse: bool = False) -> None:
        """Cut the first connection that sends `marker`; with then_refuse, accept no
        connection afterwards (the job cannot retry its way out)."""
        self.faults.cut_marker = marker
        self.faults.refuse_after_cut = then_refuse

    def delay(self, seconds: float) -> None:
        self.faults.delay = seconds

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.faults.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return
        done = asyncio.Event()

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, inspect: bool) -> None:
            seen = b""
            try:
                while not done.is_set():
                    chunk = await src.read(65536)
                    if not chunk:
                        break
                    if self.faults.delay:
                        await asyncio.sleep(self.faults.delay)
                    marker = self.faults.cut_marker
                    if inspect and marker is not None:
                        seen = (seen + chunk)[-(len(marker) + 65536) :]
                        if marker in seen:
                            self.faults.cut_marker = None  # only the first time
                            self.faults.cuts += 1
                            if self.faults.refuse_after_cut:
                                await self._close()
                            break
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                done.set()
                for writer in (client_w, server_w):
                    with contextlib.suppress(Exception):
                        writer.close()

        await asyncio.gather(
            pump(client_r, server_w, inspect=True), pump(server_r, client_w, inspect=False)
        )

    def stop(self) -> None:
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
