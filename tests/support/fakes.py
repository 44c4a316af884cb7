"""Recording fakes: they remember what was asked of them and can be told to fail. They do not
pretend to be a homeserver; integration tests use a real Synapse for that."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bridge.clock import TimerCallback
from bridge.matrix.gateway import MatrixSendError, PermanentError
from bridge.timers import Timers


class FakeClock:
    """Wall time is settable; monotonic follows the real clock so asyncio timers still work.
    Timers armed on it (``call_at``) never run by themselves: ``fire_due`` runs those whose
    time has come (after ``advance``), in order of time — deterministic."""

    def __init__(self, start: datetime | None = None) -> None:
        self._wall = (start or datetime(2026, 11, 21, 12, 0, tzinfo=UTC)).timestamp()
        self._offset = 0.0
        self.timers: dict[str, tuple[datetime, TimerCallback, tuple[Any, ...]]] = {}

    def call_at(self, key: str, when: datetime, fn: TimerCallback, *args: Any) -> None:
        self.timers[key] = (when, fn, args)

    def cancel(self, key: str) -> None:
        self.timers.pop(key, None)

    def pending_timers(self) -> int:
        return len(self.timers)

    def start_timers(self) -> None:
        pass

    def stop_timers(self) -> None:
        pass

    async def fire_due(self) -> list[str]:
        """Run every timer due by now, earliest first (one armed meanwhile and due runs too);
        returns their keys in the order they ran."""
        fired: list[str] = []
        while True:
            now = self.now()
            due = sorted((when, key) for key, (when, _, _) in self.timers.items() if when <= now)
            if not due:
                return fired
            key = due[0][1]
            _, fn, args = self.timers.pop(key)
            fired.append(key)
            await fn(*args)

    async def advance_and_fire(self, seconds: float) -> list[str]:
        """``advance``, then run what is due."""
        self.advance(seconds)
        return await self.fire_due()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def time(self) -> float:
        return self._wall + self._offset

    def monotonic(self) -> float:
        return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        self._offset += seconds

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass
class Sent:
    sender: str
    room_id: str
    event_type: str
    content: dict[str, Any]
    txn_id: str
    device_id: str | None
    at: float


@dataclass
class RecordingGateway:
    bot_user_id: str = "@alcove:test.local"
    sent: list[Sent] = field(default_factory=list)
    attempts: list[Sent] = field(default_factory=list)
    joined: list[tuple[str, str]] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)
    devices: list[tuple[str, str]] = field(default_factory=list)
    failures: list[MatrixSendError] = field(default_factory=list)
    """Errors to raise, one per send attempt, before sends start succeeding."""
    device_ok: bool = True
    deleted_devices: set[tuple[str, str]] = field(default_factory=set)
    """(user, device) pairs the homeserver has deleted: sends naming one get M_UNKNOWN_DEVICE."""
    _txn_events: dict[tuple[str, str], str] = field(default_factory=dict)

    async def send_event(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        txn_id: str,
        device_id: str | None,
    ) -> str:
        attempt = Sent(sender, room_id, event_type, content, txn_id, device_id, time.monotonic())
        self.attempts.append(attempt)
        await asyncio.sleep(0)  # a request in flight: others may start meanwhile
        if self.failures:
            raise self.failures.pop(0)
        if len(json.dumps(content).encode()) > 65_536:  # Synapse's limit is for the whole event
            raise PermanentError("event too large", status=413, errcode="M_TOO_LARGE")
        if device_id is not None and (sender, device_id) in self.deleted_devices:
            raise PermanentError(
                "Application service trying to use a device that doesn't exist",
                status=400,
                errcode="M_UNKNOWN_DEVICE",
            )
        # Like Synapse: the same (sender, device, txn id) yields the same event, sent once.
        key = (f"{sender}/{device_id}", txn_id)
        if key not in self._txn_events:
            self._txn_events[key] = f"$event{len(self._txn_events)}"
            self.sent.append(attempt)
        return self._txn_events[key]

    async def ensure_device(self, user_id: str, device_id: str) -> bool:
        self.devices.append((user_id, device_id))
        await asyncio.sleep(0)
        self.deleted_devices.discard((user_id, device_id))
        return self.device_ok

    async def join_room(self, user_id: str, room_id: str) -> None:
        self.joined.append((user_id, room_id))
        self.members.setdefault(room_id, set()).add(user_id)

    async def leave_room(self, user_id: str, room_id: str) -> None:
        self.left.append((user_id, room_id))

    rooms: dict[str, dict[str, Any]] = field(default_factory=dict)
    """createRoom bodies by room id."""
    members: dict[str, set[str]] = field(default_factory=dict)
    state: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    account_data: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    registered: list[str] = field(default_factory=list)
    passwords: dict[str, str] = field(default_factory=dict)
    displaynames: dict[str, str] = field(default_factory=dict)
    kicked: list[tuple[str, str]] = field(default_factory=list)
    forgotten: list[tuple[str, str]] = field(default_factory=list)
    deactivated: list[tuple[str, bool]] = field(default_factory=list)
    invited: list[tuple[str, str]] = field(default_factory=list)
    doublepuppet: bool = True
    existing_users: set[str] = field(default_factory=set)

    def can_act_as(self, user_id: str) -> bool:
        return user_id == self.bot_user_id or user_id.startswith("@c-") or self.doublepuppet

    async def register_user(self, localpart: str) -> str:
        user_id = f"@{localpart}:{self.bot_user_id.split(':', 1)[1]}"
        self.registered.append(user_id)
        self.existing_users.add(user_id)
        return user_id

    async def set_password(self, user_id: str, password: str) -> None:
        self.passwords[user_id] = password

    async def set_displayname(self, user_id: str, name: str) -> None:
        self.displaynames[user_id] = name

    async def create_room(self, body: dict[str, Any]) -> str:
        room_id = f"!room{len(self.rooms)}:test.local"
        self.rooms[room_id] = body
        self.members[room_id] = {self.bot_user_id}
        for event in body.get("initial_state", []):
            self.state[(room_id, event["type"], event.get("state_key", ""))] = event["content"]
        if "name" in body:
            self.state[(room_id, "m.room.name", "")] = {"name": body["name"]}
        return room_id

    async def invite(self, room_id: str, user_id: str) -> None:
        self.invited.append((room_id, user_id))

    async def kick(self, room_id: str, user_id: str, reason: str) -> None:
        self.kicked.append((room_id, user_id))
        self.members.get(room_id, set()).discard(user_id)

    async def forget(self, user_id: str, room_id: str) -> None:
        self.forgotten.append((user_id, room_id))

    async def deactivate(self, user_id: str, erase: bool) -> None:
        self.deactivated.append((user_id, erase))

    async def send_state(
        self, sender: str, room_id: str, event_type: str, state_key: str, content: dict[str, Any]
    ) -> str:
        self.state[(room_id, event_type, state_key)] = content
        return f"$state{len(self.state)}"

    async def get_state(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any] | None:
        return self.state.get((room_id, event_type, state_key))

    async def get_account_data(self, user_id: str, data_type: str) -> dict[str, Any] | None:
        return self.account_data.get((user_id, data_type))

    async def set_account_data(self, user_id: str, data_type: str, content: dict[str, Any]) -> None:
        self.account_data[(user_id, data_type)] = content

    async def user_exists(self, user_id: str) -> bool | None:
        return user_id in self.existing_users

    memberships: dict[str, dict[str, str]] = field(default_factory=dict)
    """Memberships a test sets explicitly (user -> membership), per room; otherwise the room's
    members are derived from createRoom invites, joins and kicks."""

    async def room_members(self, room_id: str) -> dict[str, str]:
        if room_id in self.memberships:
            return dict(self.memberships[room_id])
        members = {u: "invite" for u in self.rooms.get(room_id, {}).get("invite", [])}
        members.update({u: "invite" for r, u in self.invited if r == room_id})
        members.update(dict.fromkeys(self.members.get(room_id, set()), "join"))
        members.update({u: "leave" for r, u in self.kicked if r == room_id})
        members.update({u: "leave" for u, r in self.left if r == room_id})
        return members

    redacted: list[tuple[str, str]] = field(default_factory=list)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    uploads: dict[str, bytes] = field(default_factory=dict)
    deleted_media: list[str] = field(default_factory=list)
    deleted_rooms: list[str] = field(default_factory=list)

    async def room_events(self, room_id: str) -> list[dict[str, Any]]:
        return list(self.events.get(room_id, []))

    async def upload(self, data: bytes, filename: str, content_type: str) -> str:
        uri = f"mxc://test.local/upload{len(self.uploads)}"
        self.uploads[uri] = data
        return uri

    async def delete_media(self, mxc: str) -> bool:
        self.deleted_media.append(mxc)
        return True

    async def delete_room(self, room_id: str) -> str:
        self.deleted_rooms.append(room_id)
        return f"delete-{len(self.deleted_rooms)}"

    async def delete_status(self, delete_id: str) -> str:
        return "complete"

    purged_history: list[tuple[str, str]] = field(default_factory=list)
    user_device_list: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """What the devices admin API answers per user (none: the user has no device)."""

    async def purge_history(self, room_id: str, up_to_event_id: str) -> str:
        """Like Synapse: the room's messages go, its state (memberships) stays."""
        self.purged_history.append((room_id, up_to_event_id))
        self.events[room_id] = [e for e in self.events.get(room_id, []) if "state_key" in e]
        return f"purge-{len(self.purged_history)}"

    async def purge_status(self, purge_id: str) -> str:
        return "complete"

    async def user_devices(self, user_id: str) -> list[dict[str, Any]]:
        return list(self.user_device_list.get(user_id, []))

    async def redact(self, room_id: str, event_id: str, reason: str) -> None:
        self.redacted.append((room_id, event_id))

    emails: dict[str, str | None] = field(default_factory=dict)
    email_pushers: dict[str, str | None] = field(default_factory=dict)
    unredacted: dict[str, dict[str, Any] | PermanentError] = field(default_factory=dict)
    """What the MSC2815 event lookup answers per event id (an error to raise, or the event)."""

    async def email_owner(self, email: str) -> str | None:
        return next((user for user, address in self.emails.items() if address == email), None)

    async def set_email(self, user_id: str, email: str | None) -> None:
        self.emails[user_id] = email

    async def set_email_pusher(self, user_id: str, email: str | None) -> None:
        self.email_pushers[user_id] = email

    async def unredacted_event(self, room_id: str, event_id: str) -> dict[str, Any]:
        found = self.unredacted.get(event_id)
        if found is None:
            raise PermanentError("Event not found.", status=404, errcode="M_NOT_FOUND")
        if isinstance(found, PermanentError):
            raise found
        return found

    tags: dict[tuple[str, str], dict[str, dict[str, Any]]] = field(default_factory=dict)
    """(user, room) -> tag -> content, as the homeserver keeps them."""
    push_rules: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    """(user, kind, rule id) -> the rule, as the homeserver keeps them."""

    async def room_state(self, room_id: str) -> list[dict[str, Any]]:
        return [
            {"type": t, "state_key": k, "content": c, "room_id": r}
            for (r, t, k), c in self.state.items()
            if r == room_id
        ]

    async def set_room_tag(
        self, user_id: str, room_id: str, tag: str, content: dict[str, Any]
    ) -> None:
        self.tags.setdefault((user_id, room_id), {})[tag] = content

    async def delete_room_tag(self, user_id: str, room_id: str, tag: str) -> None:
        self.tags.get((user_id, room_id), {}).pop(tag, None)

    async def set_push_rule(
        self, user_id: str, kind: str, rule_id: str, rule: dict[str, Any]
    ) -> None:
        self.push_rules[(user_id, kind, rule_id)] = rule

    async def delete_push_rule(self, user_id: str, kind: str, rule_id: str) -> bool:
        return self.push_rules.pop((user_id, kind, rule_id), None) is not None

    def bodies(self, room_id: str | None = None) -> list[str]:
        return [
            str(s.content.get("body")) for s in self.sent if room_id is None or s.room_id == room_id
        ]


def to_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


@dataclass
class Armed:
    when: datetime
    callback: Callable[..., Awaitable[None]]
    args: tuple[Any, ...]


class RecordingTimers(Timers):
    """Timers that only remember what is armed; a test runs a timer with ``run``."""

    def __init__(self) -> None:
        super().__init__()
        self.armed: dict[str, Armed] = {}
        self.cancelled: list[str] = []
        self.history: list[str] = []
        """Every id armed, in order (an id armed twice is here twice)."""

    def arm(
        self, job_id: str, when: datetime, callback: Callable[..., Awaitable[None]], *args: Any
    ) -> None:
        if not inspect.iscoroutinefunction(callback):
            raise TypeError(f"{callback!r} is not a coroutine function")
        self.armed[job_id] = Armed(when, callback, args)
        self.history.append(job_id)

    def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)
        self.armed.pop(job_id, None)

    def count(self) -> int:
        return len(self.armed)

    async def run(self, job_id: str) -> None:
        armed = self.armed.pop(job_id)
        await armed.callback(*armed.args)
