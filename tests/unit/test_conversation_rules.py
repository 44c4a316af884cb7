"""bots/features/conversations/rules.py: initials, opaque IDs, passwords, power levels, room
creation bodies and templates. Pure functions, no I/O."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from bots.features.conversations import rules
from bots.features.conversations.rules import (
    BOT_ONLY_EVENTS,
    THERAPIST_ONLY_EVENTS,
    TemplateError,
    dm_body,
    group_body,
    initial_password,
    initials,
    opaque_localpart,
    power_levels,
    render,
)

THERAPIST = "@therapist:test.local"
BOT = "@alcove:test.local"
CLIENT = "@c-abc123:test.local"
OTHER = "@c-def456:test.local"


def initial_state(body: dict[str, Any], event_type: str) -> dict[str, Any]:
    matches = [e for e in body["initial_state"] if e["type"] == event_type]
    assert len(matches) == 1, body["initial_state"]
    assert matches[0]["state_key"] == ""
    content: dict[str, Any] = matches[0]["content"]
    return content


# --------------------------------------------------------------------------- initials


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Jane Doe", "J.D."),
        ("Mary Ann Smith", "M.A.S."),
        ("jane doe", "J.D."),
        ("Jane", "J."),
        ("  Jane   Doe  ", "J.D."),
        ("Jane\tDoe", "J.D."),
        ("42 Jane Doe", "J.D."),
        ("#1 jane - doe", "J.D."),
        ("mary-ann o'neil", "M.O."),
        ("Élodie Ünal", "É.Ü."),
    ],
)
def test_initials(name: str, expected: str) -> None:
    assert initials(name) == expected


def test_initials_keep_at_most_four() -> None:
    assert initials("Anna Beth Cara Dora Emma Fay") == "A.B.C.D."
    assert initials("Anna Beth Cara Dora") == "A.B.C.D."


@pytest.mark.parametrize("garbage", ["", "   ", "123 456", "!!! ???", "-- ..", "\n\t"])
def test_initials_of_nothing_usable_is_a_question_mark(garbage: str) -> None:
    assert initials(garbage) == "?"


def test_initials_contain_only_capitals_and_dots() -> None:
    for name in ("jane doe", "a b c d e f g", "x", "Zoë Quinn-Smith"):
        assert re.fullmatch(r"(?:[^\W\d_]\.){1,4}", initials(name)), name
        assert initials(name) == initials(name).upper()


# --------------------------------------------------------------------------- opaque IDs


def test_opaque_localpart_shape() -> None:
    part = opaque_localpart("c-")
    assert part.startswith("c-")
    assert re.fullmatch(r"[a-z0-9]{10}", part.removeprefix("c-")), part
    assert len(part) == len("c-") + 10
    longer = opaque_localpart("client.", length=16)
    assert longer.startswith("client.")
    assert re.fullmatch(r"[a-z0-9]{16}", longer.removeprefix("client.")), longer


def test_opaque_localparts_differ() -> None:
    parts = {opaque_localpart("c-") for _ in range(50)}
    assert len(parts) == 50


def test_opaque_localpart_says_nothing_about_the_person() -> None:
    # The function does not even take a name: nothing of one can leak into the ID.
    for _ in range(20):
        part = opaque_localpart("c-")
        assert "jane" not in part
        assert "doe" not in part
        assert "j.d" not in part


# --------------------------------------------------------------------------- passwords


def test_initial_password_is_deterministic_per_event_and_secret() -> None:
    first = initial_password("as-token", "$event1")
    assert initial_password("as-token", "$event1") == first
    assert initial_password("as-token", "$event2") != first
    assert initial_password("other-token", "$event1") != first


def test_initial_password_is_url_safe_and_long_enough() -> None:
    for event in ("$a", "$b", "$event:with/odd+chars", ""):
        password = initial_password("as-token", event)
        assert len(password) >= 16
        assert re.fullmatch(r"[A-Za-z0-9_-]+", password), password


def test_initial_password_does_not_contain_its_inputs() -> None:
    password = initial_password("as-token-for-tests", "$origin")
    assert "as-token" not in password
    assert "origin" not in password


# --------------------------------------------------------------------------- power levels


def test_power_levels_staff_and_defaults() -> None:
    pl = power_levels({THERAPIST: rules.THERAPIST_LEVEL})
    assert pl["users"] == {THERAPIST: 90}
    assert BOT not in pl["users"]
    for key in ("state_default", "invite", "kick", "ban", "redact"):
        assert pl[key] == 90, key
    assert pl["events_default"] == 0
    assert pl["users_default"] == 0
    assert pl["notifications"] == {"room": 90}


def test_power_levels_events() -> None:
    events = power_levels({THERAPIST: 90})["events"]
    for event_type in THERAPIST_ONLY_EVENTS:
        assert events[event_type] == 90, event_type
    for event_type in BOT_ONLY_EVENTS:
        assert events[event_type] == 100, event_type
    for event_type in (
        "m.room.power_levels",
        "m.room.history_visibility",
        "m.room.encryption",
        "m.room.retention",
        "m.room.tombstone",
    ):
        assert events[event_type] == 100, event_type
    for event_type in ("m.room.name", "m.room.topic", "m.room.avatar"):
        assert events[event_type] == 90, event_type
    # Nobody listed in a room reaches the bot-only level.
    assert max(power_levels({THERAPIST: 90, OTHER: 50})["users"].values()) < 100


def test_power_levels_copy_the_staff_mapping() -> None:
    staff = {THERAPIST: 90}
    pl = power_levels(staff)
    pl["users"][OTHER] = 50
    assert staff == {THERAPIST: 90}


# --------------------------------------------------------------------------- room bodies


def test_dm_body() -> None:
    body = dm_body(THERAPIST, CLIENT, "Jane Doe")
    assert body["room_version"] == "12"
    assert body["creation_content"]["m.federate"] is False
    assert body["preset"] == "private_chat"
    assert body["is_direct"] is True
    assert body["name"] == "Jane Doe"
    assert sorted(body["invite"]) == sorted([THERAPIST, CLIENT])
    assert initial_state(body, "m.room.history_visibility") == {"history_visibility": "shared"}
    assert initial_state(body, "m.room.join_rules") == {"join_rule": "invite"}
    assert initial_state(body, "m.room.guest_access") == {"guest_access": "forbidden"}
    pl = body["power_level_content_override"]
    assert pl["users"] == {THERAPIST: 90}
    assert CLIENT not in pl["users"]
    assert "topic" not in body


def test_group_body() -> None:
    body = group_body(THERAPIST, [CLIENT, OTHER], "Tuesday group")
    assert body["room_version"] == "12"
    assert body["creation_content"]["m.federate"] is False
    assert body["is_direct"] is False
    assert body["name"] == "Tuesday group"
    assert sorted(body["invite"]) == sorted([THERAPIST, CLIENT, OTHER])
    assert initial_state(body, "m.room.history_visibility") == {"history_visibility": "joined"}
    assert initial_state(body, "m.room.join_rules") == {"join_rule": "invite"}
    pl = body["power_level_content_override"]
    assert pl["users"] == {THERAPIST: 90}
    assert BOT not in pl["users"]


def test_group_body_never_carries_a_client_name() -> None:
    body = group_body(THERAPIST, [CLIENT], "Group")
    assert "Jane" not in repr(body)


def test_staff_room_body() -> None:
    body = rules.staff_room_body("Team", {THERAPIST: 90, OTHER: 50}, "Staff only.")
    assert body["topic"] == "Staff only."
    assert body["invite"] == sorted([THERAPIST, OTHER])
    assert body["power_level_content_override"]["users"] == {THERAPIST: 90, OTHER: 50}
    assert initial_state(body, "m.room.history_visibility") == {"history_visibility": "shared"}


# --------------------------------------------------------------------------- templates


def test_render_fills_placeholders() -> None:
    text = render(
        "Hello {client_first_name}, {therapist_name} at {practice_name}. {{literal}}",
        {"client_first_name": "Jane", "therapist_name": "Dr T", "practice_name": "Calm"},
    )
    assert text == "Hello Jane, Dr T at Calm. {literal}"


def test_render_does_not_expand_placeholders_inside_values() -> None:
    assert render("Hi {name}", {"name": "{secret}"}) == "Hi {secret}"


def test_render_unknown_placeholder_names_it() -> None:
    with pytest.raises(TemplateError, match="nickname"):
        render("Hello {nickname}", {"client_first_name": "Jane"})


@pytest.mark.parametrize("template", ["{", "Hello {name", "}", "{}", "{0}"])
def test_render_malformed_template(template: str) -> None:
    with pytest.raises(TemplateError):
        render(template, {"name": "Jane"})


def test_template_error_is_a_value_error() -> None:
    assert issubclass(TemplateError, ValueError)


def test_render_attribute_placeholder_is_a_template_error() -> None:
    with pytest.raises(TemplateError):
        render("Hello {name.nope}", {"name": "Jane"})


@pytest.mark.parametrize(
    "template",
    [
        "{name:>60}",  # {therapist_name:>999999999} built a ~1 GB string
        "{name:{name}}",
        "{name!r}",
        "{name!s:>60}",
        "{name[0]}",
        "{name.__class__}",
    ],
)
def test_render_refuses_format_specs_conversions_and_access(template: str) -> None:
    with pytest.raises(TemplateError, match=r"format spec|malformed"):
        render(template, {"name": "Jane"})


def test_render_of_the_gigabyte_phrase_fails_fast_and_small() -> None:
    with pytest.raises(TemplateError, match="format spec") as info:
        render("{therapist_name:>999999999}", {"therapist_name": "Dr T"})
    assert len(str(info.value)) < 200


def test_room_bodies_are_encrypted_from_the_start_when_asked() -> None:
    """encryption.rooms: m.room.encryption (Megolm) in the initial state, so not one message
    of the room is ever sent in the clear; without it, no encryption state at all."""
    megolm = {"algorithm": "m.megolm.v1.aes-sha2"}
    bodies: dict[str, Callable[[bool], dict[str, Any]]] = {
        "dm": lambda e: dm_body(THERAPIST, CLIENT, "Jane Doe", encrypted=e),
        "group": lambda e: group_body(THERAPIST, [CLIENT], "Group", encrypted=e),
        "management": lambda e: rules.management_body(THERAPIST, encrypted=e),
        "staff": lambda e: rules.staff_room_body("Team", {THERAPIST: 90}, "Staff.", encrypted=e),
    }
    for kind, body in bodies.items():
        assert initial_state(body(True), "m.room.encryption") == megolm, kind
        plain = body(False)
        assert all(s["type"] != "m.room.encryption" for s in plain["initial_state"]), kind
        # Only the bot may change it (it can never be turned off, only rotated).
        assert plain["power_level_content_override"]["events"]["m.room.encryption"] == 100
