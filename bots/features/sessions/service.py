"""Text-only sessions: a scheduled room whose messages nobody keeps once it ends.

book → (reminder: the room is prepared, links go out) → open (members join) → warning → end:
  closing notice → scan the room (count messages, find files) → kick + forget everyone →
  delete every file (media admin API) → delete the room (purge + block), polled to completion →
  a one-line notice in each 1:1 → an audit receipt. Each step is idempotent; a failure is
  retried with backoff, counted in /metrics and reported to the therapist, never dropped.
Alcove keeps no content: session-room events leave the inbox once handled (see keep_row)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge.clock import Clock, ms
from bridge.config import Config
from bridge.db.audit_repo import AuditLog
from bridge.delayed import backoff
from bridge.matrix.gateway import MatrixGateway, MatrixSendError, PermanentError
from bridge.matrix.outbox import Outbox
from bridge.metrics import Metrics
from bridge.timers import Timers

from ...bot_types import notice
from ..conversations import rules
from ..conversations.repo import Client
from ..conversations.service import ConversationService
from ..schedule.timeparse import local_text
from .repo import CANCELLED, ENDED, ENDING, LIVE, OPEN, PREPARED, SCHEDULED, Session, SessionRepo

log = logging.getLogger("alcove.sessions")

ROOM_NAME = "Text-only session"
CANCELLED_REASON = "cancelled"


class PurgeFailed(Exception):
    pass


class SessionService:
    def __init__(
        self,
        config: Config,
        repo: SessionRepo,
        gateway: MatrixGateway,
        outbox: Outbox,
        timers: Timers,
        clock: Clock,
        conversations: ConversationService,
        audit: AuditLog,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.repo = repo
        self.gateway = gateway
        self.outbox = outbox
        self.timers = timers
        self.clock = clock
        self.conversations = conversations
        self.audit = audit
        self.metrics = metrics
        self.room_ids: set[str] = set()  # read synchronously by the inbox (keep_row)
        self._locks: dict[int, asyncio.Lock] = {}

    def _lock(self, session_id: int) -> asyncio.Lock:
        """One lifecycle step at a time per session (timers can fire together after a restart)."""
        return self._locks.setdefault(session_id, asyncio.Lock())

    @property
    def cfg(self) -> Any:
        return self.config.sessions

    @property
    def bot(self) -> str:
        return self.gateway.bot_user_id

    def _when(self, at_ms: int) -> datetime:
        return datetime.fromtimestamp(at_ms / 1000, UTC)

    def local(self, at_ms: int) -> str:
        return local_text(self._when(at_ms), self.config.practice.timezone)

    async def _tell(self, key: str, room_id: str | None, text: str) -> None:
        if room_id:
            await self.outbox.send(key, self.bot, room_id, notice(text))

    # ------------------------------------------------------------------ start-up

    async def start(self) -> None:
        """Before anything else: end every session whose end passed while Alcove was down (or
        whose purge was interrupted), then re-arm the timers of the others."""
        self.room_ids = await self.repo.session_rooms()
        now = ms(self.clock)
        for session in await self.repo.unfinished():
            if session.status == ENDING or session.end_at <= now:
                await self.end(session.id, "ended while Alcove was not running")
            else:
                self._arm(session)

    def _arm(self, s: Session) -> None:
        remind_at = s.start_at - self.cfg.reminder_minutes * 60_000
        started = s.start_at <= ms(self.clock)
        if s.status == SCHEDULED and not s.reminded and self.cfg.reminder_minutes and not started:
            self.timers.arm(f"session:{s.id}:remind", self._when(remind_at), self.remind, s.id)
        if s.status in (SCHEDULED, PREPARED):
            self.timers.arm(f"session:{s.id}:open", self._when(s.start_at), self.open, s.id)
        warn_at = s.end_at - self.cfg.warning_minutes * 60_000
        if not s.warned and self.cfg.warning_minutes and warn_at > s.start_at:
            self.timers.arm(f"session:{s.id}:warn", self._when(warn_at), self.warn, s.id)
        self.timers.arm(f"session:{s.id}:end", self._when(s.end_at), self.end_by_timer, s.id)

    def _disarm(self, session_id: int) -> None:
        for step in ("remind", "open", "warn", "end", "transcript", "retry"):
            self.timers.cancel(f"session:{session_id}:{step}")

    # ------------------------------------------------------------------ booking

    async def book(
        self, therapist: str, clients: list[Client], start: datetime, minutes: int, origin: str
    ) -> Session:
        start_ms = int(start.timestamp() * 1000)
        session = await self.repo.add(
            therapist,
            [c.user_id for c in clients],
            start_ms,
            start_ms + minutes * 60_000,
            origin,
            ms(self.clock),
        )
        when = self.local(session.start_at)
        for client in clients:
            dm = await self.conversations.ensure_dm(therapist, client, f"{origin}:{client.user_id}")
            await self._tell(
                f"session-booked:{session.id}:{client.user_id}",
                dm.room_id,
                f"A text-only session with {self.conversations.voice.name(therapist)} is booked "
                f"for {when} ({minutes} minutes). Its messages are deleted when it ends.",
            )
        await self.audit.record(
            therapist,
            "session.booked",
            None,
            None,
            session=session.id,
            clients=len(clients),
            minutes=minutes,
        )
        if session.start_at <= ms(self.clock):
            await self.open(session.id)
        else:
            self._arm(session)
        current = await self.repo.get(session.id)
        assert current is not None
        return current

    async def cancel(self, therapist: str, session_id: int) -> bool:
        session = await self.repo.get(session_id)
        if session is None or session.therapist_id != therapist:
            return False
        if session.status == CANCELLED:  # the same !session cancel handled again (a replay)
            await self._tell_cancelled(session)  # keyed: told once, even if it got this far
            return True
        if session.status not in (SCHEDULED, PREPARED):
            return False
        self._disarm(session_id)
        if session.room_id is None:
            await self.repo.transition(session_id, (SCHEDULED,), CANCELLED)
        else:  # prepared: the empty room exists already, so it is deleted like any other
            await self.end(session_id, CANCELLED_REASON)
            after = await self.repo.get(session_id)
            if after is not None and after.status == ENDED:
                await self.repo.update(session_id, status=CANCELLED)
            # else: the purge is being retried (status ending) and is never dropped
        await self.audit.record(therapist, "session.cancelled", None, None, session=session_id)
        await self._tell_cancelled(session)
        return True

    async def _tell_cancelled(self, session: Session) -> None:
        for client_id in session.clients:
            dm = await self.conversations.repo.dm_of(session.therapist_id, client_id)
            await self._tell(
                f"session-cancelled:{session.id}:{client_id}",
                dm.room_id if dm else None,
                f"The text-only session booked for {self.local(session.start_at)} is cancelled.",
            )

    # ------------------------------------------------------------------ the room

    async def _ensure_room(self, session: Session, with_members: bool) -> str:
        if session.room_id:
            return session.room_id
        body = rules._create_body(
            name=ROOM_NAME,
            invite=[session.therapist_id, *session.clients] if with_members else [],
            staff={session.therapist_id: rules.THERAPIST_LEVEL},
            history="joined",
            is_direct=False,
            topic=(
                f"Text-only session until {self.local(session.end_at)}. Messages and files here "
                "are deleted when it ends; nothing is kept."
            ),
        )
        room_id = await self.gateway.create_room(body)
        self.room_ids.add(room_id)
        await self.repo.update(session.id, room_id=room_id)
        await self.audit.record(session.therapist_id, "room.created", None, room_id, kind="session")
        return room_id

    async def remind(self, session_id: int) -> None:
        async with self._lock(session_id):
            await self._remind(session_id)

    async def _remind(self, session_id: int) -> None:
        session = await self.repo.get(session_id)
        if session is None or session.status != SCHEDULED or session.reminded:
            return
        room_id = await self._ensure_room(session, with_members=False)
        await self.repo.update(session_id, status=PREPARED, reminded=True)
        link = f"https://matrix.to/#/{room_id}"
        text = f"Your text-only session starts at {self.local(session.start_at)}: {link}"
        for client_id in session.clients:
            dm = await self.conversations.repo.dm_of(session.therapist_id, client_id)
            await self._tell(
                f"session-remind:{session_id}:{client_id}", dm.room_id if dm else None, text
            )
        mgmt = await self.conversations.management_room_for(session.therapist_id)
        await self._tell(f"session-remind:{session_id}:therapist", mgmt, text)

    async def open(self, session_id: int) -> None:
        async with self._lock(session_id):
            await self._open(session_id)

    async def _open(self, session_id: int) -> None:
        session = await self.repo.get(session_id)
        if session is None or session.status not in (SCHEDULED, PREPARED):
            return
        room_id = await self._ensure_room(session, with_members=True)
        for user in (session.therapist_id, *session.clients):
            await self.gateway.invite(room_id, user)
        for client_id in session.clients:
            await self.gateway.join_room(client_id, room_id)
        await self.conversations.join_as_staff(session.therapist_id, room_id)
        await self.repo.update(session_id, status=OPEN, reminded=True)
        await self._tell(
            f"session-open:{session_id}",
            room_id,
            f"The session is open until {self.local(session.end_at)}. Nothing written here is "
            "kept: messages and files are deleted at the end. The therapist may ask for a "
            "transcript, which is only made if everyone here agrees.",
        )
        session = await self.repo.get(session_id)
        assert session is not None
        self._arm(session)

    async def warn(self, session_id: int) -> None:
        async with self._lock(session_id):
            await self._warn(session_id)

    async def _warn(self, session_id: int) -> None:
        session = await self.repo.get(session_id)
        if session is None or session.status != OPEN or session.warned or not session.room_id:
            return
        await self.repo.update(session_id, warned=True)
        await self._tell(
            f"session-warn:{session_id}:{session.end_at}",
            session.room_id,
            f"{self.cfg.warning_minutes} minutes left: the session ends at "
            f"{self.local(session.end_at)} and its messages are deleted then.",
        )

    async def extend(self, session: Session, minutes: int) -> Session:
        end_at = session.end_at + minutes * 60_000
        await self.repo.update(session.id, end_at=end_at, warned=False)
        extended = await self.repo.get(session.id)
        assert extended is not None
        self._arm(extended)
        await self.audit.record(
            session.therapist_id,
            "session.extended",
            None,
            session.room_id,
            session=session.id,
            minutes=minutes,
        )
        return extended

    # ------------------------------------------------------------------ the end

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
        delete_id = session.delete_id
        if delete_id is None:
            await self.outbox.send(
                f"session-close:{session.id}",
                self.bot,
                room_id,
                notice("This session has ended. Its messages and files are being deleted now."),
            )
            try:
                await self.outbox.wait(f"session-close:{session.id}", 10)
            except TimeoutError:
                pass  # the room is deleted regardless
            events = await self.gateway.room_events(room_id)
            messages = sum(e.get("type") == "m.room.message" for e in events)
            files = sorted(_media_in(events, self.config.homeserver.domain))
            await self.repo.update(session.id, messages_purged=messages, files_purged=len(files))
            for user in (*session.clients, session.therapist_id):
                await self._remove(room_id, user)
            for mxc in files:
                await self.gateway.delete_media(mxc)
            delete_id = await self.gateway.delete_room(room_id)
            await self.repo.update(session.id, delete_id=delete_id)
        status = await self._wait_for_delete(delete_id)
        if status != "complete":
            # Synapse keeps a failed (or, after its restart, forgotten) delete id for good:
            # forget it, so the next attempt asks for the deletion again.
            await self.repo.update(session.id, delete_id=None)
            raise PurgeFailed(f"room delete {delete_id} ended with status {status}")
        messages, files_count = await self.repo.purge_counts(session.id)
        for client_id in session.clients if reason != CANCELLED_REASON else ():
            dm = await self.conversations.repo.dm_of(session.therapist_id, client_id)
            await self._tell(
                f"session-ended:{session.id}:{client_id}",
                dm.room_id if dm else None,
                "Your text-only session has ended; its messages have been deleted.",
            )
        await self._receipt(session, reason, delete_id, messages, files_count, status)

    async def _remove(self, room_id: str, user: str) -> None:
        try:
            await self.gateway.kick(room_id, user, "The session has ended")
        except PermanentError:
            pass  # not (or no longer) a member
        if self.gateway.can_act_as(user):
            try:
                await self.gateway.forget(user, room_id)
            except PermanentError:
                pass

    async def _wait_for_delete(self, delete_id: str) -> str:
        status = "unknown"
        for _ in range(int(300 / self.cfg.purge_poll_seconds)):
            try:
                status = await self.gateway.delete_status(delete_id)
            except PermanentError as e:
                if e.status == 404:
                    return "unknown"  # Synapse forgot it (restart): ask again
                raise
            if status in ("complete", "failed"):
                return status
            await self.clock.sleep(self.cfg.purge_poll_seconds)
        raise PurgeFailed(f"room delete {delete_id} still {status} after 5 minutes")

    async def _receipt(
        self,
        session: Session,
        reason: str,
        delete_id: str | None,
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
            delete_id=delete_id,
            status=status,
        )
        log.info(
            "Session %d ended (%s): %d messages and %d files purged",
            session.id,
            reason,
            messages,
            files,
        )


def _media_in(events: list[dict[str, Any]], domain: str) -> set[str]:
    """Every local mxc:// URI referenced by the events (files, images, thumbnails, avatars)."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and value.startswith(f"mxc://{domain}/"):
            found.add(value)

    for event in events:
        walk(event.get("content"))
    return found
