"""A Matrix user in tests, driving Synapse through the client-server API (mautrix's ClientAPI),
the way Element would: log in, create rooms, send, and long-poll /sync for what arrives."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import quote

import aiohttp
from mautrix.client import ClientAPI
from mautrix.types import (
    EventType,
    MessageType,
    PaginationDirection,
    RoomCreatePreset,
    RoomID,
    TextMessageEventContent,
    UserID,
)

Event = dict[str, Any]


class MatrixUser:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        user_id: str,
        *,
        ignore_own_messages: bool = False,
        only_rooms: list[str] | None = None,
    ) -> None:
        """``ignore_own_messages`` syncs with a ``not_senders: [me]`` filter, so /sync wakes only
        for what others send (how a benchmark waits for a reply without counting its own echo)."""
        self.user_id = user_id
        # A high timeline limit: the default (10) drops events from a burst ("limited": true).
        timeline: dict[str, Any] = {"limit": 1000}
        if ignore_own_messages:
            timeline["not_senders"] = [user_id]
        room_filter: dict[str, Any] = {"timeline": timeline}
        # Synapse then computes these rooms only, but a waiting /sync is still woken (and
        # recomputed) for each event in any of the user's rooms: costly with hundreds of rooms.
        if only_rooms is not None:
            room_filter["rooms"] = only_rooms
        self.filter: str | None = json.dumps({"room": room_filter})
        self.api = ClientAPI(UserID(user_id), base_url=base_url, client_session=session)
        self.since: str | None = None
        self.timeline: dict[str, list[Event]] = {}
        self.invites: set[str] = set()

    async def login(self, password: str) -> MatrixUser:
        await self.api.login(
            identifier=UserID(self.user_id),
            password=password,
            store_access_token=True,
        )
        await self.sync(timeout_ms=0)  # start at "now"
        return self

    async def create_dm(self, other: str) -> str:
        room_id = await self.api.create_room(
            preset=RoomCreatePreset.TRUSTED_PRIVATE, invitees=[UserID(other)], is_direct=True
        )
        return str(room_id)

    async def send_text(self, room_id: str, text: str) -> str:
        content = TextMessageEventContent(msgtype=MessageType.TEXT, body=text)
        return str(
            await self.api.send_message_event(RoomID(room_id), EventType.ROOM_MESSAGE, content)
        )

    async def sync(self, timeout_ms: int = 0) -> list[Event]:
        """One /sync; returns new timeline events and records them per room."""
        data: dict[str, Any] = await self.api.sync(
            since=self.since,  # type: ignore[arg-type]
            timeout=timeout_ms,
            filter_id=self.filter,  # type: ignore[arg-type]
        )
        self.since = data.get("next_batch")
        new: list[Event] = []
        rooms = data.get("rooms", {})
        for room_id, room in rooms.get("join", {}).items():
            for event in room.get("timeline", {}).get("events", []):
                event["room_id"] = room_id
                self.timeline.setdefault(room_id, []).append(event)
                new.append(event)
        for room_id in rooms.get("invite", {}):
            self.invites.add(room_id)
        return new

    async def wait_for(
        self, predicate: Callable[[Event], bool], timeout: float = 15.0, *, fresh: bool = False
    ) -> Event:
        """Long-poll /sync until an event matches. Events already seen count, unless ``fresh``
        (then only events arriving from now on do)."""
        if not fresh:
            for events in self.timeline.values():
                for event in events:
                    if predicate(event):
                        return event
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            for event in await self.sync(timeout_ms=int(min(left, 5) * 1000)):
                if predicate(event):
                    return event
        raise TimeoutError("no matching event arrived")

    async def raw(
        self, method: str, path: str, content: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """A client-server request as this user; returns (HTTP status, JSON body), no raising."""
        url = f"{str(self.api.api.base_url).rstrip('/')}{path}"
        headers = {"Authorization": f"Bearer {self.api.api.token}"}
        async with self.api.api.session.request(method, url, json=content, headers=headers) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = {}
            return resp.status, body if isinstance(body, dict) else {}

    async def put_state(
        self, room_id: str, event_type: str, state_key: str, content: dict[str, Any]
    ) -> int:
        path = f"/_matrix/client/v3/rooms/{quote(room_id)}/state/{event_type}/{quote(state_key)}"
        status, _ = await self.raw("PUT", path, content)
        return status

    async def state(self, room_id: str, event_type: str, state_key: str = "") -> dict[str, Any]:
        path = f"/_matrix/client/v3/rooms/{quote(room_id)}/state/{event_type}/{quote(state_key)}"
        status, body = await self.raw("GET", path)
        assert status == 200, (status, body)
        return body

    async def joined_rooms(self) -> list[str]:
        return [str(r) for r in await self.api.get_joined_rooms()]

    def messages_in(self, room_id: str, sender: str | None = None) -> list[Event]:
        return [
            e
            for e in self.timeline.get(room_id, [])
            if e.get("type") == "m.room.message" and (sender is None or e.get("sender") == sender)
        ]

    async def room_messages(self, room_id: str, limit: int = 500) -> list[Event]:
        """The room's history from the server (not our sync cache), oldest first."""
        resp = await self.api.get_messages(
            RoomID(room_id), PaginationDirection.BACKWARD, limit=limit
        )
        # PaginatedMessages is a functional NamedTuple that mypy cannot read.
        events = cast(list[Any], resp.events)  # type: ignore[attr-defined]
        chunk: list[Event] = [e.serialize() for e in events]
        return [e for e in reversed(chunk) if e.get("type") == "m.room.message"]


def body_is(room_id: str, sender: str, body: str) -> Callable[[Event], bool]:
    def match(e: Event) -> bool:
        return (
            e.get("room_id") == room_id
            and e.get("sender") == sender
            and e.get("type") == "m.room.message"
            and e.get("content", {}).get("body") == body
        )

    return match


async def wait_joined(user: MatrixUser, room_id: str, member: str, timeout: float = 15.0) -> None:
    await user.wait_for(
        lambda e: (
            e.get("room_id") == room_id
            and e.get("type") == "m.room.member"
            and e.get("state_key") == member
            and e.get("content", {}).get("membership") == "join"
        ),
        timeout,
    )
