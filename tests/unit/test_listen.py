"""A listener whose port is taken stops start-up with a StartupError that says what to do."""

from __future__ import annotations

import socket

import pytest
from aiohttp import web

from bridge.app import _listen
from bridge.errors import StartupError


async def test_a_taken_port_says_what_to_check() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupError, match=rf"127.0.0.1:{port} for the API .*: is api.port"):
            await _listen(web.Application(), "127.0.0.1", port, "is api.port taken?", "the API")


async def test_a_free_port_serves() -> None:
    runner = await _listen(web.Application(), "127.0.0.1", 0, "unused")
    try:
        assert runner.addresses
    finally:
        await runner.cleanup()
