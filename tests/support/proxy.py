"""A loopback TCP proxy between Alcove and Synapse that a test can disturb deterministically:

pass       forward both ways
blackhole  requests go nowhere (Alcove's calls hang: "homeserver unreachable mid-flight")
swallow    requests reach Synapse, its answers never come back ("crash after send, before ack")
http429    each request is answered by the proxy with 429 M_LIMIT_EXCEEDED (never reaches Synapse)
http503    each request is answered by the proxy with 503 (an overloaded or restarting server)
"""

from __future__ import annotations

import asyncio
import contextlib

PASS, BLACKHOLE, SWALLOW = "pass", "blackhole", "swallow"
HTTP429, HTTP503 = "http429", "http503"

_CANNED = {
    HTTP429: (
        "429 Too Many Requests",
        b'{"errcode": "M_LIMIT_EXCEEDED", "error": "Too many requests", "retry_after_ms": 200}',
    ),
    HTTP503: ("503 Service Unavailable", b'{"errcode": "M_UNKNOWN", "error": "Unavailable"}'),
}


def canned_response(mode: str) -> bytes:
    status, body = _CANNED[mode]
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class FaultProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = PASS
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def drop_connections(self) -> None:
        """Close every open connection (e.g. after changing mode back to pass)."""
        for task in list(self._conns):
            task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            self._conns.discard(task)
            return
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, drop_when=(BLACKHOLE,), answer=writer),
                self._pump(up_reader, writer, drop_when=(SWALLOW,)),
            )
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()
            self._conns.discard(task)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        drop_when: tuple[str, ...],
        answer: asyncio.StreamWriter | None = None,
    ) -> None:
        """Forward ``reader`` to ``writer``. With ``answer`` (the client's side), a request read
        in an http429/http503 mode is not forwarded: the proxy answers it and closes both ends
        (Alcove's client sends one request at a time on a connection, so nothing is mixed)."""
        while data := await reader.read(65536):
            if answer is not None and self.mode in _CANNED:
                answer.write(canned_response(self.mode))
                await answer.drain()
                raise ConnectionError("answered by the proxy")
            if self.mode in drop_when:
                continue
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(Exception):
            writer.write_eof()

    async def stop(self) -> None:
        self.drop_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
