"""Pure rules for conversations: initials, opaque IDs, power levels, room creation bodies.
No I/O here, so every rule is unit-tested exactly."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
from typing import Any

from bridge.config import template_parts

THERAPIST_LEVEL = 90
STAFF_LEVEL = 50
BOT_ONLY = 100  # nobody but the creator (the bot, infinite power in room v12) reaches this
ROOM_VERSION = "12"
MEGOLM = "m.megolm.v1.aes-sha2"

THERAPIST_ONLY_EVENTS = (
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.pinned_events",
    "m.call.invite",
    "org.matrix.msc3401.call",
    "im.vector.modular.widgets",
)
BOT_ONLY_EVENTS = (
    "m.room.power_levels",
    "m.room.history_visibility",
    "m.room.encryption",
    "m.room.retention",
    "m.room.tombstone",
    "m.room.server_acl",
    "m.room.join_rules",
)

_ID_ALPHABET = string.ascii_lowercase + string.digits


def initials(full_name: str) -> str:
    """'Jane Doe' -> 'J.D.'; 'mary-ann o'neil' -> 'M.O.'; letters only, at most 4."""
    letters = [part[0].upper() for part in full_name.split() if part and part[0].isalpha()]
    return "".join(f"{c}." for c in letters[:4]) or "?"


def opaque_localpart(prefix: str, length: int = 10) -> str:
    """A client localpart that says nothing about the person: prefix + random [a-z0-9]."""
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def initial_password(secret: str, origin_event: str) -> str:
    """The client's first password, derived from the command that created them: a re-run of the
    same command after a crash gives the same password, and nothing needs to be stored. The key
    is the appservice token, whose holder controls managed accounts anyway."""
    digest = hmac.new(
        secret.encode(), f"initial-password\x00{origin_event}".encode(), hashlib.sha256
    )
    return base64.urlsafe_b64encode(digest.digest()[:12]).decode()


def power_levels(staff: dict[str, int]) -> dict[str, Any]:
    """Power levels for an Alcove room. ``staff`` maps user id -> level (the bot is the room
    creator and must not be listed in room version 12)."""
    events: dict[str, int] = {t: THERAPIST_LEVEL for t in THERAPIST_ONLY_EVENTS}
    events.update({t: BOT_ONLY for t in BOT_ONLY_EVENTS})
    return {
        "users": dict(staff),
        "users_default": 0,
        "events_default": 0,
        "state_default": THERAPIST_LEVEL,
        "invite": THERAPIST_LEVEL,
        "kick": THERAPIST_LEVEL,
        "ban": THERAPIST_LEVEL,
        "redact": THERAPIST_LEVEL,
        "events": events,
        "notifications": {"room": THERAPIST_LEVEL},
    }


def create_body(
    *,
    name: str,
    invite: list[str],
    staff: dict[str, int],
    history: str,
    is_direct: bool,
    topic: str | None = None,
    encrypted: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "room_version": ROOM_VERSION,
        "preset": "private_chat",
        "name": name,
        "invite": invite,
        "is_direct": is_direct,
        "creation_content": {"m.federate": False},
        "power_level_content_override": power_levels(staff),
        "initial_state": [
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": history},
            },
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "invite"}},
            {
                "type": "m.room.guest_access",
                "state_key": "",
                "content": {"guest_access": "forbidden"},
            },
        ],
    }
    if topic:
        body["topic"] = topic
    if encrypted:  # end-to-end encrypted from its first message (encryption.rooms)
        body["initial_state"].append(
            {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}
        )
    return body


def dm_body(
    therapist: str, client: str, client_full_name: str, *, encrypted: bool = False
) -> dict[str, Any]:
    """1:1 room: title = the client's name (only therapist and client are in it)."""
    return create_body(
        name=client_full_name,
        invite=[therapist, client],
        staff={therapist: THERAPIST_LEVEL},
        history="shared",
        is_direct=True,
        encrypted=encrypted,
    )


def group_body(
    therapist: str, clients: list[str], title: str, *, encrypted: bool = False
) -> dict[str, Any]:
    """Community room: new members do not see earlier messages (history 'joined')."""
    return create_body(
        name=title,
        invite=[therapist, *clients],
        staff={therapist: THERAPIST_LEVEL},
        history="joined",
        is_direct=False,
        encrypted=encrypted,
    )


MANAGEMENT_ROOM_NAME = "Alcove"


def management_body(staff: str, *, encrypted: bool = False) -> dict[str, Any]:
    """A staff member's management room: a DM with the bot (encrypted per
    ``encryption.rooms``), the staff member below the invite level so nobody else can be let
    in."""
    return create_body(
        name=MANAGEMENT_ROOM_NAME,
        invite=[staff],
        staff={staff: STAFF_LEVEL},
        history="shared",
        is_direct=True,
        topic="Your private room with Alcove: commands, client names, initial passwords and "
        "transcripts come only here.",
        encrypted=encrypted,
    )


def staff_room_body(
    name: str, staff: dict[str, int], topic: str, *, encrypted: bool = False
) -> dict[str, Any]:
    return create_body(
        name=name,
        invite=sorted(staff),
        staff=staff,
        history="shared",
        is_direct=False,
        topic=topic,
        encrypted=encrypted,
    )


def space_body(name: str, members: dict[str, int], topic: str) -> dict[str, Any]:
    """A space Alcove owns (``m.space``): its members (staff only, never a client) below the
    state and invite levels, so only the bot files rooms in it and nobody can be let in; and
    nobody writes in it (a space is a folder, not a chat). Never encrypted: it holds no
    messages, only the list of its rooms."""
    body = create_body(
        name=name,
        invite=sorted(members),
        staff=members,
        history="shared",
        is_direct=False,
        topic=topic,
    )
    body["creation_content"]["type"] = "m.space"
    body["power_level_content_override"]["events_default"] = BOT_ONLY
    return body


class TemplateError(ValueError):
    pass


def render(template: str, values: dict[str, str]) -> str:
    """Fill {placeholders} by plain substitution, never ``str.format``: a format spec, a
    conversion or attribute access is an error (see ``template_parts``), and so is an unknown
    placeholder, named. Values are inserted as they are (their braces are not expanded)."""
    try:
        parts = template_parts(template)
    except ValueError as e:
        raise TemplateError(str(e)) from None
    out: list[str] = []
    for literal, name in parts:
        out.append(literal)
        if name is not None:
            if name not in values:
                raise TemplateError(f"unknown placeholder {{{name}}}")
            out.append(values[name])
    return "".join(out)
