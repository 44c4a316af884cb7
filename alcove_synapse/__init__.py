"""Alcove's optional Synapse module: the homeserver refuses what Alcove can otherwise only repair.

Load it in homeserver.yaml (the package must be importable by Synapse's Python)::

    modules:
      - module: alcove_synapse.AlcoveRules
        config: {bot_user_id: "@alcove:example.org"}   # client_prefix: "c-" is the default

For managed clients (``@<client_prefix>…`` on this homeserver) it refuses: creating rooms,
aliases and directory entries; inviting anyone; joining or being invited to a room the bot did
not create; and any display name or avatar in a membership event other than the one Alcove set.
Alcove sets a managed client's profile through the admin API, so an admin-made profile change is
recorded as the approved one (in the table ``alcove_rules_profile`` of Synapse's database); a
client's own change of their global display name is put back at once (Synapse calls modules only
after storing a profile change), before it reaches any room. A client's own global avatar stays in
their profile (Synapse offers modules no way to undo it) but never reaches a room.

Alcove's clients' namespace is not exclusive (Synapse computes no notifications for users in an
exclusive appservice namespace), so the module refuses anyone else's registration in it. And for
every other local user but the bot (the staff) it keeps Element's account setting "Send read
receipts" off (``staff_private_read_receipts``, on by default): clients never see when staff
read their messages.

``GET /_synapse/client/alcove/rules`` answers with the module's configuration, so that
``alcove doctor`` can say whether it is installed (and for which bot)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from synapse.api.errors import Codes
from synapse.module_api import NOT_SPAM, ModuleApi
from synapse.module_api.errors import ConfigError
from synapse.spam_checker_api import RegistrationBehaviour
from twisted.web.resource import Resource
from twisted.web.server import Request

__version__ = "0.1.0"
STATUS_PATH = "/_synapse/client/alcove/rules"

log = logging.getLogger("alcove_synapse")

_TABLE = "alcove_rules_profile"


@dataclass(frozen=True)
class RulesConfig:
    bot_user_id: str
    client_prefix: str = "c-"
    staff_private_read_receipts: bool = True
    """Keep Element's "Send read receipts" off for every local user who is neither a managed
    client nor the bot (on a practice's homeserver: the staff)."""


ELEMENT_SETTINGS = "im.vector.web.settings"
SEND_READ_RECEIPTS = "sendReadReceipts"


@dataclass(frozen=True)
class Approved:
    displayname: str | None
    avatar_url: str | None


class AlcoveRules:
    def __init__(self, config: RulesConfig, api: ModuleApi) -> None:
        self.config = config
        self.api = api
        self._table_ready = False
        api.register_spam_checker_callbacks(
            user_may_create_room=self.user_may_create_room,
            user_may_create_room_alias=self.user_may_create_room_alias,
            user_may_publish_room=self.user_may_publish_room,
            user_may_invite=self.user_may_invite,
            user_may_send_3pid_invite=self.user_may_send_3pid_invite,
            user_may_join_room=self.user_may_join_room,
            check_registration_for_spam=self.check_registration_for_spam,
        )
        api.register_third_party_rules_callbacks(
            check_event_allowed=self.check_event_allowed,
            on_profile_update=self.on_profile_update,
        )
        if config.staff_private_read_receipts:
            api.register_account_data_callbacks(
                on_account_data_updated=self.on_account_data_updated
            )
        api.register_web_resource(STATUS_PATH, StatusResource(config))

    @staticmethod
    def parse_config(config: dict[str, Any]) -> RulesConfig:
        bot = config.get("bot_user_id")
        if not isinstance(bot, str) or not bot.startswith("@") or ":" not in bot:
            raise ConfigError("bot_user_id: the bot's Matrix ID, e.g. '@alcove:example.org'")
        prefix = config.get("client_prefix", "c-")
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError("client_prefix: Alcove's appservice.client_prefix, e.g. 'c-'")
        private = config.get("staff_private_read_receipts", True)
        if not isinstance(private, bool):
            raise ConfigError("staff_private_read_receipts: true or false")
        return RulesConfig(
            bot_user_id=bot, client_prefix=prefix, staff_private_read_receipts=private
        )

    # ------------------------------------------------------------------ who is who

    def is_managed(self, user_id: str) -> bool:
        return (
            user_id != self.config.bot_user_id
            and user_id.startswith(f"@{self.config.client_prefix}")
            and self.api.is_mine(user_id)
        )

    async def is_governed(self, room_id: str) -> bool:
        """A room Alcove governs is one the bot created (it is the sender of m.room.create)."""
        state = await self.api.get_room_state(room_id, [("m.room.create", "")])
        create = state.get(("m.room.create", ""))
        return create is not None and create.sender == self.config.bot_user_id

    # ------------------------------------------------------------------ spam-checker callbacks

    async def check_registration_for_spam(
        self,
        email_threepid: dict[str, Any] | None,
        username: str | None,
        request_info: Any,
        auth_provider_id: str | None = None,
    ) -> Any:
        """Alcove's client namespace is not exclusive (so that the homeserver computes push and
        email notifications for managed clients): nobody but Alcove may register in it. Alcove
        registers clients as the appservice, which Synapse does not pass through this check."""
        if username and username.lower().startswith(self.config.client_prefix):
            return RegistrationBehaviour.DENY
        return RegistrationBehaviour.ALLOW

    async def user_may_create_room(self, user_id: str, room_config: dict[str, Any]) -> Any:
        return Codes.FORBIDDEN if self.is_managed(user_id) else NOT_SPAM

    async def user_may_create_room_alias(self, user_id: str, room_alias: Any) -> Any:
        return Codes.FORBIDDEN if self.is_managed(user_id) else NOT_SPAM

    async def user_may_publish_room(self, user_id: str, room_id: str) -> Any:
        return Codes.FORBIDDEN if self.is_managed(user_id) else NOT_SPAM

    async def user_may_invite(self, inviter: str, invitee: str, room_id: str) -> Any:
        if self.is_managed(inviter):
            return Codes.FORBIDDEN
        if self.is_managed(invitee) and not await self.is_governed(room_id):
            return Codes.FORBIDDEN
        return NOT_SPAM

    async def user_may_send_3pid_invite(
        self, inviter: str, medium: str, address: str, room_id: str
    ) -> Any:
        return Codes.FORBIDDEN if self.is_managed(inviter) else NOT_SPAM

    async def user_may_join_room(self, user_id: str, room_id: str, is_invited: bool) -> Any:
        if self.is_managed(user_id) and not await self.is_governed(room_id):
            return Codes.FORBIDDEN
        return NOT_SPAM

    # ------------------------------------------------------------------ names and avatars

    async def check_event_allowed(
        self, event: Any, state_events: Any
    ) -> tuple[bool, dict[str, Any] | None]:
        """A managed client's membership event may carry only the approved name and avatar."""
        if event.type != "m.room.member" or not self.is_managed(event.state_key):
            return True, None
        content = event.content
        name = content.get("displayname")
        avatar = content.get("avatar_url")
        if name is None and avatar is None:
            return True, None
        approved = await self.approved(event.state_key)
        if name is not None and name != approved.displayname:
            log.info("Refused a display name of %s in %s", event.state_key, event.room_id)
            return False, None
        if avatar is not None and avatar != approved.avatar_url:
            log.info("Refused an avatar of %s in %s", event.state_key, event.room_id)
            return False, None
        return True, None

    async def on_profile_update(
        self, user_id: str, profile: Any, by_admin: bool, deactivation: bool
    ) -> None:
        """Admin changes (Alcove's) are approved; a client's own display name change is undone
        before Synapse sends it into the client's rooms."""
        if not self.is_managed(user_id) or deactivation:
            return
        if by_admin:
            await self._record(user_id, Approved(profile.display_name, profile.avatar_url))
            return
        row = await self._row(user_id)
        # Never approved (the module came after the client): their opaque localpart, until
        # Alcove puts their initials back.
        wanted = row.displayname if row is not None else user_id[1:].split(":", 1)[0]
        if wanted is not None and profile.display_name != wanted:
            log.info("Putting back the display name of %s", user_id)
            from synapse.types import UserID

            await self.api.set_displayname(UserID.from_string(user_id), wanted)

    # ------------------------------------------------------------------ account data

    async def on_account_data_updated(
        self, user_id: str, room_id: str | None, account_data_type: str, content: Any
    ) -> None:
        """A staff member turned Element's "Send read receipts" back on: put it off again
        (Alcove turns it off at its start; clients must not see when staff read)."""
        if (
            room_id is not None
            or account_data_type != ELEMENT_SETTINGS
            or not isinstance(content, dict)
            or content.get(SEND_READ_RECEIPTS) is False
            or user_id == self.config.bot_user_id
            or self.is_managed(user_id)
            or not self.api.is_mine(user_id)
        ):
            return
        log.info("Putting %s's read receipts back to private", user_id)
        await self.api.account_data_manager.put_global(
            user_id, ELEMENT_SETTINGS, {**content, SEND_READ_RECEIPTS: False}
        )

    async def approved(self, user_id: str) -> Approved:
        row = await self._row(user_id)
        if row is not None:
            return row
        profile = await self.api.get_profile_for_user(user_id[1:].split(":", 1)[0])
        return Approved(profile.display_name, profile.avatar_url)

    # ------------------------------------------------------------------ storage

    async def _ensure_table(self) -> None:
        if self._table_ready:
            return

        def create(txn: Any) -> None:
            txn.execute(
                f"CREATE TABLE IF NOT EXISTS {_TABLE} (user_id TEXT NOT NULL PRIMARY KEY,"
                " displayname TEXT, avatar_url TEXT)"
            )

        await self.api.run_db_interaction("alcove_rules_create", create)
        self._table_ready = True

    async def _row(self, user_id: str) -> Approved | None:
        await self._ensure_table()

        def select(txn: Any) -> Any:
            txn.execute(
                f"SELECT displayname, avatar_url FROM {_TABLE} WHERE user_id = ?",  # noqa: S608
                (user_id,),
            )
            return txn.fetchone()

        row = await self.api.run_db_interaction("alcove_rules_get", select)
        return Approved(row[0], row[1]) if row else None

    async def _record(self, user_id: str, approved: Approved) -> None:
        await self._ensure_table()

        def upsert(txn: Any) -> None:
            txn.execute(
                f"INSERT INTO {_TABLE} (user_id, displayname, avatar_url) VALUES (?, ?, ?)"  # noqa: S608
                " ON CONFLICT (user_id) DO UPDATE SET displayname = excluded.displayname,"
                " avatar_url = excluded.avatar_url",
                (user_id, approved.displayname, approved.avatar_url),
            )

        await self.api.run_db_interaction("alcove_rules_set", upsert)


class StatusResource(Resource):
    """``GET /_synapse/client/alcove/rules``: which bot and client prefix the module enforces."""

    isLeaf = True

    def __init__(self, config: RulesConfig) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.body = json.dumps(
            {
                "module": "alcove_synapse",
                "version": __version__,
                "bot_user_id": config.bot_user_id,
                "client_prefix": config.client_prefix,
            }
        ).encode()

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")  # type: ignore[no-untyped-call]
        return self.body
