"""Recording fakes: they remember what was asked of them and can be told to fail. They do not
pretend to be a homeserver; integration tests use a real Synapse for that."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bridge.matrix.gateway import MatrixSendError


class FakeClock:
    """Wall time is settable; monotonic follows the real clock so asyncio timers still work."""

    def __init__(self, start: datetime | None = None) -> None:
        self._wall = (start or datetime(2026, 11, 21, 12, 0, tzinfo=UTC)).timestamp()
        self._offset = 0.0

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
        if self.failures:
            raise self.failures.pop(0)
        # Like Synapse: the same (sender, device, txn id) yields the same event, sent once.
        key = (f"{sender}/{device_id}", txn_id)
        if key not in self._txn_events:
            self._txn_events[key] = f"$event{len(self._txn_events)}"
            self.sent.append(attempt)
        return self._txn_events[key]

    async def ensure_device(self, user_id: str, device_id: str) -> bool:
        self.devices.append((user_id, device_id))
        return self.device_ok

    async def join_room(self, user_id: str, room_id: str) -> None:
        self.joined.append((user_id, room_id))

    async def leave_room(self, user_id: str, room_id: str) -> None:
        self.left.append((user_id, room_id))

    def bodies(self, room_id: str | None = None) -> list[str]:
        return [
            str(s.content.get("body")) for s in self.sent if room_id is None or s.room_id == room_id
        ]
