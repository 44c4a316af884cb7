"""alcove_synapse's rules against a recording stand-in for Synapse's ModuleApi (the same module
runs inside the integration Synapse: tests/integration/test_governance.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from synapse.api.errors import Codes
from synapse.module_api import NOT_SPAM
from synapse.module_api.errors import ConfigError

from alcove_synapse import STATUS_PATH, AlcoveRules

DOMAIN = "test.local"
BOT = f"@alcove:{DOMAIN}"
CLIENT = f"@c-abc123:{DOMAIN}"
THERAPIST = f"@therapist:{DOMAIN}"
OURS = f"!ours:{DOMAIN}"
THEIRS = f"!theirs:{DOMAIN}"


class FakeModuleApi:
    """Records registrations; rooms, profiles and Synapse's database are plain Python."""

    def __init__(self) -> None:
        self.spam: dict[str, Any] = {}
        self.rules: dict[str, Any] = {}
        self.resources: dict[str, Any] = {}
        self.creators = {OURS: BOT, THEIRS: THERAPIST}
        self.profiles: dict[str, tuple[str | None, str | None]] = {}
        self.set_names: list[tuple[str, str]] = []
        self.db = sqlite3.connect(":memory:")
        self.account_data_callbacks: dict[str, Any] = {}
        self.put: list[tuple[str, str, dict[str, Any]]] = []

    def register_spam_checker_callbacks(self, **callbacks: Any) -> None:
        self.spam = callbacks

    def register_third_party_rules_callbacks(self, **callbacks: Any) -> None:
        self.rules = callbacks

    def register_account_data_callbacks(self, **callbacks: Any) -> None:
        self.account_data_callbacks = callbacks

    @property
    def account_data_manager(self) -> Any:
        return self

    async def put_global(self, user_id: str, data_type: str, new_data: dict[str, Any]) -> None:
        self.put.append((user_id, data_type, new_data))

    def register_web_resource(self, path: str, resource: Any) -> None:
        self.resources[path] = resource

    def is_mine(self, user_id: str) -> bool:
        return user_id.endswith(f":{DOMAIN}")

    async def get_room_state(self, room_id: str, event_filter: Any) -> dict[Any, Any]:
        creator = self.creators.get(room_id)
        return {} if creator is None else {("m.room.create", ""): SimpleNamespace(sender=creator)}

    async def get_profile_for_user(self, localpart: str) -> Any:
        name, avatar = self.profiles.get(f"@{localpart}:{DOMAIN}", (localpart, None))
        return SimpleNamespace(display_name=name, avatar_url=avatar)

    async def run_db_interaction(self, desc: str, func: Callable[..., Any], *args: Any) -> Any:
        result = func(self.db.cursor(), *args)
        self.db.commit()
        return result

    async def set_displayname(self, user_id: Any, name: str) -> None:
        self.set_names.append((user_id.to_string(), name))


@pytest.fixture
def api() -> FakeModuleApi:
    return FakeModuleApi()


@pytest.fixture
def rules(api: FakeModuleApi) -> AlcoveRules:
    return AlcoveRules(AlcoveRules.parse_config({"bot_user_id": BOT}), api)  # type: ignore[arg-type]


def membership(user: str, **content: Any) -> Any:
    return SimpleNamespace(
        type="m.room.member",
        state_key=user,
        room_id=OURS,
        content={"membership": "join", **content},
    )


def profile(name: str | None, avatar: str | None = None) -> Any:
    return SimpleNamespace(display_name=name, avatar_url=avatar)


def test_config_needs_the_bot_and_defaults_the_prefix() -> None:
    with pytest.raises(ConfigError):
        AlcoveRules.parse_config({})
    assert AlcoveRules.parse_config({"bot_user_id": BOT}).client_prefix == "c-"


def test_it_registers_its_callbacks_and_status_page(rules: AlcoveRules, api: FakeModuleApi) -> None:
    assert {"user_may_create_room", "user_may_invite", "user_may_join_room"} <= set(api.spam)
    assert {"check_event_allowed", "on_profile_update"} <= set(api.rules)
    assert STATUS_PATH in api.resources


async def test_clients_may_not_create_rooms_aliases_or_invite(rules: AlcoveRules) -> None:
    assert await rules.user_may_create_room(CLIENT, {}) == Codes.FORBIDDEN
    assert await rules.user_may_create_room_alias(CLIENT, "#a:x") == Codes.FORBIDDEN
    assert await rules.user_may_publish_room(CLIENT, OURS) == Codes.FORBIDDEN
    assert await rules.user_may_invite(CLIENT, THERAPIST, OURS) == Codes.FORBIDDEN
    assert await rules.user_may_send_3pid_invite(CLIENT, "email", "a@b", OURS) == Codes.FORBIDDEN
    # Staff, the bot, and users of other servers are not managed clients.
    assert await rules.user_may_create_room(THERAPIST, {}) == NOT_SPAM
    assert await rules.user_may_create_room(BOT, {}) == NOT_SPAM
    assert await rules.user_may_create_room("@c-abc:elsewhere.org", {}) == NOT_SPAM


async def test_clients_join_and_are_invited_only_where_the_bot_created(rules: AlcoveRules) -> None:
    assert await rules.user_may_join_room(CLIENT, OURS, True) == NOT_SPAM
    assert await rules.user_may_join_room(CLIENT, THEIRS, False) == Codes.FORBIDDEN
    assert await rules.user_may_join_room(CLIENT, "!unknown:x", False) == Codes.FORBIDDEN
    assert await rules.user_may_invite(THERAPIST, CLIENT, OURS) == NOT_SPAM
    assert await rules.user_may_invite(THERAPIST, CLIENT, THEIRS) == Codes.FORBIDDEN
    assert await rules.user_may_join_room(THERAPIST, THEIRS, False) == NOT_SPAM


async def test_only_the_name_alcove_set_reaches_a_room(rules: AlcoveRules) -> None:
    await rules.on_profile_update(CLIENT, profile("J.D."), True, False)  # Alcove, admin API
    assert await rules.check_event_allowed(membership(CLIENT, displayname="J.D."), {}) == (
        True,
        None,
    )
    assert await rules.check_event_allowed(membership(CLIENT), {}) == (True, None)
    for content in ({"displayname": "Jane Doe"}, {"displayname": "J.D.", "avatar_url": "mxc://a"}):
        assert await rules.check_event_allowed(membership(CLIENT, **content), {}) == (False, None)
    # Staff choose their own names; other events pass untouched.
    assert await rules.check_event_allowed(membership(THERAPIST, displayname="Dr T"), {}) == (
        True,
        None,
    )
    message = SimpleNamespace(type="m.room.message", state_key=None, content={"body": "x"})
    assert await rules.check_event_allowed(message, {}) == (True, None)


async def test_a_clients_own_global_rename_is_put_back(
    rules: AlcoveRules, api: FakeModuleApi
) -> None:
    await rules.on_profile_update(CLIENT, profile("J.D."), True, False)
    await rules.on_profile_update(CLIENT, profile("Jane Doe"), False, False)
    assert api.set_names == [(CLIENT, "J.D.")]
    await rules.on_profile_update(CLIENT, profile("J.D.", "mxc://face"), False, False)
    assert api.set_names == [(CLIENT, "J.D.")]  # the name is right; avatars cannot be undone


async def test_before_alcove_set_a_name_the_opaque_localpart_is_the_fallback(
    rules: AlcoveRules, api: FakeModuleApi
) -> None:
    api.profiles[CLIENT] = ("J.D.", None)  # set before the module was installed
    assert await rules.check_event_allowed(membership(CLIENT, displayname="J.D."), {}) == (
        True,
        None,
    )
    assert await rules.check_event_allowed(membership(CLIENT, displayname="Jane"), {}) == (
        False,
        None,
    )
    await rules.on_profile_update(CLIENT, profile("Jane Doe"), False, False)
    assert api.set_names == [(CLIENT, "c-abc123")]


async def test_nobody_registers_in_the_client_namespace(rules: AlcoveRules) -> None:
    """The namespace is not exclusive (so that Synapse notifies clients); the module keeps it
    Alcove's. Alcove registers clients as the appservice, which Synapse does not check here."""
    from synapse.spam_checker_api import RegistrationBehaviour

    for name in ("c-abc123", "C-sneaky"):
        assert await rules.check_registration_for_spam(None, name, []) == (
            RegistrationBehaviour.DENY
        )
    allowed: tuple[str | None, ...] = ("therapist", "cathy", None)
    for other in allowed:
        assert await rules.check_registration_for_spam(None, other, []) == (
            RegistrationBehaviour.ALLOW
        )


async def test_staff_read_receipts_stay_private(rules: AlcoveRules, api: FakeModuleApi) -> None:
    callback = api.account_data_callbacks["on_account_data_updated"]
    settings = "im.vector.web.settings"
    await callback(THERAPIST, None, settings, {"sendReadReceipts": True, "theme": "dark"})
    assert api.put == [(THERAPIST, settings, {"sendReadReceipts": False, "theme": "dark"})]
    await callback(THERAPIST, None, settings, {"sendReadReceipts": False})  # its own echo
    await callback(CLIENT, None, settings, {"sendReadReceipts": True})  # clients choose
    await callback(BOT, None, settings, {})
    await callback("@someone:elsewhere.org", None, settings, {})
    await callback(THERAPIST, OURS, settings, {})  # room account data
    await callback(THERAPIST, None, "m.direct", {})
    assert len(api.put) == 1
    off = AlcoveRules.parse_config({"bot_user_id": BOT, "staff_private_read_receipts": False})
    other = FakeModuleApi()
    AlcoveRules(off, other)  # type: ignore[arg-type]
    assert other.account_data_callbacks == {}
