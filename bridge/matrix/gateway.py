"""The Matrix side as Alcove sees it: a small protocol, so features and the outbox can be tested
against a recording fake and run against the real homeserver through mautrix."""

from __future__ import annotations

from typing import Any, Protocol


class MatrixSendError(Exception):
    """A request the homeserver did not accept."""

    def __init__(self, message: str, *, status: int | None = None, errcode: str | None = None):
        super().__init__(message)
        self.status = status
        self.errcode = errcode


class TemporaryError(MatrixSendError):
    """Worth retrying: 5xx, 429 (with ``retry_after`` seconds when the server said), network."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        errcode: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, status=status, errcode=errcode)
        self.retry_after = retry_after


class PermanentError(MatrixSendError):
    """Retrying will not help (403 not in room, 400 bad event, ...)."""


class MatrixGateway(Protocol):
    """Everything Alcove asks of the homeserver. Implementations raise TemporaryError or
    PermanentError; nothing else escapes."""

    @property
    def bot_user_id(self) -> str: ...

    async def send_event(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        txn_id: str,
        device_id: str | None,
    ) -> str:
        """Send as ``sender`` with a client transaction id; returns the event id."""

    async def ensure_device(self, user_id: str, device_id: str) -> bool:
        """Make sure ``device_id`` exists for ``user_id``. False if it cannot be created."""

    async def join_room(self, user_id: str, room_id: str) -> None: ...

    async def leave_room(self, user_id: str, room_id: str) -> None: ...
