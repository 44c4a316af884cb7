"""Consented transcripts: every other participant must answer !consent; one !decline or the
timeout cancels. The file is rendered in memory, uploaded, and posted to the therapist's
management room; the audit log keeps who consented, when, and the file's SHA-256 — never text."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from mautrix.crypto.attachments import encrypt_attachment
from mautrix.types import ContentURI

from bridge.clock import ms

from ...bot_types import notice
from ..conversations.management import SecretWithheld
from .repo import OPEN, Session
from .service import SessionService

ATTACHMENTS = {"m.file", "m.image", "m.audio", "m.video"}
ENCRYPTED = "m.room.encrypted"


def _utc(at_ms: int) -> datetime:
    return datetime.fromtimestamp(at_ms / 1000, UTC)


class Transcripts:
    def __init__(self, sessions: SessionService) -> None:
        self.sessions = sessions

    async def request(self, session: Session) -> str:
        assert session.room_id
        others = list(session.clients)
        minutes = self.sessions.cfg.transcript_timeout_minutes
        now = ms(self.sessions.clock)
        await self.sessions.repo.request_transcript(session.id, others, now, now + minutes * 60_000)
        self.sessions.timers.arm(
            f"session:{session.id}:transcript",
            datetime.fromtimestamp(now / 1000, UTC) + timedelta(minutes=minutes),
            self.expire,
            session.id,
            now,
        )
        await self.sessions.audit.record(
            session.therapist_id, "transcript.requested", None, session.room_id, session=session.id
        )
        return (
            f"{self.sessions.conversations.voice.name(session.therapist_id)} asks to keep a "
            "transcript of this session (a chat-history.txt file for their records). It is only "
            "made if everyone agrees. Please reply !consent or !decline within "
            f"{minutes} minutes."
        )

    async def expire(self, session_id: int, requested_at: int) -> None:
        pending = await self.sessions.repo.transcript_request(session_id)
        session = await self.sessions.repo.get(session_id)
        if pending is None or session is None:
            return
        await self.sessions.repo.drop_transcript_request(session_id)
        await self.sessions.audit.record(
            self.sessions.bot, "transcript.expired", None, session.room_id, session=session_id
        )
        if session.room_id and session.status == OPEN:
            await self.sessions.outbox.send(
                f"transcript-expired:{session_id}:{requested_at}",
                self.sessions.bot,
                session.room_id,
                notice("Not everyone answered in time: no transcript is made."),
            )

    async def answer(self, session: Session, user: str, consent: bool) -> str:
        pending = await self.sessions.repo.transcript_request(session.id)
        if pending is None:
            return "No transcript has been requested in this session."
        waiting_for, consents, expires = pending
        if user not in waiting_for:
            return "Only the other participants are asked for consent."
        agreed = all(u in consents for u in waiting_for)
        if consent and user in consents and not agreed:
            return "Thank you, your consent is recorded."
        if consent and agreed:
            # Everyone had agreed, yet the request is still here: the last !consent failed or
            # was killed while delivering, and this is it handled again. Deliver what was
            # agreed (once), without stamping a new consent or looking at the expiry.
            return await self._agreed(session, consents, expires)
        if expires < ms(self.sessions.clock):
            return "That transcript request has expired."
        audit = self.sessions.audit
        if not consent:
            await self.sessions.repo.drop_transcript_request(session.id)
            self.sessions.timers.cancel(f"session:{session.id}:transcript")
            await audit.record(
                user, "transcript.declined", None, session.room_id, session=session.id
            )
            return "A participant declined: no transcript will be made."
        consents[user] = ms(self.sessions.clock)
        await self.sessions.repo.record_consent(session.id, consents)
        await audit.record(user, "transcript.consented", None, session.room_id, session=session.id)
        missing = [u for u in waiting_for if u not in consents]
        if missing:
            return f"Thank you. Waiting for {len(missing)} more participant(s)."
        return await self._agreed(session, consents, expires)

    async def _agreed(self, session: Session, consents: dict[str, int], expires: int) -> str:
        # Delivered first, forgotten after: if the upload fails, the consents are still on
        # record and the retried !consent delivers (the message key, one per request, dedupes
        # a second send).
        try:
            await self._deliver(session, consents, f"transcript:{session.id}:{expires}")
        except SecretWithheld:
            return (
                "Everyone agreed, but the transcript was not sent: the therapist's management "
                "room with me is not private right now. The consents stay on record; a !consent "
                "sent again delivers it once that is fixed."
            )
        await self.sessions.repo.drop_transcript_request(session.id)
        self.sessions.timers.cancel(f"session:{session.id}:transcript")
        return "Everyone agreed: the transcript was sent to the therapist."

    async def render(self, session: Session) -> bytes:
        """chat-history.txt: a header (session, date, time zone, participants by initials),
        then one line per message, "HH:MM who: text", with a date line whenever the day
        changes (a session across midnight)."""
        assert session.room_id
        conv = self.sessions.conversations
        tz = self.sessions.config.practice.timezone
        therapist = conv.voice.name(session.therapist_id)
        names: dict[str, str] = {self.sessions.bot: "Alcove"}
        for client_id in session.clients:
            client = await conv.client(client_id)
            names[client_id] = client.initials if client else "Client"
        names[session.therapist_id] = therapist
        start = _utc(session.start_at).astimezone(tz)
        end = _utc(session.end_at).astimezone(tz)
        clients = ", ".join(names[c] for c in session.clients)
        lines = [
            f"Text-only session #{session.id}",
            f"Date: {start:%A %Y-%m-%d}, {start:%H:%M} to {end:%H:%M}"
            + ("" if end.date() == start.date() else f" on {end:%Y-%m-%d}"),
            f"Time zone: {tz.key} ({start:%Z}, UTC{start:%z}); every time below is in it",
            f"Participants: {therapist} (therapist), {clients}",
            "",
        ]
        day = start.date()
        # In an encrypted session room the bot decrypts the history in memory, as a member.
        for event in await self.sessions.history(session.room_id):
            content: dict[str, Any] = event.get("content") or {}
            etype = event.get("type")
            if (
                etype not in ("m.room.message", ENCRYPTED)
                or event.get("sender") == self.sessions.bot
            ):
                continue
            when = _utc(int(event.get("origin_server_ts", 0))).astimezone(tz)
            if when.date() != day:
                day = when.date()
                lines.append(f"-- {when:%A %Y-%m-%d} --")
            who = names.get(str(event.get("sender")), "Participant")
            body = str(content.get("body", ""))
            if etype == ENCRYPTED:
                body = "[a message Alcove could not decrypt]"
            elif content.get("msgtype") in ATTACHMENTS:
                body = f"[attachment: {body}]"
            lines.append(f"{when:%H:%M} {who}: {body}")
        return ("\n".join(lines) + "\n").encode()

    async def _encrypted_target(self, therapist: str) -> bool:
        """Whether the therapist's management room (where a transcript goes) is encrypted."""
        crypto = self.sessions.conversations.voice.crypto
        room = await self.sessions.conversations.management_room_for(therapist)
        return crypto is not None and room is not None and await crypto.is_encrypted(room)

    async def _deliver(self, session: Session, consents: dict[str, int], key: str) -> None:
        if await self.sessions.outbox.repo.get(key) is not None:
            return  # delivered before (this is a retry): no second file, no stray upload
        data = await self.render(session)
        digest = hashlib.sha256(data).hexdigest()
        content: dict[str, Any] = {
            "msgtype": "m.file",
            "body": "chat-history.txt",
            "info": {"mimetype": "text/plain", "size": len(data)},
        }
        if await self._encrypted_target(session.therapist_id):
            # An encrypted management room gets an encrypted attachment: the homeserver's
            # media store holds only ciphertext; its key travels in the (Megolm-encrypted)
            # message, as every client sends files into encrypted rooms.
            ciphertext, file = encrypt_attachment(data)
            uri = await self.sessions.gateway.upload(
                ciphertext, "chat-history.txt", "application/octet-stream"
            )
            file.url = ContentURI(uri)
            content["file"] = file.serialize()
        else:
            uri = await self.sessions.gateway.upload(
                data, "chat-history.txt", "text/plain; charset=utf-8"
            )
            content["url"] = uri
        # Only into a management room that holds exactly the therapist and the bot.
        withheld = await self.sessions.conversations.send_secret(session.therapist_id, key, content)
        if withheld is not None:
            await self.sessions.gateway.delete_media(uri)
            raise SecretWithheld(withheld)
        await self.sessions.audit.record(
            self.sessions.bot,
            "transcript.delivered",
            session.therapist_id,
            session.room_id,
            session=session.id,
            sha256=digest,
            size=len(data),
            consents={u: consents[u] for u in sorted(consents)},
        )
