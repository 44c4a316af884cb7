"""The end of a text-only session, in two phases (README "Text-only sessions").

1. At the end: closing notice → power levels let only the bot post → the timeline scanned for
   files (added to those recorded as events arrived) → the bot sets a content-free state event
   (the topic) as the purge point → purge-history admin API (every message before it, local
   ones too; the room's *state* stays, memberships included) → every file deleted → each
   member re-joins (a content-free marker) and is kicked, so even an offline device's next
   /sync carries the leave (see _remove) → a notice in each 1:1 → the audit receipt. The
   session is over and its content gone from the homeserver.
2. Later: the room, which by now holds only state (name, topic, who was a member), is deleted
   (admin room delete, purge + block) once every member device has been seen by the homeserver
   after the leave — an offline device syncing from its old token gets the room in
   ``rooms.leave`` meanwhile — or once ``sessions.room_keep_days`` have passed.

Nobody is made to forget the room before phase 2: forgetting hides the room from /sync, so an
offline device would never see the leave. Each step is idempotent; a failure is retried with
backoff, counted in /metrics and reported to the therapist, never dropped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from bridge.clock import Clock, ms
from bridge.config import Config
from bridge.db.audit_repo import AuditLog
from bridge.delayed import backoff
from bridge.dispatch import mxc_uris
from bridge.matrix.gateway import MatrixGateway, MatrixSendError, PermanentError
from bridge.matrix.outbox import DEVICE_ID, Outbox
from bridge.metrics import Metrics
from bridge.timers import Timers

from ...bot_types import notice
from ..conversations import rules
from .repo import CANCELLED, ENDED, ENDING, LIVE, Session, SessionRepo

if TYPE_CHECKING:
    from ..conversations.service import ConversationService

log = logging.getLogger("alcove.sessions")

CANCELLED_REASON = "cancelled"
ENDED_TOPIC = "This session has ended. Its messages and files have been deleted."
ENDED_MARKER = "org.alcove.session_ended"
# At the end only the bot (the creator) may send anything.
_LOCKED = {**rules.power_levels({}), "events_default": rules.BOT_ONLY, "events": {}}

Scrub = Callable[[], Awaitable[None]]
ForgetKeys = Callable[[str], Awaitable[None]]
"""Discard a room's Megolm sessions from the crypto store (bridge/crypto ``forget_room``)."""
DecryptEvents = Callable[[list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]]
"""A room's history with its encrypted events decrypted in memory by the bot, as a member
(bridge/crypto ``decrypt_history``); one it cannot decrypt stays ``m.room.encrypted``."""
ENCRYPTED = "m.room.encrypted"


class PurgeFailed(Exception):
    pass


class SessionEnding:
    """The end of a session; mixed into SessionService, which provides these attributes."""

    config: Config
    repo: SessionRepo
    gateway: MatrixGateway
    outbox: Outbox
    timers: Timers
    clock: Clock
    conversations: ConversationService
    audit: AuditLog
    metrics: Metrics | None
    room_ids: set[str]
    scrub: Scrub | None
    forget_keys: ForgetKeys | None
    decrypt_events: DecryptEvents | None

    @property
    def cfg(self) -> Any:
        return self.config.sessions

    @property
    def bot(self) -> str:
        return self.gateway.bot_user_id

    def _lock(self, session_id: int) -> asyncio.Lock:
        raise NotImplementedError

    def _disarm(self, session_id: int) -> None:
        raise NotImplementedError

    def _when(self, at_ms: int) -> datetime:
        return datetime.fromtimestamp(at_ms / 1000, UTC)

    async def history(self, room_id: str) -> list[dict[str, Any]]:
        """The room's events, oldest first, as the bot reads them: in an encrypted session room
        decrypted in memory (nothing of them is stored)."""
        events = await self.gateway.room_events(room_id)
        if self.decrypt_events is not None and any(e.get("type") == ENCRYPTED for e in events):
            events = await self.decrypt_events(events)
        return events

    async def _tell(self, key: str, room_id: str | None, text: str) -> None:
        if room_id:
            await self.outbox.send(key, self.bot, room_id, notice(text))

    # ------------------------------------------------------------------ media, as they arrive

    async def on_event(self, event: dict[str, Any]) -> None:
        """Every event of a live session room: record the files it carries *now*, before a
        redaction could strip them from the content the end would scan."""
        room_id = event.get("room_id")
        if room_id not in self.room_ids:
            return
        found = sorted(media_in([event], self.config.homeserver.domain))
        if not found:
            return
        session = await self.repo.by_room(str(room_id))
        if session is not None:
            await self.repo.record_media(session.id, found)

    # ------------------------------------------------------------------ phase 1: the end

    async def end_by_timer(self, session_id: int) -> None:
        await self.end(session_id, "time is up")

    async def end(self, session_id: int, reason: str) -> None:
        async with self._lock(session_id):
            await self._end(session_id, reason)

    async def _end(self, session_id: int, reason: str) -> None:
        session = await self.repo.get(session_id)
        if session is None or session.status in (ENDED, CANCELLED):
            return
        await self.repo.transition(session_id, (*LIVE, ENDING), ENDING)
        self._disarm(session_id)
        if session.room_id:  # out of the therapist's "Sessions" space from the end on
            await self.conversations.unfile_room(session.room_id, session.therapist_id)
        try:
            await self._purge(session, reason)
        except (MatrixSendError, PurgeFailed, TimeoutError) as e:
            await self._purge_failed(session, e)

    async def _purge_failed(self, session: Session, error: Exception) -> None:
        attempts = session.purge_attempts + 1
        await self.repo.update(session.id, purge_attempts=attempts, purge_error=str(error)[:300])
        if self.metrics is not None:
            self.metrics.session_purge_failures.inc()
        delay = backoff(attempts, self.cfg.purge_retry_seconds, cap=3600)
        log.error(
            "Purging session %d failed (attempt %d): %s; retrying in %.0fs",
            session.id,
            attempts,
            error,
            delay,
        )
        if attempts == 1:
            mgmt = await self.conversations.management_room_for(session.therapist_id)
            await self._tell(
                f"session-purge-failed:{session.id}",
                mgmt,
                f"Deleting text-only session #{session.id} did not complete "
                f"({type(error).__name__}). I keep retrying and will not give up; "
                "an admin can see it in /metrics.",
            )
        retry_at = self._when(ms(self.clock)) + timedelta(seconds=delay)
        self.timers.arm(f"session:{session.id}:retry", retry_at, self.end_by_timer, session.id)

    async def _purge(self, session: Session, reason: str) -> None:
        room_id = session.room_id
        if room_id is None:
            await self._receipt(session, reason, None, 0, 0, "nothing created")
            return
        if session.delete_id is not None and session.left_at is None:
            # Ended by an Alcove older than the two phases: everyone was kicked and the room's
            # deletion asked for already. Finish that (polled), then the receipt.
            await self._delete_room(session, bound_reached=False)
            messages, files_count = await self.repo.purge_counts(session.id)
            await self._receipt(session, reason, None, messages, files_count, "complete")
            return
        members = (*session.clients, session.therapist_id)
        if session.left_at is None:
            await self.outbox.send(
                f"session-close:{session.id}",
                self.bot,
                room_id,
                notice("This session has ended. Its messages and files are being deleted now."),
            )
            try:
                await self.outbox.wait(f"session-close:{session.id}", 10)
            except TimeoutError:
                pass  # the messages are deleted regardless
        # Nobody but the bot may post from here on: nothing escapes the scan and the purge.
        await self.gateway.send_state(self.bot, room_id, "m.room.power_levels", "", _LOCKED)
        events = await self.history(room_id)
        if not await self.repo.messages_counted(session.id):  # a retry finds them purged
            # (a message the bot could not decrypt is a message all the same)
            messages = sum(e.get("type") in ("m.room.message", ENCRYPTED) for e in events)
            await self.repo.update(session.id, messages_purged=messages)
        await self.repo.record_media(
            session.id, sorted(media_in(events, self.config.homeserver.domain))
        )
        files = await self.repo.media(session.id)
        await self.repo.update(session.id, files_purged=len(files))
        # The purge point is a state event of the bot's with no client text: Synapse keeps
        # the event it purges up to (and all state), and deletes every message before it.
        point = await self.gateway.send_state(
            self.bot, room_id, "m.room.topic", "", {"topic": ENDED_TOPIC}
        )
        purge_id = await self.gateway.purge_history(room_id, point)
        status = await self._wait_for(self.gateway.purge_status, purge_id, ("complete", "failed"))
        if status != "complete":
            raise PurgeFailed(f"purge of the history {purge_id} ended with status {status}")
        for mxc in files:
            await self.gateway.delete_media(mxc)
        for user in members:
            await self._remove(room_id, user, session.id)
        if session.left_at is None:
            await self.repo.update(session.id, left_at=ms(self.clock))
        if self.forget_keys is not None:  # nobody is left to send or read: the keys go too
            await self.forget_keys(room_id)
        await self._scrub()
        # The room (state only now) goes later, from its own timer: see _remove_room.
        self.timers.arm(
            f"session:{session.id}:room",
            self._when(ms(self.clock)),
            self.remove_room,
            session.id,
            reason != CANCELLED_REASON,
        )
        messages, files_count = await self.repo.purge_counts(session.id)
        for client_id in session.clients if reason != CANCELLED_REASON else ():
            dm = await self.conversations.dm_of(session.therapist_id, client_id)
            await self._tell(
                f"session-ended:{session.id}:{client_id}",
                dm.room_id if dm else None,
                "Your text-only session has ended; its messages have been deleted.",
            )
        await self._receipt(session, reason, purge_id, messages, files_count, status)

    async def _remove(self, room_id: str, user: str, session_id: int) -> None:
        """Kick a member so that every device of theirs learns it, even one offline now.

        A device syncing from an old token is told it left only if the homeserver finds it
        joined at that token, or finds a join after it. The purge turned every event before
        the purge point into an outlier, so there is no state "at" an old token any more:
        the member first re-sends their join (a content-free marker, as them — Alcove acts
        for its clients, and for staff through the double puppet), then is kicked. Not
        forgotten: forgetting hides the room, leave included, from the user's /sync."""
        if self.gateway.can_act_as(user):
            current = await self.gateway.get_state(room_id, "m.room.member", user)
            if current is not None and current.get("membership") == "join":
                marker = {**current, ENDED_MARKER: session_id}
                try:
                    await self.gateway.send_state(user, room_id, "m.room.member", user, marker)
                except PermanentError:
                    pass  # left meanwhile
        try:
            await self.gateway.kick(room_id, user, "The session has ended")
        except PermanentError:
            pass  # not (or no longer) a member

    async def _wait_for(
        self, poll: Callable[[str], Awaitable[str]], task_id: str, final: tuple[str, ...]
    ) -> str:
        status = "unknown"
        for _ in range(int(300 / self.cfg.purge_poll_seconds)):
            try:
                status = await poll(task_id)
            except PermanentError as e:
                if e.status == 404:
                    return "unknown"  # Synapse forgot it (restart): ask again
                raise
            if status in final:
                return status
            await self.clock.sleep(self.cfg.purge_poll_seconds)
        raise PurgeFailed(f"{task_id} still {status} after 5 minutes")

    async def _receipt(
        self,
        session: Session,
        reason: str,
        purge_id: str | None,
        messages: int,
        files: int,
        status: str,
    ) -> None:
        if session.room_id:
            self.room_ids.discard(session.room_id)
        await self.repo.update(session.id, status=ENDED, purge_error=None)
        await self.repo.drop_transcript_request(session.id)
        await self.audit.record(
            self.bot,
            "session.purged",
            session.therapist_id,
            session.room_id,
            session=session.id,
            start=session.start_at,
            end=session.end_at,
            reason=reason,
            messages_purged=messages,
            files_purged=files,
            purge_id=purge_id,
            status=status,
        )
        log.info(
            "Session %d ended (%s): %d messages and %d files purged",
            session.id,
            reason,
            messages,
            files,
        )

    async def _scrub(self) -> None:
        """Deleted rows leave their bytes in database files (free pages, WAL) until scrubbed."""
        if self.scrub is not None:
            try:
                await self.scrub()
            except Exception:
                log.exception("Scrubbing the databases after a purge failed")

    # ------------------------------------------------------------------ phase 2: the room

    async def remove_room(self, session_id: int, wait_for_devices: bool = True) -> None:
        """The room timer. A cancelled session's room never had members: nobody's device
        waits for a leave there (``wait_for_devices`` False)."""
        async with self._lock(session_id):
            await self._remove_room(session_id, wait_for_devices)

    async def _remove_room(self, session_id: int, wait_for_devices: bool) -> None:
        session = await self.repo.get(session_id)
        if (
            session is None
            or session.room_id is None
            or session.left_at is None
            or session.room_deleted_at is not None
        ):
            return
        key = f"session:{session_id}:room"
        now = ms(self.clock)
        deadline = session.left_at + int(self.cfg.room_keep_days * 86_400_000)
        try:
            behind = 0
            if session.delete_id is None and wait_for_devices and now < deadline:
                behind = await self._devices_behind(session)
                if behind:
                    check = min(now + int(self.cfg.room_check_seconds * 1000), deadline)
                    self.timers.arm(key, self._when(check), self.remove_room, session_id, True)
                    return
            await self._delete_room(session, now >= deadline)
        except (MatrixSendError, PurgeFailed, TimeoutError) as e:
            if self.metrics is not None:
                self.metrics.session_purge_failures.inc()
            delay = backoff(session.purge_attempts + 1, self.cfg.purge_retry_seconds, cap=3600)
            await self.repo.update(session_id, purge_attempts=session.purge_attempts + 1)
            log.error("Deleting the room of session %d failed: %s; retrying", session_id, e)
            retry = self._when(now) + timedelta(seconds=delay)
            self.timers.arm(key, retry, self.remove_room, session_id, wait_for_devices)

    async def _devices_behind(self, session: Session) -> int:
        """Member devices the homeserver has not seen since the leave (so it may not have
        synced it yet). Alcove's own acting devices never sync and are left out."""
        assert session.left_at is not None
        behind = 0
        for user in (*session.clients, session.therapist_id):
            try:
                devices = await self.gateway.user_devices(user)
            except PermanentError as e:
                if e.status == 404:
                    continue  # the account is gone
                raise
            for device in devices:
                if device.get("device_id") == DEVICE_ID:
                    continue
                seen = device.get("last_seen_ts")
                if not isinstance(seen, int) or seen <= session.left_at:
                    behind += 1
        return behind

    async def _delete_room(self, session: Session, bound_reached: bool) -> None:
        assert session.room_id is not None
        delete_id = session.delete_id
        if delete_id is None:
            delete_id = await self.gateway.delete_room(session.room_id)
            await self.repo.update(session.id, delete_id=delete_id)
        status = await self._wait_for(self.gateway.delete_status, delete_id, ("complete", "failed"))
        if status != "complete":
            # Synapse keeps a failed (or, after its restart, forgotten) delete id for good:
            # forget it, so the next attempt asks for the deletion again.
            await self.repo.update(session.id, delete_id=None)
            raise PurgeFailed(f"room delete {delete_id} ended with status {status}")
        await self.repo.update(session.id, room_deleted_at=ms(self.clock))
        await self.audit.record(
            self.bot,
            "session.room_deleted",
            session.therapist_id,
            session.room_id,
            session=session.id,
            delete_id=delete_id,
            after=("the bound" if bound_reached else "every device saw the leave"),
        )
        await self._scrub()


def media_in(events: list[dict[str, Any]], domain: str) -> set[str]:
    """Every local mxc:// URI referenced by the events (files, images, thumbnails, avatars)."""
    local = f"mxc://{domain}/"
    return {
        uri for event in events for uri in mxc_uris(event.get("content")) if uri.startswith(local)
    }
