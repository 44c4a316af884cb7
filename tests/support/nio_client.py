"""matrix-nio (a third-party client nobody on this project wrote) driving Synapse in tests:
log in, send raw message content, and wait for what arrives. Kept small and generic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from nio import AsyncClient, LoginResponse, RoomSendResponse, SyncResponse

Event = dict[str, Any]


class NioUser:
    def __init__(self, homeserver: str, user_id: str) -> None:
        # No store path: no end-to-end state on disk (these rooms are not encrypted).
        self.client = AsyncClient(homeserver, user_id)
        self.user_id = user_id
        self.seen: list[Event] = []

    async def login(self, password: str) -> NioUser:
        response = await self.client.login(password, device_name="alcove-tests (nio)")
        assert isinstance(response, LoginResponse), response
        first = await self.client.sync(timeout=0, full_state=False)
        assert isinstance(first, SyncResponse), first
        return self

    async def close(self) -> None:
        await self.client.logout()
        await self.client.close()

    async def send(self, room_id: str, content: dict[str, Any]) -> str:
        response = await self.client.room_send(room_id, "m.room.message", content)
        assert isinstance(response, RoomSendResponse), response
        return str(response.event_id)

    async def wait_for(self, match: Callable[[Event], bool], timeout: float = 20.0) -> Event:
        """The first event (raw, with its room_id) that matches, seen since login."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.seen:
                if match(event):
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching event within {timeout}s")
            response = await self.client.sync(timeout=int(min(left, 5) * 1000))
            if not isinstance(response, SyncResponse):
                await asyncio.sleep(0.2)
                continue
            for room_id, room in response.rooms.join.items():
                for ev in room.timeline.events:
                    self.seen.append({**ev.source, "room_id": room_id})
