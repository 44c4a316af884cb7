"""Message blasts: one message to many clients, each in their own 1:1 room, nobody seeing the
other recipients. Each delivery is an outbox row keyed on (command, client): a re-run after a
crash sends nothing twice, and failures are retried by the outbox."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from bridge.db.database import transaction
from bridge.db.outbox_repo import OutboxRow
from bridge.matrix.outbox import HELD, Outbox

from ..conversations.repo import DM, Client
from ..conversations.service import ClientLookupError, ConversationService
from ..voice import TherapistVoice

WAIT_SECONDS = 120.0


class AudienceError(Exception):
    """``private``: the message lists clients (say it only in the management room)."""

    def __init__(self, message: str, *, private: bool = False) -> None:
        super().__init__(message)
        self.private = private


@dataclass
class BlastResult:
    delivered: list[Client] = field(default_factory=list)
    failed: list[tuple[Client, str]] = field(default_factory=list)
    pending: list[Client] = field(default_factory=list)
    held: list[Client] = field(default_factory=list)
    """Encrypted 1:1s whose client has not signed in yet: sent at their first sign-in."""


class BlastService:
    def __init__(
        self, conversations: ConversationService, outbox: Outbox, voice: TherapistVoice
    ) -> None:
        self.conversations = conversations
        self.outbox = outbox
        self.voice = voice

    async def audience(self, therapist: str, spec: str) -> list[Client]:
        """all | group:<title> | <client>,<client>,..."""
        spec = spec.strip()
        conversations = self.conversations
        if spec.lower() == "all":
            clients = await conversations.clients_of(therapist)
        elif spec.lower().startswith("group:"):
            title = spec[6:]
            room = await self.conversations.group_by_title(therapist, title)
            if room is None:
                raise AudienceError(f"You have no community chat called {title!r}.")
            ids = await conversations.members(room.room_id)
            found = [await conversations.client(i) for i in ids]
            clients = [c for c in found if c is not None]
        else:
            clients = []
            for token in (t for t in spec.split(",") if t.strip()):
                try:
                    client = await self.conversations.resolve_client(therapist, token)
                except ClientLookupError as e:
                    raise AudienceError(str(e), private=e.private) from None
                if client not in clients:
                    clients.append(client)
        if not clients:
            raise AudienceError("That audience has no clients.")
        return clients

    async def send(
        self, therapist: str, clients: list[Client], content: dict[str, Any], origin: str
    ) -> BlastResult:
        speaker = await self.voice.speaker(therapist)
        result = BlastResult()
        known = {
            room.client_id: room.room_id
            for room in await self.conversations.rooms_of(therapist, DM)
            if room.client_id
        }
        rooms: list[tuple[Client, str]] = []
        for client in clients:
            if client.user_id in known:
                rooms.append((client, known[client.user_id]))
                continue
            try:  # no 1:1 yet: create it (with its welcome) first
                room = await self.conversations.ensure_dm(
                    therapist, client, f"{origin}:{client.user_id}"
                )
            except Exception as e:  # one client's room must not stop the others
                result.failed.append((client, f"no conversation room ({type(e).__name__})"))
                continue
            rooms.append((client, room.room_id))
        # Every delivery is written down in one transaction (one commit, not one per client),
        # then handed to the outbox workers, with a waiter per delivery registered first.
        # Who speaks in each room (the bot in an encrypted one: see TherapistVoice), asked
        # before the transaction since it may ask the homeserver.
        voices = {room_id: await self.voice.in_room(speaker, room_id) for _, room_id in rooms}
        bodies = {
            voice: self.voice.content(therapist, voice, content, automated=True)
            for voice in set(voices.values())
        }
        rows = []
        async with transaction(self.outbox.repo.db):
            for client, room_id in rooms:
                voice = voices[room_id]
                row, new = await self.outbox.prepare(
                    f"blast:{origin}:{client.user_id}", voice, room_id, bodies[voice]
                )
                rows.append((client, row, new))
        waits: list[tuple[Client, Awaitable[OutboxRow]]] = []
        for client, row, new in rows:
            if row.status == "pending" and new:
                waits.append((client, self.outbox.expect(row.key)))
                self.outbox.submit(row)
            elif row.status == "pending":
                # Written by an earlier run of the same command (a replay after a crash or a
                # temporary error) and already with the outbox: it may be delivered at any
                # moment, so wait() registers first and then reads the row.
                waits.append((client, self.outbox.wait(row.key, WAIT_SECONDS)))
            elif row.status == "sent":  # a re-run after a crash: already delivered
                result.delivered.append(client)
            else:
                result.failed.append((client, row.error or "not accepted"))

        async def outcome(client: Client, fut: Awaitable[OutboxRow]) -> None:
            try:
                row = await asyncio.wait_for(fut, WAIT_SECONDS)
            except TimeoutError:
                result.pending.append(client)
                return
            if row.status == "sent":
                result.delivered.append(client)
            elif row.status == HELD:
                result.held.append(client)
            else:
                result.failed.append((client, row.error or "not accepted"))

        await asyncio.gather(*(outcome(c, f) for c, f in waits))
        return result
