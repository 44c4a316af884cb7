"""The bot's crypto: mautrix's OlmMachine with its store in Alcove's database.

The bot's device is the outbox's acting device of the bot (``ALCOVE``, created through the
admin API or MSC4190 before anything is sent), so Synapse's transaction-id dedupe and the
crypto identity are the same device. Every request acts as that device through appservice
device masquerading (``?device_id=``), as mautrix bridges do with MSC4190: no login, no access
token of its own.

What Synapse pushes in a transaction for the bot's device is handled here, *before* the
transaction is answered (``handle_transaction``): to-device events (Olm-encrypted room keys)
go straight to the OlmMachine, not through the inbox, because they have no event id or room
to dedupe and order by, they must be in the store before the room events they unlock are
decrypted, and Synapse does not keep them once a transaction is answered. Handling one is a
few milliseconds of local work and a database write, so the 200 still comes fast; one that
fails is logged and counted, never fails the transaction. Device-list changes and one-time-key
top-ups need requests to the homeserver: they run as tasks this object owns.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any, cast

from mautrix.client import Client
from mautrix.crypto import OlmMachine, PgCryptoStore
from mautrix.errors import (
    DecryptionError,
    DuplicateMessageIndex,
    EncryptionError,
    MatrixError,
    SessionNotFound,
)
from mautrix.types import (
    JSON,
    ASToDeviceEvent,
    DeviceID,
    DeviceLists,
    DeviceOTKCount,
    EncryptedEvent,
    EventType,
    Membership,
    RoomID,
    SessionID,
    TrustState,
    UserID,
)
from mautrix.util.async_db import Database

from ..errors import StartupError
from ..matrix.gateway import PermanentError, TemporaryError
from ..matrix.mautrix_gateway import MautrixGateway
from ..metrics import Metrics
from .repo import CryptoRoomRepo

log = logging.getLogger("alcove.crypto")

PICKLE_KEY = "alcove.crypto"
"""Olm pickles in the database are encrypted with this key, as mautrix bridges do with a
constant one: whoever reads the database can read the keys either way (protect the database and
its backups); a key in the config would only add a way to lose them."""
READY_TIMEOUT = 30.0

RESET_ADVICE = (
    "To start over with a new crypto identity (earlier encrypted messages stay unreadable to "
    "Alcove): stop Alcove, delete the bot's device {device} "
    "(DELETE /_synapse/admin/v2/users/{user}/devices/{device}), and start Alcove again."
)


class KeysNotYet(Exception):
    """An encrypted event whose Megolm session has not arrived (yet)."""

    def __init__(self, room_id: str, session_id: str) -> None:
        super().__init__(f"no room key yet for session {session_id} in {room_id}")
        self.room_id = room_id
        self.session_id = session_id


class Undecryptable(Exception):
    """An encrypted event that will never decrypt (corrupt, replayed, wrong room, unknown
    algorithm)."""


class _Machine(OlmMachine):
    """OlmMachine that says when a Megolm session arrives, so waiting events are retried."""

    on_session: Callable[[str], None] | None = None

    def _mark_session_received(self, session_id: SessionID) -> None:
        super()._mark_session_received(session_id)
        if self.on_session is not None:
            self.on_session(str(session_id))


class Crypto:
    def __init__(
        self, db: Database, gateway: MautrixGateway, device_id: str, metrics: Metrics
    ) -> None:
        self.bot = UserID(gateway.bot_user_id)
        self.device_id = DeviceID(device_id)
        self.metrics = metrics
        self.crypto_db, self.store = crypto_store(db, self.bot)
        self.rooms = CryptoRoomRepo(db)
        self.client = Client(
            mxid=self.bot, device_id=self.device_id, api=gateway.api_for(self.bot, device_id)
        )
        self.machine = _Machine(self.client, self.store, self.rooms)
        self.ready = asyncio.Event()
        self._tasks: set[asyncio.Task[object]] = set()
        self._share_locks: dict[str, asyncio.Lock] = {}
        self._requested: set[str] = set()
        self._forgotten: set[str] = set()
        self.on_devices: Callable[[list[str]], Coroutine[Any, Any, None]] | None = None
        """Called with the users whose device lists changed (a new device signed in), once the
        OlmMachine knows their new devices: a message waiting for a first device can go."""

    @property
    def on_session(self) -> Callable[[str], None] | None:
        return self.machine.on_session

    @on_session.setter
    def on_session(self, callback: Callable[[str], None] | None) -> None:
        self.machine.on_session = callback

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Open the store (migrating it), load or create the Olm account, make sure the
        homeserver has the device's identity keys and enough one-time keys."""
        await self.crypto_db.start()
        await self.store.open()
        stored = await self.store.get_device_id()
        if stored and stored != self.device_id:
            raise StartupError(
                f"The crypto store belongs to device {stored}, but the bot acts as "
                f"{self.device_id}. " + self._reset_advice()
            )
        await self.machine.load()
        assert self.machine.account is not None
        if not stored:
            if await self._server_identity_key() is not None:
                raise StartupError(
                    f"The homeserver has identity keys for the bot's device {self.device_id}, "
                    "but Alcove's crypto store has none: the database was replaced or its crypto "
                    "tables lost. " + self._reset_advice()
                )
            await self.store.put_device_id(self.device_id)
        elif self.machine.account.shared:
            server_key = await self._server_identity_key()
            if server_key != self.machine.account.identity_key:
                raise StartupError(
                    f"The homeserver's identity key for the bot's device {self.device_id} is "
                    f"{'missing' if server_key is None else 'a different one'}: the device was "
                    "deleted or re-created. " + self._reset_advice()
                )
        await self.machine.share_keys()  # identity keys if new; one-time keys topped up
        await self._cross_sign()
        self.ready.set()
        log.info(
            "End-to-end encryption enabled: the bot's device %s, identity key %s",
            self.device_id,
            self.machine.account.identity_key,
        )

    async def _cross_sign(self) -> None:
        """The bot's own cross-signing identity signs its device, so clients show the bot's
        messages as from a device "verified by its owner". Done once: the master, self-signing
        and user-signing keys are published (first-time setup needs no interactive auth; an
        appservice may also replace them) and their private halves stored in the bot's secret
        storage on the homeserver, encrypted with a recovery key Alcove does not keep — a new
        device (a reset) gets a new cross-signing identity, not a way back into the old one."""
        trust = await self.machine.resolve_trust(self.machine.own_identity)
        if trust >= TrustState.CROSS_SIGNED_UNTRUSTED:
            log.debug("The bot's device is cross-signed already (%s)", trust)
            return
        await self.machine.generate_recovery_key()  # the recovery key is not kept or logged
        log.info("The bot's device %s is now signed by its own cross-signing key", self.device_id)

    def _reset_advice(self) -> str:
        return RESET_ADVICE.format(device=self.device_id, user=self.bot)

    async def _server_identity_key(self) -> str | None:
        resp = await self.client.query_keys([self.bot])
        device = resp.device_keys.get(self.bot, {}).get(self.device_id)
        if device is None:
            return None
        return str(device.curve25519) if device.curve25519 else None

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()

    def _spawn(self, coro: Coroutine[Any, Any, object], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.warning("%s failed: %s", task.get_name(), error, exc_info=error)

    # ------------------------------------------------------------------ transactions

    async def handle_transaction(self, body: dict[str, Any]) -> None:
        """The encryption extensions of one transaction (see the module docstring)."""
        to_device = _extension(body, "to_device", "de.sorunome.msc2409")
        lists = _extension(body, "device_lists", "org.matrix.msc3202")
        counts = _extension(body, "device_one_time_keys_count", "org.matrix.msc3202")
        if not (to_device or lists or counts):
            return
        try:
            await asyncio.wait_for(self.ready.wait(), READY_TIMEOUT)
        except TimeoutError:
            raise TemporaryError("crypto is not started yet") from None
        for raw in to_device if isinstance(to_device, list) else []:
            await self._to_device(raw)
        if isinstance(lists, dict):
            changed = DeviceLists.deserialize(cast(JSON, lists))
            if changed.changed:
                self._spawn(self._device_lists(changed), "crypto-device-lists")
        if isinstance(counts, dict):
            mine = counts.get(self.bot, {}).get(self.device_id)
            if isinstance(mine, dict):
                count = DeviceOTKCount.deserialize(cast(JSON, mine))
                self._spawn(self.machine.handle_otk_count(count), "crypto-otk-top-up")

    async def _device_lists(self, changed: DeviceLists) -> None:
        await self.machine.handle_device_lists(changed)
        # mautrix rotates the rooms' Megolm sessions only for users it tracks (ones it found
        # devices of): a member whose *first* device just appeared was not, and the session
        # shared before would never reach that device. Rotate for every changed member.
        for user in changed.changed:
            if rooms := await self.rooms.find_shared_rooms(user):
                await self.store.remove_outbound_group_sessions(rooms)
        if self.on_devices is not None:
            await self.on_devices([str(user) for user in changed.changed])

    async def _to_device(self, raw: Any) -> None:
        try:
            event = cast(ASToDeviceEvent, ASToDeviceEvent.deserialize(raw))
            if event.to_user_id != self.bot or event.to_device_id != self.device_id:
                return  # another device of ours (the therapist's puppets have no crypto)
            await self.machine.handle_as_to_device_event(event)
        except Exception as e:
            self.metrics.inbox_events.labels(outcome="to_device_failed").inc()
            log.warning("A to-device event could not be handled: %s", type(e).__name__)
            log.debug("To-device failure detail", exc_info=e)
        else:
            self.metrics.inbox_events.labels(outcome="to_device").inc()

    # ------------------------------------------------------------------ rooms

    async def is_encrypted(self, room_id: str) -> bool:
        if not await self.rooms.known(room_id):
            try:
                content: dict[str, Any] | None = (
                    await self.client.get_state_event(RoomID(room_id), EventType.ROOM_ENCRYPTION)
                ).serialize()
            except MatrixError as e:
                if _permanent(e) and getattr(e, "errcode", None) != "M_NOT_FOUND":
                    return False  # not a member (any more): the send itself will say so
                if not _permanent(e):
                    raise TemporaryError(f"encryption state of {room_id}: {e}") from None
                content = None
            await self.rooms.put_encryption(room_id, content)
        return await self.rooms.is_encrypted(RoomID(room_id))

    async def has_devices(self, user_id: str) -> bool:
        """Whether the user has a device with encryption keys (asked of the homeserver)."""
        try:
            resp = await self.client.query_keys([UserID(user_id)])
        except MatrixError as e:
            raise TemporaryError(f"devices of {user_id}: {e}") from None
        return bool(resp.device_keys.get(UserID(user_id)))

    async def on_state(self, event: dict[str, Any]) -> None:
        """A room event on its way to dispatch: encryption turned on, or a member change that
        must rotate the room's outbound session."""
        etype, room_id = event.get("type"), event["room_id"]
        if etype == "m.room.encryption" and event.get("state_key") == "":
            content = event.get("content")
            if isinstance(content, dict) and content.get("algorithm"):
                await self.rooms.put_encryption(room_id, content)
        elif etype == "m.room.member" and await self.rooms.is_encrypted(RoomID(room_id)):
            membership = (event.get("content") or {}).get("membership")
            before = ((event.get("unsigned") or {}).get("prev_content") or {}).get("membership")
            if membership != before:
                await self.store.remove_outbound_group_session(RoomID(room_id))

    # ------------------------------------------------------------------ the two seams

    async def decrypt(self, event: dict[str, Any], *, live: bool = True) -> dict[str, Any]:
        """The decrypted form of an ``m.room.encrypted`` room event (same event id, room,
        sender and time). Raises KeysNotYet or Undecryptable. ``live``: an event on its way
        to dispatch (a missing key is requested, the decryption counted); not for history
        read again (``decrypt_history``)."""
        try:
            encrypted = EncryptedEvent.deserialize(cast(JSON, event))
            decrypted = await self.machine.decrypt_megolm_event(encrypted)
        except SessionNotFound as e:
            if live:
                self._request_key(encrypted, e.session_id)
            raise KeysNotYet(event["room_id"], str(e.session_id)) from None
        except DuplicateMessageIndex:
            raise Undecryptable("a replayed message index") from None
        except (DecryptionError, ValueError, KeyError, TypeError) as e:
            raise Undecryptable(type(e).__name__) from None
        if live:
            self.metrics.inbox_events.labels(outcome="decrypted").inc()
        content = decrypted.content.serialize()
        return {
            **{k: v for k, v in event.items() if k not in ("type", "content")},
            "type": str(decrypted.type),
            "content": content,
        }

    async def decrypt_history(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A room's history as read from the homeserver (a text-only session's transcript and
        end), its encrypted events decrypted in memory with the keys the bot holds as a member
        (its own messages too: mautrix keeps the inbound half of each session it creates).
        One that cannot be decrypted stays as it is (``m.room.encrypted``) for the caller to
        count or mark; nothing is stored or logged but its event id."""
        out: list[dict[str, Any]] = []
        for event in events:
            if event.get("type") == "m.room.encrypted" and "state_key" not in event:
                try:
                    event = await self.decrypt(event, live=False)
                except (KeysNotYet, Undecryptable) as e:
                    log.warning("Cannot decrypt %s from history: %s", event.get("event_id"), e)
            out.append(event)
        return out

    def _request_key(self, event: EncryptedEvent, session_id: SessionID) -> None:
        """Ask the sender's devices for a missing room key, once per session and run (it may
        come by itself a moment later; the waiting event is handled when either arrives)."""
        if session_id in self._requested or event.room_id in self._forgotten:
            return  # (a forgotten room's keys must not be asked back from a member's device)
        self._requested.add(session_id)
        content = event.content
        sender_key = getattr(content, "sender_key", None)
        if not sender_key:
            return
        self._spawn(
            self.machine.request_room_key(
                event.room_id,
                sender_key,
                session_id,
                {event.sender: [DeviceID("*")]},
                timeout=0,
            ),
            "crypto-key-request",
        )

    async def encrypt(
        self, room_id: str, event_type: str, content: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """``(type, content)`` to send: ``m.room.encrypted`` for an encrypted room, sharing a
        new Megolm session with the members' devices first when needed; as given otherwise."""
        if not await self.is_encrypted(room_id):
            return event_type, content
        room = RoomID(room_id)
        etype = EventType.find(event_type, EventType.Class.MESSAGE)
        try:
            try:
                encrypted = await self.machine.encrypt_megolm_event(room, etype, content)
            except EncryptionError:
                await self._share(room)
                encrypted = await self.machine.encrypt_megolm_event(room, etype, content)
        except MatrixError as e:
            error = PermanentError if _permanent(e) else TemporaryError
            raise error(
                f"encryption for {room_id}: {e}", errcode=getattr(e, "errcode", None)
            ) from None
        except (EncryptionError, OSError, TimeoutError) as e:
            raise TemporaryError(f"encryption for {room_id}: {type(e).__name__}: {e}") from None
        return "m.room.encrypted", json.loads(json.dumps(encrypted.serialize()))

    async def _share(self, room: RoomID) -> None:
        """A new Megolm session for the room, shared with every joined and invited member's
        devices. One share per room at a time."""
        lock = self._share_locks.setdefault(room, asyncio.Lock())
        async with lock:
            session = await self.store.get_outbound_group_session(room)
            if session is not None and session.shared and not session.expired:
                return  # shared by the send that held the lock before
            members = await self.client.get_members(room)
            users = [
                UserID(m.state_key)
                for m in members
                if getattr(m.content, "membership", None) in (Membership.JOIN, Membership.INVITE)
            ]
            await self.rooms.put_members(room, list(users))
            await self.machine.share_group_session(room, users)

    async def forget_room(self, room_id: str) -> None:
        """Discard the room's Megolm sessions (a text-only session's end): after it not even
        Alcove can decrypt what a backup of the homeserver's database still holds. (Alcove
        keeps no server-side key backup, so there is none to delete.)"""
        self._forgotten.add(room_id)
        gone = await self.rooms.forget_room_keys(self.bot, room_id)
        self._share_locks.pop(room_id, None)
        log.info("Discarded %d Megolm sessions of %s", gone, room_id)

    def can_decrypt(self, room_id: str) -> bool:
        """Whether Alcove takes part in the encrypted room ``room_id`` (the predicate the
        "I can't read this room" answer asks): yes once the crypto is started."""
        return self.ready.is_set()


def crypto_store(db: Database, account_id: str) -> tuple[Database, PgCryptoStore]:
    """mautrix's crypto store in Alcove's database: its tables, with mautrix's own migrations
    and version table (``crypto_version``), on Alcove's connection pool (SQLite or PostgreSQL
    alike). ``start()`` the returned database to migrate it."""
    crypto_db = Database.create(
        str(db.url),
        upgrade_table=PgCryptoStore.upgrade_table,
        log=logging.getLogger("alcove.crypto.db"),
    )
    crypto_db.override_pool(db)
    return crypto_db, PgCryptoStore(account_id, PICKLE_KEY, crypto_db)


def _permanent(error: MatrixError) -> bool:
    """A 4xx other than 429: asking again will not help."""
    status = getattr(error, "http_status", None)
    return isinstance(status, int) and 400 <= status < 500 and status != 429


def _extension(body: dict[str, Any], name: str, unstable: str) -> Any:
    """A transaction field under its stable name or its unstable prefix (Synapse sends
    ``de.sorunome.msc2409.to_device`` and ``org.matrix.msc3202.device_lists`` today)."""
    if name in body:
        return body[name]
    return body.get(f"{unstable}.{name}")
