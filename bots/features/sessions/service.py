"""Text-only sessions: a scheduled room whose messages nobody keeps once it ends.

book → (reminder: the room is prepared, links go out) → open (members join) → warning → end
(ending.py: kick, purge the history and every recorded file; later delete the room).
Alcove keeps no content: a handled session-room event leaves only its id in the inbox, and a
file's mxc URI is recorded as it arrives so the end deletes it."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from bridge.clock import Clock, ms
from bridge.config import Config
from bridge.db.audit_repo import AuditLog
from bridge.matrix.gateway import MatrixGateway
from bridge.matrix.outbox import Outbox
from bridge.metrics import Metrics
from bridge.timers import Timers

from ..conversations import rules
from ..conversations.repo import Client, Room
from ..conversations.service import ConversationService
from ..schedule.timeparse import local_text
from .ending import CANCELLED_REASON, DecryptEvents, ForgetKeys, Scrub, SessionEnding
from .repo import CANCELLED, ENDED, ENDING, OPEN, PREPARED, SCHEDULED, Session, SessionRepo

log = logging.getLogger("alcove.sessions")

ROOM_NAME = "Text-only session"


class SessionService(SessionEnding):
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
        scrub: Scrub | None = None,
        forget_keys: ForgetKeys | None = None,
        decrypt_events: DecryptEvents | None = None,
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
        self.scrub = scrub
        self.forget_keys = forget_keys
        self.decrypt_events = decrypt_events
        self.room_ids: set[str] = set()  # rooms of live sessions (media are recorded there)
        self._locks: dict[int, asyncio.Lock] = {}

    def _lock(self, session_id: int) -> asyncio.Lock:
        """One lifecycle step at a time per session (timers can fire together after a restart)."""
        return self._locks.setdefault(session_id, asyncio.Lock())

    def local(self, at_ms: int) -> str:
        return local_text(self._when(at_ms), self.config.practice.timezone)

    async def of_therapist(self, therapist: str) -> list[Session]:
        return await self.repo.of_therapist(therapist)

    async def by_room(self, room_id: str) -> Session | None:
        return await self.repo.by_room(room_id)

    async def live_with(self, client_id: str) -> list[int]:
        """Sessions not ended yet that include the client (their erasure waits for these)."""
        return [s.id for s in await self.repo.unfinished() if client_id in s.clients]

    async def live_rooms(self) -> list[tuple[str, str]]:
        """(room id, therapist) of every session room not ending or ended (its space)."""
        return await self.repo.live_rooms()

    async def pending_purge(self) -> int:
        """How many ended sessions still wait for their purge (a metric)."""
        return await self.repo.pending_purge()

    async def next_session_at(self, therapist: str, client_id: str) -> str | None:
        """When the client's next session with this therapist starts (local time), if any."""
        found = await self.repo.next_for_client(therapist, client_id, ms(self.clock))
        return self.local(found.start_at) if found else None

    # ------------------------------------------------------------------ start-up

    async def start(self) -> None:
        """Before anything else: end every session whose end passed while Alcove was down (or
        whose purge was interrupted), then re-arm the timers of the others."""
        self.room_ids = await self.repo.session_rooms()
        now = ms(self.clock)
        # Read before the overdue ones are ended: each of those arms its room's timer itself.
        awaiting_deletion = await self.repo.rooms_awaiting_deletion()
        for session in await self.repo.unfinished():
            if session.status == ENDING or session.end_at <= now:
                await self.end(session.id, "ended while Alcove was not running")
            else:
                self._arm(session)
        for session in awaiting_deletion:
            self.timers.arm(
                f"session:{session.id}:room",
                self._when(now),
                self.remove_room,
                session.id,
                session.status != CANCELLED,
            )

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
            dm = await self.conversations.dm_of(session.therapist_id, client_id)
            await self._tell(
                f"session-cancelled:{session.id}:{client_id}",
                dm.room_id if dm else None,
                f"The text-only session booked for {self.local(session.start_at)} is cancelled.",
            )

    # ------------------------------------------------------------------ the room

    async def _ensure_room(self, session: Session, with_members: bool) -> str:
        if session.room_id:
            return session.room_id
        body = rules.create_body(
            name=ROOM_NAME,
            invite=[session.therapist_id, *session.clients] if with_members else [],
            staff={session.therapist_id: rules.THERAPIST_LEVEL},
            history="joined",
            is_direct=False,
            topic=(
                f"Text-only session until {self.local(session.end_at)}. Messages and files here "
                "are deleted when it ends; nothing is kept."
            ),
            encrypted=self.config.encryption.encrypts("session"),
        )
        room_id = await self.gateway.create_room(body)
        self.room_ids.add(room_id)
        await self.repo.update(session.id, room_id=room_id)
        await self.audit.record(session.therapist_id, "room.created", None, room_id, kind="session")
        await self.conversations.file_room(
            Room(room_id, "session", session.therapist_id, None, None)
        )
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
            dm = await self.conversations.dm_of(session.therapist_id, client_id)
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
