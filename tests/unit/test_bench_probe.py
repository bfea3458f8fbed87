"""The benchmark's latency probe client (`bench.http.Http1`) against a server that closes idle
keep-alive connections, as uvicorn does after 5 s: a connection idle for too long is opened
again before a request, and one the server closed fails one request and is opened again for
the next."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bench.http import Http1


class KeepAliveServer:
    """Answers each HTTP/1.1 request with 200 and the connection's number; closes a
    connection after `idle_s` without a request."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = str(self.connections).encode()
        try:
            while True:
                try:
                    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_s)
                except (TimeoutError, asyncio.IncompleteReadError):
                    return
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(number), number)
                )
                await writer.drain()
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"


@pytest.fixture
async def server() -> AsyncIterator[KeepAliveServer]:
    found = KeepAliveServer(idle_s=0.3)
    found.server = await asyncio.start_server(found._serve, "127.0.0.1", 0)
    yield found
    found.server.close()
    await found.server.wait_closed()


async def test_a_connection_idle_for_too_long_is_opened_again(
    server: KeepAliveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Http1, "IDLE_S", 0.1)  # below the server's 0.3 s
    client = Http1(server.url, "token")
    try:
        assert await client.request("GET", "/") == (200, b"1")
        assert await client.request("GET", "/") == (200, b"1")  # kept alive
        await asyncio.sleep(0.5)  # the server has closed it by now
        assert await client.request("GET", "/") == (200, b"2")
    finally:
        await client.close()


async def test_a_connection_the_server_closed_is_opened_again_for_the_next_request(
    server: KeepAliveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Http1, "IDLE_S", 60.0)  # never reopened in advance
    client = Http1(server.url, "token")
    try:
        assert await client.request("GET", "/") == (200, b"1")
        await asyncio.sleep(0.5)
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await client.request("GET", "/")
        assert await client.request("GET", "/") == (200, b"2")
    finally:
        await client.close()
