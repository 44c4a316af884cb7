"""The floor for a bot round trip: an appservice with no persistence, no inbox, no outbox.
It acknowledges each transaction at once and answers `!ping` with `pong` straight away.
Uses Alcove's registration (same port and tokens) while Alcove is stopped."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web


class MinimalBot:
    def __init__(self, homeserver: str, as_token: str, hs_token: str, bot: str) -> None:
        self.homeserver = homeserver
        self.as_token = as_token
        self.hs_token = hs_token
        self.bot = bot
        self.tasks: set[asyncio.Task[None]] = set()
        self.counter = 0

    async def start(self, host: str, port: int) -> web.AppRunner:
        self.http = aiohttp.ClientSession()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_put("/_matrix/app/v1/transactions/{txn}", self.transaction)
        app.router.add_post("/_matrix/app/v1/ping", self.ping)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        return runner

    async def ping(self, _: web.Request) -> web.Response:
        return web.json_response({})

    async def transaction(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.hs_token}":
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        body = await request.json()
        for event in body.get("events", []):
            if event.get("sender") != self.bot and event.get("content", {}).get("body") == "!ping":
                task = asyncio.create_task(self.reply(event))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        return web.json_response({})

    async def reply(self, event: dict[str, Any]) -> None:
        self.counter += 1
        room = quote(event["room_id"], safe="")
        path = f"/_matrix/client/v3/rooms/{room}/send/m.room.message/min{self.counter}"
        url = self.homeserver + path
        async with self.http.put(
            url,
            json={"msgtype": "m.notice", "body": "pong"},
            headers={"Authorization": f"Bearer {self.as_token}"},
        ) as resp:
            await resp.read()

    async def stop(self, runner: web.AppRunner) -> None:
        await runner.cleanup()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.http.close()
