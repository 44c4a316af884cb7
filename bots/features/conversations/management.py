"""Management rooms Alcove owns: one per staff member, created by the bot, reused across
restarts, re-created if the staff member left it. Client names and secrets go only there, and
secrets only while its members are exactly that staff member and the bot.

Also what Alcove says in rooms it will not adopt: an encrypted room it cannot read (once, with
a link to the management room) and a DM a client opens with the bot (once, then it leaves)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from bridge.clock import Clock, ms
from bridge.config import Config
from bridge.db.audit_repo import AuditLog
from bridge.matrix.gateway import MatrixGateway, MatrixSendError, PermanentError, TemporaryError
from bridge.matrix.outbox import DEVICE_ID, Outbox
from bridge.metrics import Metrics
from bridge.timers import Timers

from ...bot_types import notice
from ..voice import TherapistVoice
from . import rules
from .repo import Client, ConversationRepo, Secret

log = logging.getLogger("alcove.management")

SECRET_TTL_SECONDS = 24 * 3600
"""A message with an initial password is redacted at the latest this long after it was sent."""
SIGNIN_POLL_SECONDS = 300.0
"""How often the homeserver is asked whether a client with a pending password signed in (a
message from the client is checked at once)."""

PRESENT = ("join", "invite")


class SecretWithheld(Exception):
    """A secret was not sent: the management room is not private (the message says why)."""


def link(room_id: str) -> str:
    return f"https://matrix.to/#/{room_id}"


class ManagementRooms:
    def __init__(
        self,
        config: Config,
        gateway: MatrixGateway,
        outbox: Outbox,
        repo: ConversationRepo,
        audit: AuditLog,
        clock: Clock,
        voice: TherapistVoice,
        timers: Timers | None = None,
        metrics: Metrics | None = None,
        *,
        secret_ttl_seconds: float = SECRET_TTL_SECONDS,
        signin_poll_seconds: float = SIGNIN_POLL_SECONDS,
    ) -> None:
        self.config = config
        self.gateway = gateway
        self.outbox = outbox
        self.repo = repo
        self.audit = audit
        self.clock = clock
        self.voice = voice
        self.timers = timers or Timers()
        self.metrics = metrics
        self.secret_ttl_ms = int(secret_ttl_seconds * 1000)
        self.poll_seconds = signin_poll_seconds
        self.help_text: Callable[[str], str] = lambda role: "Send !help for your commands."

    @property
    def bot(self) -> str:
        return self.gateway.bot_user_id

    # ------------------------------------------------------------------ the owned rooms

    async def room_for(self, user_id: str) -> str | None:
        return await self.repo.management_room(user_id)

    async def ensure_all(self) -> bool:
        """At start-up: every staff member in the config has an owned management room. False
        when the homeserver failed for one of them (the others are done)."""
        done = True
        for member in self.config.staff:
            try:
                await self.ensure(member.user_id)
            except MatrixSendError as e:
                log.error("Could not set up the management room of %s: %s", member.user_id, e)
                done = False
        return done

    async def ensure(self, staff: str) -> str | None:
        """The staff member's owned management room: the recorded one while they are still in
        it (joined or invited), else a new one. None if their account does not exist."""
        row = await self.repo.management_row(staff)
        if row is not None and row[1] and await self._still_there(row[0], staff):
            await self._mark_direct(staff, row[0])
            return row[0]
        if await self.gateway.user_exists(staff) is False:
            log.warning("Staff member %s has no account on the homeserver yet", staff)
            return None
        room_id = await self.gateway.create_room(
            rules.management_body(staff, encrypted=self.config.encryption.encrypts("management"))
        )
        await self.repo.set_management_room(staff, room_id, owned=True)
        await self.audit.record(self.bot, "room.created", staff, room_id, kind="management")
        log.info("Created the management room %s for %s", room_id, staff)
        await self._join_and_mark(staff, room_id)
        role = self.config.staff_member(staff)
        welcome = (
            "This is your management room with Alcove. Only you and I are in it: client names, "
            "initial passwords and transcripts are sent only here. Type commands here (or in "
            "any conversation for commands about it).\n\n"
        )
        await self.outbox.send(
            f"mgmt-welcome:{room_id}",
            self.bot,
            room_id,
            notice(welcome + self.help_text(role.role if role else "therapist")),
        )
        if row is not None and row[0] != room_id:
            await self._tell_moved(staff, row[0], room_id)
        return room_id

    async def _still_there(self, room_id: str, staff: str) -> bool:
        try:
            members = await self.gateway.room_members(room_id)
        except PermanentError as e:
            log.warning("Management room %s is not readable (%s); making a new one", room_id, e)
            return False
        return members.get(self.bot) == "join" and members.get(staff) in PRESENT

    async def _join_and_mark(self, staff: str, room_id: str) -> None:
        """Accept the invite and mark the room as a DM with the bot, as the staff member
        (double puppet), where Alcove may act for them; otherwise the invite waits for them."""
        if await self.voice.speaker(staff) != staff:
            return
        try:
            await self.gateway.join_room(staff, room_id)
        except PermanentError as e:
            log.warning("Could not join %s to their management room: %s", staff, e)
        await self._mark_direct(staff, room_id)

    async def _mark_direct(self, staff: str, room_id: str) -> None:
        if await self.voice.speaker(staff) != staff:
            return
        current = await self.gateway.get_account_data(staff, "m.direct") or {}
        rooms = list(current.get(self.bot, []))
        if room_id not in rooms:
            await self.gateway.set_account_data(
                staff, "m.direct", {**current, self.bot: [*rooms, room_id]}
            )

    async def _tell_moved(self, staff: str, old: str, new: str) -> None:
        """A management room from before v9 (a DM the staff member opened) still in use."""
        try:
            members = await self.gateway.room_members(old)
        except MatrixSendError:
            return
        if members.get(self.bot) == "join" and members.get(staff) == "join":
            await self.outbox.send(
                f"mgmt-moved:{old}:{new}",
                self.bot,
                old,
                notice(
                    f"Your management room with me is now {link(new)}. Client names and "
                    "secrets go only there; this chat still takes commands."
                ),
            )

    # ------------------------------------------------------------------ secrets

    async def private_problem(self, staff: str) -> str | None:
        """Why a secret cannot go to the staff member's management room now, or None. A room
        they left is replaced first (``ensure``)."""
        room = await self.ensure(staff)
        if room is None:
            return (
                "I did not send it: I could not set up a management room for you (is your "
                "account on this homeserver?)."
            )
        members = {u for u, m in (await self.gateway.room_members(room)).items() if m in PRESENT}
        if members == {staff, self.bot}:
            return None
        if self.metrics is not None:
            self.metrics.secrets_withheld.inc()
        others = len(members - {staff, self.bot})
        log.warning("Withheld a secret: management room %s of %s is not private", room, staff)
        if staff not in members:
            return (
                "I did not send it: you are not in your management room with me; accept its "
                "invite first."
            )
        return (
            f"I did not send it: your management room with me ({link(room)}) must hold only "
            f"you and me, and {others} other member(s) are in it or invited. Ask an admin to "
            "remove them, or leave that room and I will open a new one."
        )

    async def send_secret(
        self,
        staff: str,
        key: str,
        content: dict[str, object],
        *,
        redact_when_signed_in: str | None = None,
    ) -> str | None:
        """Send a secret into the staff member's management room after checking its members.
        Returns None when sent, else the sentence saying why not (nothing was sent). With
        ``redact_when_signed_in`` (a client id) the message is redacted once that client has
        signed in, or after the TTL."""
        problem = await self.private_problem(staff)
        if problem is not None:
            return problem
        room = await self.room_for(staff)
        assert room is not None
        await self.outbox.send(key, self.bot, room, dict(content))
        if redact_when_signed_in is not None:
            now = ms(self.clock)
            secret = Secret(key, room, staff, redact_when_signed_in, now, now + self.secret_ttl_ms)
            await self.repo.add_secret(secret)
            self._arm(secret, now + int(self.poll_seconds * 1000))
        return None

    async def start(self) -> None:
        """Re-arm the redaction of every secret still readable (checked at once)."""
        now = ms(self.clock)
        for secret in await self.repo.secrets():
            self._arm(secret, now)

    def _arm(self, secret: Secret, at_ms: int) -> None:
        when = datetime.fromtimestamp(min(at_ms, secret.expires_at) / 1000, UTC)
        self.timers.arm(f"secret:{secret.outbox_key}", when, self.check_secret, secret.outbox_key)

    async def client_active(self, client_id: str) -> None:
        """A client sent something: if a password of theirs is still readable, check now."""
        for secret in await self.repo.secrets(client_id):
            await self.check_secret(secret.outbox_key)

    async def check_secret(self, key: str) -> None:
        secret = await self.repo.secret(key)
        if secret is None:
            return
        now = ms(self.clock)
        try:
            why = None
            if now >= secret.expires_at:
                why = "24 hours have passed"
            elif secret.client_id is not None and await self._signed_in(secret.client_id):
                why = "they have signed in"
            if why is None:
                self._arm(secret, now + int(self.poll_seconds * 1000))
                return
            await self._redact(secret, why)
        except (TemporaryError, TimeoutError) as e:
            log.warning("Could not redact secret message %s yet (%s); will retry", key, e)
            self._arm(secret, now + int(self.poll_seconds * 1000))

    async def redact_secrets_of(self, client_id: str, why: str) -> None:
        """Redact now every message with this client's initial password still readable."""
        for secret in await self.repo.secrets(client_id):
            await self._redact(secret, why)

    async def _signed_in(self, client_id: str) -> bool:
        devices = await self.gateway.user_devices(client_id)
        # Alcove's own device does not count as the client signing in.
        return any(not str(d.get("device_id", "")).startswith(DEVICE_ID) for d in devices)

    async def _redact(self, secret: Secret, why: str) -> None:
        try:
            sent = await self.outbox.wait(secret.outbox_key, timeout=60)
        except KeyError:  # never written down: nothing to redact
            await self.repo.delete_secret(secret.outbox_key)
            return
        if sent.event_id is not None:
            try:
                await self.gateway.redact(secret.room_id, sent.event_id, "Initial password")
            except PermanentError as e:
                log.warning("Could not redact %s: %s", sent.event_id, e)
        await self.repo.delete_secret(secret.outbox_key)
        self.timers.cancel(f"secret:{secret.outbox_key}")
        client = await self.repo.client(secret.client_id) if secret.client_id else None
        who = f"{client.full_name} ({client.initials})" if client else "the client"
        await self.outbox.send(
            f"secret-redacted:{secret.outbox_key}",
            self.bot,
            secret.room_id,
            notice(f"I removed the message with the initial password for {who}: {why}."),
        )
        await self.audit.record(self.bot, "secret.redacted", secret.client_id, secret.room_id)

    # ------------------------------------------------------------------ rooms not adopted

    async def cannot_read(self, room_id: str, user_id: str, source: str) -> None:
        """An encrypted room: say so once, in plain text, with where to go instead."""
        if self.metrics is not None:
            self.metrics.encrypted_unreadable.labels(source=source).inc()
        where = await self._where(user_id)
        text = (
            "I cannot read this room: it is end-to-end encrypted, and Alcove cannot decrypt "
            "messages yet, so nothing sent here reaches me. " + where
        )
        row, new = await self.outbox.prepare(
            f"encrypted:{room_id}", self.bot, room_id, notice(text)
        )
        if new:
            log.warning(
                "Room %s is encrypted (%s from %s): Alcove cannot read it", room_id, source, user_id
            )
            self.outbox.submit(row)

    async def _where(self, user_id: str) -> str:
        client = await self.repo.client(user_id)
        if client is not None:
            dm = await self.repo.dm_of(client.therapist_id, client.user_id)
            return (
                f"Your conversation with your therapist is here: {link(dm.room_id)}" if dm else ""
            )
        room = await self.room_for(user_id)
        if room is None and self.config.staff_member(user_id) is not None:
            room = await self.ensure(user_id)
        return f"Please write to me in your management room: {link(room)}" if room else ""

    async def answer_client_dm(self, room_id: str, client: Client) -> None:
        """A managed client opened a DM with the bot: say once where their conversation is and
        that this room is not read, then leave (nothing else happens there)."""
        await self.gateway.join_room(self.bot, room_id)
        where = await self._where(client.user_id)
        key = f"client-dm:{room_id}"
        await self.outbox.send(
            key,
            self.bot,
            room_id,
            notice(
                "Hello, I am Alcove, the practice's assistant. I do not read this room, and I "
                "am leaving it now. "
                + (where or "Your therapist will start a conversation with you.")
            ),
        )
        try:
            await self.outbox.wait(key, timeout=30)
        except TimeoutError:
            log.warning(
                "The note to %s in %s is not sent yet; leaving anyway", client.user_id, room_id
            )
        try:
            await self.gateway.leave_room(self.bot, room_id)
        except PermanentError as e:
            log.info("Could not leave %s: %s", room_id, e)
        await self.audit.record(client.user_id, "client_dm.answered", self.bot, room_id)

    async def staff_dm(self, room_id: str, staff: str) -> None:
        """A DM a staff member opened with the bot: it takes commands, and says once where
        the management room is (it never replaces it)."""
        room = await self.room_for(staff) or await self.ensure(staff)
        if room is None or room == room_id:
            return
        await self.outbox.send(
            f"staff-dm:{room_id}",
            self.bot,
            room_id,
            notice(
                "I take commands here too. Your management room with me is "
                f"{link(room)}: replies that name clients, and initial passwords, go only there."
            ),
        )
