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

    def can_act_as(self, user_id: str) -> bool:
        """True if Alcove may act as this user (own namespace, or double puppet installed)."""

    async def register_user(self, localpart: str) -> str:
        """Register a user in Alcove's exclusive namespace (idempotent); returns the user id."""

    async def set_password(self, user_id: str, password: str) -> None: ...

    async def set_displayname(self, user_id: str, name: str) -> None: ...

    async def create_room(self, body: dict[str, Any]) -> str:
        """createRoom as the bot; returns the room id."""

    async def invite(self, room_id: str, user_id: str) -> None: ...

    async def kick(self, room_id: str, user_id: str, reason: str) -> None: ...

    async def forget(self, user_id: str, room_id: str) -> None: ...

    async def deactivate(self, user_id: str, erase: bool) -> None:
        """Deactivate an account (admin API); ``erase``: GDPR erasure of its profile and, for
        users who join later, its messages. Idempotent."""

    async def send_state(
        self, sender: str, room_id: str, event_type: str, state_key: str, content: dict[str, Any]
    ) -> str: ...

    async def get_state(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any] | None: ...

    async def get_account_data(self, user_id: str, data_type: str) -> dict[str, Any] | None: ...

    async def set_account_data(
        self, user_id: str, data_type: str, content: dict[str, Any]
    ) -> None: ...

    async def user_exists(self, user_id: str) -> bool | None: ...

    async def room_members(self, room_id: str) -> dict[str, str]:
        """The room's current members as the bot sees them: user id -> membership
        (join, invite, leave, ban, knock)."""

    async def redact(self, room_id: str, event_id: str, reason: str) -> None:
        """Redact as the bot (it is the room creator)."""

    async def room_events(self, room_id: str) -> list[dict[str, Any]]:
        """Every timeline event of a room the bot is in, oldest first."""

    async def upload(self, data: bytes, filename: str, content_type: str) -> str:
        """Upload as the bot; returns the mxc:// URI."""

    async def delete_media(self, mxc: str) -> bool:
        """Delete a local media file (admin API). False if it was already gone."""

    async def delete_room(self, room_id: str) -> str:
        """Admin room delete v2 with purge and block; returns the delete id to poll."""

    async def delete_status(self, delete_id: str) -> str:
        """'purging', 'shutting_down', 'complete' or 'failed'."""

    async def purge_history(self, room_id: str, up_to_event_id: str) -> str:
        """Purge-history admin API (local events too, state kept); returns the purge id."""

    async def purge_status(self, purge_id: str) -> str:
        """'active', 'complete' or 'failed'."""

    async def user_devices(self, user_id: str) -> list[dict[str, Any]]:
        """The user's devices (admin API): ``device_id``, ``last_seen_ts`` (ms or None)."""

    async def email_owner(self, email: str) -> str | None:
        """Who holds this email 3PID on the homeserver (admin API), if anyone."""

    async def set_email(self, user_id: str, email: str | None) -> None:
        """The user's email 3PIDs become exactly ``email`` (none for None), admin API."""

    async def set_email_pusher(self, user_id: str, email: str | None) -> None:
        """As the user: an email pusher for ``email`` (``m.email``); any other email pusher of
        theirs is removed (all of them for None)."""

    async def unredacted_event(self, room_id: str, event_id: str) -> dict[str, Any]:
        """The event as the bot (a server admin) sees it, with a redacted event's original
        content while the homeserver still keeps it (MSC2815), and ``unsigned.redacted_because``
        when it was redacted. PermanentError with errcode
        ``FI.MAU.MSC2815_UNREDACTED_CONTENT_DELETED`` once it no longer does."""

    async def room_state(self, room_id: str) -> list[dict[str, Any]]:
        """Every current state event of a room the bot is in."""

    async def set_room_tag(
        self, user_id: str, room_id: str, tag: str, content: dict[str, Any]
    ) -> None:
        """Put a tag (``m.lowpriority``, ``m.favourite``) on a room for a user, as them."""

    async def delete_room_tag(self, user_id: str, room_id: str, tag: str) -> None:
        """Remove a user's tag from a room, as them (no error when it was not there)."""

    async def set_push_rule(
        self, user_id: str, kind: str, rule_id: str, rule: dict[str, Any]
    ) -> None:
        """Create or replace a push rule of the user's ``global`` ruleset, as them."""

    async def delete_push_rule(self, user_id: str, kind: str, rule_id: str) -> bool:
        """Delete a push rule of the user's, as them. False when there was none."""
