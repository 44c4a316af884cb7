"""Clients' email notifications, as the homeserver sends them: the ``email:`` settings of
homeserver.yaml (subjects without names), Alcove's templates (no message text, no names) and
the check that the homeserver really uses them. Pure functions of the parsed homeserver.yaml.

Synapse mails a user who has an email pusher when a message that notifies them has waited
``notif_delay_before_mail`` unread (then at most one mail per room per throttle window). Its
stock templates and subjects carry the message text, the sender's name and the room's name
(a 1:1 room's name is the client's full name), so Alcove ships its own."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from .startup import Check

TEMPLATES = ("notif_mail.html", "notif_mail.txt")
"""The templates Synapse renders for a notification mail (its defaults' names); the stock
ones include ``room.*`` and ``notif.*``, Alcove's include nothing."""

NEW_MESSAGE = "[%(app)s] You have a new message"
SUBJECTS = {
    "message_from_person_in_room": NEW_MESSAGE,
    "message_from_person": NEW_MESSAGE,
    "messages_from_person": "[%(app)s] You have new messages",
    "messages_in_room": "[%(app)s] You have new messages",
    "messages_in_room_and_others": "[%(app)s] You have new messages",
    "messages_from_person_and_others": "[%(app)s] You have new messages",
    "invite_from_person": "[%(app)s] You have been invited to a conversation",
    "invite_from_person_to_room": "[%(app)s] You have been invited to a conversation",
    "invite_from_person_to_space": "[%(app)s] You have been invited to a conversation",
}
"""Synapse's notification subjects (``email.subjects``), without ``%(person)s``/``%(room)s``."""

_NAMED = re.compile(r"%\((person|room|space)\)s")
CHECK_NAME = "client email notifications carry no text and no names"


def template_dir() -> Path:
    """``alcove_synapse/templates``, found without importing alcove_synapse (which needs
    Synapse): next to ``bridge`` in a checkout, or in site-packages."""
    spec = importlib.util.find_spec("alcove_synapse")
    if spec is not None and spec.origin:
        return Path(spec.origin).parent / "templates"
    return Path(__file__).resolve().parent.parent / "alcove_synapse" / "templates"


def homeserver_settings(
    *,
    smtp_host: str,
    smtp_port: int,
    notif_from: str,
    delay: str = "10m",
    app_name: str = "Alcove",
    client_base_url: str | None = None,
) -> dict[str, Any]:
    """The ``email:`` and ``templates:`` keys of homeserver.yaml (README, `alcove dev`)."""
    email: dict[str, Any] = {
        "smtp_host": smtp_host,
        "smtp_port": smtp_port,
        "notif_from": notif_from,
        "app_name": app_name,
        "enable_notifs": True,
        # A user who gets an email 3PID is not given an email pusher by Synapse: Alcove adds
        # one (`!client email`), for clients only.
        "notif_for_new_users": False,
        "notif_delay_before_mail": delay,
        "subjects": dict(SUBJECTS),
    }
    if client_base_url:
        email["client_base_url"] = client_base_url
    return {
        "email": email,
        "templates": {"custom_template_directory": str(template_dir())},
    }


def check_email_notifications(hs: dict[str, Any], base: Path) -> Check:
    """The notification mails the homeserver would send are rendered with Alcove's templates
    and subjects (``base``: the folder of homeserver.yaml, for relative paths)."""
    email = hs.get("email") or {}
    if not email.get("enable_notifs"):
        return Check(
            CHECK_NAME,
            False,
            "email notifications are off (optional): clients with an email address get no mail "
            "about new messages. See the README's email: snippet for homeserver.yaml.",
            warning=True,
        )
    dirs = [
        (hs.get("templates") or {}).get("custom_template_directory"),
        email.get("template_dir"),
    ]
    search = [base / str(d) for d in dirs if d]  # absolute paths stay absolute
    names = [
        str(email.get("notif_template_html", TEMPLATES[0])),
        str(email.get("notif_template_text", TEMPLATES[1])),
    ]
    problems = []
    ours = template_dir()
    for name, alcove_name in zip(names, TEMPLATES, strict=True):
        found = next((d / name for d in search if (d / name).is_file()), None)
        if found is None:
            problems.append(f"{name} is Synapse's own (it shows the message text and names)")
            continue
        try:
            same = found.read_bytes() == (ours / alcove_name).read_bytes()
        except OSError as e:
            problems.append(f"cannot compare {found} with Alcove's: {e}")
            continue
        if not same:
            problems.append(f"{found} is not Alcove's {alcove_name}")
    subjects = email.get("subjects") or {}
    named = sorted(key for key in SUBJECTS if _NAMED.search(str(subjects.get(key, "%(person)s"))))
    if named:
        problems.append(f"email.subjects {', '.join(named)} name people or rooms")
    if problems:
        return Check(
            CHECK_NAME,
            False,
            "; ".join(problems)
            + f". Set templates: {{custom_template_directory: {ours}}} and the email.subjects "
            "of the README in homeserver.yaml, then restart Synapse.",
        )
    return Check(CHECK_NAME, True, f"Alcove's templates ({search[0]})")
