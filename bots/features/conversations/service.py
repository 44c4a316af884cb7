"""Conversations: managed clients, 1:1 rooms, community rooms, titles, staff rooms.

Every flow is keyed on the command event that started it, and each step is either idempotent
(register, invite, join, set state) or recorded before the next one (client row, room row), so
the inbox may re-run a command after a crash or a homeserver outage without creating a second
client or room. Messages go through the outbox with keys derived from the same event."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

from bridge.clock import Clock, ms
from bridge.config import Config
from bridge.db.audit_repo import AuditLog
from bridge.matrix.gateway import MatrixGateway, MatrixSendError, PermanentError
from bridge.matrix.outbox import Outbox

from ...bot_types import Sender, notice
from ..voice import TherapistVoice
from . import rules
from .management import ManagementRooms
from .repo import CARE, DM, GROUP, TEAM, Client, ConversationRepo, Room

log = logging.getLogger("alcove.conversations")

ERASED_ROOM_NAME = "Former client (erased)"


@dataclass(frozen=True)
class NewClient:
    client: Client
    password: str
    room: Room


def normalise_email(text: str) -> str:
    """An address as the homeserver keeps a 3PID (Synapse's ``canonicalise_email``: trimmed,
    case-folded). ValueError for something that is not one address."""
    address = text.strip()
    local, at, domain = address.partition("@")
    if (
        not at
        or not local
        or "@" in domain
        or "." not in domain
        or domain.startswith(".")
        or domain.endswith(".")
        or any(ch.isspace() or ch in '<>,;:"()[]' for ch in address)
    ):
        raise ValueError(f"{text!r} is not an email address")
    return f"{local.casefold()}@{domain.lower()}"


def sign_in_help(user_id: str) -> str:
    """How a client with an email address signs in on their own (the welcome says it)."""
    localpart, _, domain = user_id[1:].partition(":")
    return (
        f"To sign in on another device: your username is {localpart} (homeserver {domain}). "
        'To choose your own password, pick "Forgot password" on the sign-in screen and enter '
        "your email address: the homeserver mails you a link. You will also get an email when a "
        "new message waits for you here (it never contains the message)."
    )


class EmailInUse(Exception):
    """The address is another account's email 3PID (said to the therapist as it is)."""


class ClientLookupError(Exception):
    """A <client> argument that matches nobody, or several people. ``private``: the message
    lists clients, so it may be said only in the therapist's management room."""

    def __init__(self, message: str, *, private: bool = False) -> None:
        super().__init__(message)
        self.private = private


class RoomFiling(Protocol):
    """Where rooms are filed for their owners (spaces: bots/features/organise/spaces.py)."""

    async def file(self, room: Room) -> None: ...

    async def unfile(self, room_id: str, owner: str) -> None: ...


class ConversationService:
    def __init__(
        self,
        config: Config,
        gateway: MatrixGateway,
        outbox: Sender,
        repo: ConversationRepo,
        audit: AuditLog,
        clock: Clock,
        voice: TherapistVoice | None = None,
        management: ManagementRooms | None = None,
    ) -> None:
        self.config = config
        self.gateway = gateway
        self.voice = voice or TherapistVoice(config, gateway)
        self.outbox = outbox
        self.repo = repo
        self.audit = audit
        self.clock = clock
        self._no_wait: set[str] = set()  # rooms whose messages never wait for a first device
        self.management = management or ManagementRooms(
            config, gateway, cast(Outbox, outbox), repo, audit, clock, self.voice
        )
        self.spaces: RoomFiling | None = None
        """Set by the composition root: rooms are filed in their owner's spaces."""

    @property
    def bot(self) -> str:
        return self.gateway.bot_user_id

    # ------------------------------------------------------------------ queries
    # What other features may ask about clients and rooms (they never use the repository).

    async def client(self, user_id: str) -> Client | None:
        return await self.repo.client(user_id)

    async def room(self, room_id: str) -> Room | None:
        return await self.repo.room(room_id)

    async def dm_of(self, therapist: str, client_id: str) -> Room | None:
        return await self.repo.dm_of(therapist, client_id)

    async def rooms_of(self, therapist: str, kind: str) -> list[Room]:
        return await self.repo.rooms_of(therapist, kind)

    async def clients_of(self, therapist: str) -> list[Client]:
        return await self.repo.clients_of(therapist)

    async def members(self, room_id: str) -> list[str]:
        return await self.repo.members(room_id)

    # ------------------------------------------------------------------ spaces

    async def file_room(self, room: Room) -> None:
        """File the room in its owner's spaces. A failure is logged, never the caller's: the
        spaces are repaired at the next start-up."""
        if self.spaces is None:
            return
        try:
            await self.spaces.file(room)
        except MatrixSendError as e:
            log.warning(
                "Could not file %s in its space (repaired at start-up): %s", room.room_id, e
            )

    async def unfile_room(self, room_id: str, owner: str) -> None:
        if self.spaces is None:
            return
        try:
            await self.spaces.unfile(room_id, owner)
        except MatrixSendError as e:
            log.warning("Could not take %s out of its space (repaired at start-up): %s", room_id, e)

    # ------------------------------------------------------------------ clients

    async def add_client(
        self,
        therapist: str,
        full_name: str,
        email: str | None,
        origin_event: str,
        external_id: str | None = None,
    ) -> NewClient:
        """Managed account with an opaque ID, initials as display name, a one-time password,
        and a 1:1 room with the welcome message."""
        email = normalise_email(email) if email else None  # ValueError: not an address
        localpart = rules.opaque_localpart(self.config.appservice.client_prefix)
        domain = self.config.homeserver.domain
        candidate = Client(
            user_id=f"@{localpart}:{domain}",
            therapist_id=therapist,
            full_name=full_name,
            initials=rules.initials(full_name),
            email=email,
            external_id=external_id,
        )
        client = await self.repo.add_client(candidate, origin_event, ms(self.clock))
        created = client == candidate
        await self.gateway.register_user(client.user_id[1:].split(":", 1)[0])
        await self.gateway.set_displayname(client.user_id, client.initials)
        password = rules.initial_password(self.config.appservice.as_token, origin_event)
        await self.gateway.set_password(client.user_id, password)
        if created:
            await self.audit.record(therapist, "client.created", client.user_id)
        if client.email:
            await self.set_client_email(client, client.email, therapist)
            if created:
                await self.audit.record(therapist, "client.email_set", client.user_id)
        room = await self.open_dm(therapist, client, origin_event)
        return NewClient(client, password, room)

    async def email_problem(self, email: str, client_id: str | None = None) -> str | None:
        """Why ``email`` cannot be this client's (None if it can): another account's 3PID.
        Synapse's admin API would silently move it (an upsert): that account's password resets
        would then come here."""
        owner = await self.gateway.email_owner(normalise_email(email))
        if owner is None or owner == client_id:
            return None
        return (
            f"{email} already belongs to another account on the homeserver; each client needs "
            "an address of their own."
        )

    async def set_client_email(self, client: Client, email: str | None, actor: str) -> Client:
        """The client's email notifications: the address becomes their only email 3PID on the
        homeserver (admin API), and an email pusher for it is added as them, so the homeserver
        mails them (with Alcove's templates: no text, no names) when a message waits unread.
        None removes both. Idempotent; the address is not written to the audit log.
        ValueError: not an address; EmailInUse: another account's."""
        email = normalise_email(email) if email is not None else None
        if email is not None and (problem := await self.email_problem(email, client.user_id)):
            raise EmailInUse(problem)
        await self.gateway.set_email(client.user_id, email)
        await self.gateway.set_email_pusher(client.user_id, email)
        if email != client.email:
            await self.repo.set_email(client.user_id, email)
            await self.audit.record(
                actor, "client.email_set" if email else "client.email_removed", client.user_id
            )
        return replace(client, email=email)

    async def introduce(self, therapist: str, new: NewClient, key: str) -> str | None:
        """The new client's full name, ID and initial password to the therapist's management
        room (the only place they go), redacted once the client has signed in. None when sent,
        else why not (see ``send_secret``)."""
        return await self.send_secret(
            therapist,
            key,
            notice(
                f"Added {new.client.full_name} as {new.client.user_id} "
                f"(shown to other clients as {new.client.initials}).\n"
                f"Initial password: {new.password}\n"
                "Pass it on privately; they can change it after signing in. I will remove this "
                "message once they have signed in, or after 24 hours. "
                f"Your conversation: https://matrix.to/#/{new.room.room_id}"
            ),
            redact_for=new.client.user_id,
        )

    async def erase_client(self, client: Client, actor: str) -> int:
        """The right to be forgotten: the client leaves every room Alcove put them in (kicked,
        and the room forgotten for them), their 1:1 loses their name, the message with their
        initial password is redacted if it is still there, their account is
        deactivated with erasure on the homeserver, and Alcove's database forgets them; the
        audit log keeps ID-only rows. Each step is idempotent, so a retry after a failure
        finishes the job. Returns how many rooms they were removed from."""
        rooms = await self.repo.client_rooms(client.user_id)
        for room_id in rooms:
            room = await self.repo.room(room_id)
            try:
                await self.gateway.kick(room_id, client.user_id, "Account erased")
            except PermanentError as e:
                if e.status not in (403, 404):  # 403: not in the room any more
                    raise
            try:
                await self.gateway.forget(client.user_id, room_id)
            except PermanentError as e:
                log.info("Could not forget %s for an erased client: %s", room_id, e)
            if room is not None and room.kind == DM:  # its name was the client's full name
                await self.gateway.send_state(
                    self.bot, room_id, "m.room.name", "", {"name": ERASED_ROOM_NAME}
                )
        await self.management.redact_secrets_of(client.user_id, "the client was erased")
        await self.gateway.deactivate(client.user_id, erase=True)
        await self.repo.forget_client(client.user_id)
        await self.audit.record(actor, "client.erased", client.user_id, rooms=len(rooms))
        log.info("Erased client %s (%d rooms)", client.user_id, len(rooms))
        return len(rooms)

    async def erased(self, client_id: str) -> int | None:
        """How many rooms an erased client was removed from, or None if not erased."""
        for entry in await self.audit.entries("client.erased", client_id):
            return int(entry.detail.get("rooms", 0))
        return None

    async def resolve_client(self, therapist: str, token: str) -> Client:
        """An opaque ID (full or localpart) or a unique prefix of the full name."""
        wanted = token.strip().lower()
        if not wanted:
            raise ClientLookupError("A client name or ID is missing. See !client list.")
        clients = await self.repo.clients_of(therapist)
        by_id = [
            c
            for c in clients
            if wanted in (c.user_id.lower(), c.user_id[1:].split(":", 1)[0].lower())
        ]
        if by_id:
            return by_id[0]
        matches = [c for c in clients if c.full_name.lower().startswith(wanted)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise ClientLookupError(f"No client of yours matches {token!r}. See !client list.")
        listed = ", ".join(f"{c.full_name} ({c.user_id})" for c in matches[:5])
        raise ClientLookupError(
            f"{token!r} matches several clients: {listed}. Use the ID.", private=True
        )

    # ------------------------------------------------------------------ 1:1 rooms

    async def ensure_dm(self, therapist: str, client: Client, origin_event: str) -> Room:
        """The pair's 1:1 room: the recorded one, or a new one (with its welcome)."""
        room = await self.repo.dm_of(therapist, client.user_id)
        return room if room is not None else await self.open_dm(therapist, client, origin_event)

    async def group_by_title(self, therapist: str, title: str) -> Room | None:
        wanted = title.strip().lower()
        for room in await self.repo.rooms_of(therapist, GROUP):
            if (room.title or "").lower() == wanted:
                return room
        return None

    async def open_dm(self, therapist: str, client: Client, origin_event: str) -> Room:
        room = await self.repo.dm_of(therapist, client.user_id)
        if room is None:
            room_id = await self.gateway.create_room(
                rules.dm_body(
                    therapist,
                    client.user_id,
                    client.full_name,
                    encrypted=self.config.encryption.encrypts("dm"),
                )
            )
            room = Room(room_id, DM, therapist, client.user_id, client.full_name)
            await self.repo.add_room(room, ms(self.clock), origin_event)
            await self.audit.record(therapist, "room.created", client.user_id, room_id, kind=DM)
        await self.file_room(room)
        await self.gateway.join_room(client.user_id, room.room_id)
        await self._mark_direct(client.user_id, therapist, room.room_id)
        speaker = await self.join_as_staff(therapist, room.room_id)
        if speaker == therapist:
            await self._mark_direct(therapist, client.user_id, room.room_id)
        # The welcome comes from the bot where the room is encrypted (TherapistVoice). In an
        # encrypted 1:1 of a client with no device yet, the outbox holds it (and whatever
        # follows it) until their first sign-in: see waiting_for_device.
        author = await self.voice.in_room(speaker, room.room_id)
        await self._welcome(room, therapist, client, author)
        return room

    async def waiting_for_device(self, room_id: str) -> str | None:
        """The outbox's ``hold``: in an end-to-end encrypted 1:1 whose client has no device
        yet, the client — a message sent now could never be read by them (its room key would
        go only to devices that exist now; clients take a forwarded key only from their own
        devices), so it waits for their first sign-in. None everywhere else (a group does not
        wait for a member who never signs in). Only "no wait" is remembered: a device, once
        there, is what every later message is shared with."""
        if room_id in self._no_wait:
            return None
        crypto = self.voice.crypto
        room = await self.repo.room(room_id) if crypto is not None else None
        if (
            crypto is None
            or room is None
            or room.kind != DM
            or room.client_id is None
            or not await crypto.is_encrypted(room_id)
            or await crypto.has_devices(room.client_id)
        ):
            self._no_wait.add(room_id)
            return None
        return room.client_id

    async def send_waiting_welcomes(self, users: list[str]) -> None:
        """Users whose devices changed (bridge/crypto): a client whose encrypted 1:1 has had no
        welcome yet (one made by an Alcove that did not queue it before their first device)
        gets it now. Once: the outbox keeps the welcome's row (and its key) for good."""
        for user in users:
            client = await self.repo.client(user)
            if client is None:
                continue
            room = await self.repo.dm_of(client.therapist_id, user)
            if room is None or await self.repo.welcome_sent(room.room_id):
                continue
            if await self.voice.can_read(user, room.room_id):
                speaker = await self.voice.speaker(client.therapist_id, room.room_id)
                await self._welcome(room, client.therapist_id, client, speaker)

    async def join_as_staff(self, staff: str, room_id: str) -> str:
        """Accept the invite for a staff member when Alcove may speak for them (see
        TherapistVoice). Returns who should speak in the room: them, or the bot."""
        speaker = await self.voice.speaker(staff)
        if speaker != staff:
            return speaker
        try:
            await self.gateway.join_room(staff, room_id)
            return staff
        except PermanentError as e:
            log.warning("Could not join %s to %s as them: %s", staff, room_id, e)
            return self.bot

    async def _mark_direct(self, user_id: str, other: str, room_id: str) -> None:
        current = await self.gateway.get_account_data(user_id, "m.direct") or {}
        rooms = list(current.get(other, []))
        if room_id in rooms:
            return
        await self.gateway.set_account_data(
            user_id, "m.direct", {**current, other: [*rooms, room_id]}
        )

    async def _welcome(self, room: Room, therapist: str, client: Client, speaker: str) -> None:
        text = rules.render(
            self.config.practice.welcome,
            {
                "client_first_name": client.first_name,
                "therapist_name": self.voice.name(therapist),
                "practice_name": self.config.practice.name,
            },
        )
        if client.email:
            text += "\n\n" + sign_in_help(client.user_id)
        content = self.voice.content(therapist, speaker, {"msgtype": "m.text", "body": text})
        await self.outbox.send(f"welcome:{room.room_id}", speaker, room.room_id, content)

    # ------------------------------------------------------------------ community rooms

    async def create_group(
        self, therapist: str, title: str, clients: list[Client], origin_event: str
    ) -> Room:
        room = await self.repo.room_by_origin(origin_event)
        if room is None:
            room_id = await self.gateway.create_room(
                rules.group_body(
                    therapist,
                    [c.user_id for c in clients],
                    title,
                    encrypted=self.config.encryption.encrypts("group"),
                )
            )
            room = Room(room_id, GROUP, therapist, None, title)
            await self.repo.add_room(room, ms(self.clock), origin_event)
            await self.audit.record(therapist, "room.created", None, room_id, kind=GROUP)
        await self.file_room(room)
        await self.join_as_staff(therapist, room.room_id)
        for client in clients:
            await self._join_group(room, client, therapist)
        return room

    async def _join_group(self, room: Room, client: Client, actor: str) -> None:
        await self.gateway.invite(room.room_id, client.user_id)
        await self.gateway.join_room(client.user_id, room.room_id)
        await self.repo.add_member(room.room_id, client.user_id, ms(self.clock))
        await self.audit.record(actor, "member.added", client.user_id, room.room_id)

    async def add_to_group(self, room: Room, client: Client, actor: str) -> None:
        await self._join_group(room, client, actor)

    async def remove_from_group(self, room: Room, client: Client, actor: str) -> None:
        """Kick, then forget as the client: the homeserver then refuses them old messages too."""
        try:
            await self.gateway.kick(room.room_id, client.user_id, "Removed by the therapist")
        except PermanentError as e:
            if e.status != 403:  # 403: already gone (e.g. a retry after the kick)
                raise
        await self.gateway.forget(client.user_id, room.room_id)
        await self.repo.remove_member(room.room_id, client.user_id, ms(self.clock))
        await self.audit.record(actor, "member.removed", client.user_id, room.room_id)

    async def groups_of(self, therapist: str) -> list[tuple[Room, int]]:
        """The therapist's community rooms that still have members, with their member count."""
        out = []
        for room in await self.repo.rooms_of(therapist, GROUP):
            count = len(await self.repo.members(room.room_id))
            if count:
                out.append((room, count))
        return out

    # ------------------------------------------------------------------ titles

    async def set_title(self, room: Room, title: str, actor: str) -> None:
        await self.gateway.send_state(self.bot, room.room_id, "m.room.name", "", {"name": title})
        await self.repo.set_title(room.room_id, title)
        await self.audit.record(actor, "title.changed", None, room.room_id)

    # ------------------------------------------------------------------ initials only

    async def enforce_initials(
        self,
        room_id: str,
        user_id: str,
        displayname: str | None,
        *,
        event_id: str | None = None,
        avatar_url: str | None = None,
        shared: bool | None = None,
    ) -> bool:
        """A client renamed themselves (or set an avatar) where other clients read: a community
        room, or a session room (``shared``; by default: the room is a community room). Redact
        the membership event that carries the name — first, so that the next membership event's
        ``prev_content`` is computed from the redacted one — then put the initials back in the
        room and globally. Returns True if something was corrected."""
        if shared is None:
            room = await self.repo.room(room_id)
            shared = room is not None and room.kind == GROUP
        if not shared:
            return False
        client = await self.repo.client(user_id)
        if client is None or (displayname == client.initials and not avatar_url):
            return False
        redacted = False
        if event_id is not None:
            try:
                await self.gateway.redact(room_id, event_id, "Clients are shown by initials only")
                redacted = True
            except PermanentError as e:
                log.warning("Could not redact %s's rename in %s: %s", user_id, room_id, e)
        await self.gateway.send_state(
            user_id,
            room_id,
            "m.room.member",
            user_id,
            {"membership": "join", "displayname": client.initials},
        )
        await self.gateway.set_displayname(user_id, client.initials)
        await self.audit.record(self.bot, "displayname.reset", user_id, room_id, redacted=redacted)
        return True

    # ------------------------------------------------------------------ who may invite whom

    async def police_invite(self, room_id: str, inviter: str, invitee: str) -> bool:
        """Conversations exist only where Alcove created them. An invite into any other room is
        rejected when it targets a managed client (Alcove answers for them) or when a managed
        client invites staff (answered through the double puppet). Returns True if rejected."""
        if inviter == self.bot or await self.repo.room(room_id) is not None:
            return False
        invitee_client = await self.repo.client(invitee)
        inviter_client = await self.repo.client(inviter)
        if invitee_client is not None:
            await self.gateway.leave_room(invitee, room_id)
        elif inviter_client is not None and self.config.staff_member(invitee) is not None:
            if not self.gateway.can_act_as(invitee):
                log.warning("Cannot decline %s's invite for %s: no double puppet", inviter, invitee)
                return False
            await self.gateway.leave_room(invitee, room_id)
        else:
            return False
        await self.audit.record(inviter, "invite.refused", invitee, room_id)
        client = inviter_client or invitee_client
        if inviter_client is not None and client is not None:
            room = await self.repo.dm_of(client.therapist_id, client.user_id)
            if room is not None:
                await self.outbox.send(
                    f"invite-refused:{room_id}:{invitee}",
                    self.bot,
                    room.room_id,
                    notice(
                        "Conversations here are set up by your therapist. Please write in this "
                        "chat instead; other rooms are not available."
                    ),
                )
        return True

    # ------------------------------------------------------------------ staff rooms

    async def reconcile_staff_rooms(self) -> None:
        """One Client Care room per therapist (therapist + care staff) and one team room for
        all staff. Membership follows the config: missing staff are invited, others removed."""
        staff = self.config.staff
        care = [m.user_id for m in staff if m.role == "care"]
        team_levels = {
            m.user_id: rules.THERAPIST_LEVEL if m.role == "admin" else rules.STAFF_LEVEL
            for m in staff
        }
        await self._staff_room(
            TEAM,
            None,
            f"{self.config.practice.name} team",
            team_levels,
            "Staff only. Membership follows Alcove's configuration.",
        )
        for member in staff:
            if member.role != "therapist":
                continue
            levels = {
                member.user_id: rules.THERAPIST_LEVEL,
                **dict.fromkeys(care, rules.STAFF_LEVEL),
            }
            await self._staff_room(
                CARE,
                member.user_id,
                f"Client Care · {member.displayname}",
                levels,
                f"Client Care for {member.displayname}. Staff only.",
            )

    async def _staff_room(
        self, kind: str, therapist: str | None, name: str, levels: dict[str, int], topic: str
    ) -> None:
        existing = await self.repo.rooms_of(therapist, kind)
        if existing:
            room = existing[0]
        else:
            room_id = await self.gateway.create_room(
                rules.staff_room_body(
                    name, levels, topic, encrypted=self.config.encryption.encrypts("staff")
                )
            )
            room = Room(room_id, kind, therapist, None, name)
            await self.repo.add_room(room, ms(self.clock))
            await self.audit.record(self.bot, "room.created", therapist, room_id, kind=kind)
            await self.file_room(room)
        pl = await self.gateway.get_state(room.room_id, "m.room.power_levels") or {}
        current = set(pl.get("users", {}))
        if pl.get("users") != levels:  # a new member, a removed one, or a changed role
            await self.gateway.send_state(
                self.bot, room.room_id, "m.room.power_levels", "", {**pl, "users": levels}
            )
        for user in levels:
            if user not in current:
                await self.gateway.invite(room.room_id, user)
        for user in current - set(levels):
            try:
                await self.gateway.kick(room.room_id, user, "No longer on the staff list")
            except PermanentError as e:
                log.info("Could not remove %s from %s: %s", user, room.room_id, e)

    # ------------------------------------------------------------------ management rooms

    async def management_room_for(self, user_id: str) -> str | None:
        """The staff member's management room (the one Alcove owns; see management.py)."""
        return await self.management.room_for(user_id)

    async def send_secret(
        self, staff: str, key: str, content: dict[str, Any], *, redact_for: str | None = None
    ) -> str | None:
        """A secret (initial password, transcript) into the staff member's management room,
        only while its members are exactly them and the bot. None when sent, else why not."""
        return await self.management.send_secret(
            staff, key, content, redact_when_signed_in=redact_for
        )
