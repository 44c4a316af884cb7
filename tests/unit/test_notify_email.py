"""The homeserver's email settings for clients' notifications, and doctor's check that the mails
are rendered with Alcove's templates and subjects (no message text, no names)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jinja2
import pytest

from bots.features.conversations.service import normalise_email, sign_in_help
from bridge.notify_email import (
    SUBJECTS,
    TEMPLATES,
    check_email_notifications,
    homeserver_settings,
    template_dir,
)
from bridge.synapse_checks import check_restore


def settings(**overrides: Any) -> dict[str, Any]:
    hs = homeserver_settings(smtp_host="127.0.0.1", smtp_port=25, notif_from="P <n@example.org>")
    hs.update(overrides)
    return hs


def test_the_generated_settings_pass(tmp_path: Path) -> None:
    hs = settings()
    assert hs["email"]["enable_notifs"] is True
    assert hs["email"]["notif_delay_before_mail"] == "10m"
    check = check_email_notifications(hs, tmp_path)
    assert check.ok, check.detail


def test_off_is_a_warning(tmp_path: Path) -> None:
    check = check_email_notifications({}, tmp_path)
    assert not check.ok and check.warning


def test_stock_templates_or_named_subjects_fail(tmp_path: Path) -> None:
    stock = settings(templates={})  # no custom directory: Synapse's own notif_mail.*
    check = check_email_notifications(stock, tmp_path)
    assert not check.ok and not check.warning
    assert "notif_mail.html is Synapse's own" in check.detail

    changed = tmp_path / "tpl"
    shutil.copytree(template_dir(), changed)
    (changed / "notif_mail.txt").write_text("{{ summary_text }}")
    hs = settings(templates={"custom_template_directory": "tpl"})  # relative to homeserver.yaml
    check = check_email_notifications(hs, tmp_path)
    assert not check.ok and "is not Alcove's notif_mail.txt" in check.detail
    assert "notif_mail.html" not in check.detail

    named = settings()
    named["email"]["subjects"] = {**SUBJECTS, "messages_in_room": "%(room)s has news"}
    check = check_email_notifications(named, tmp_path)
    assert not check.ok and "messages_in_room" in check.detail
    del named["email"]["subjects"]  # Synapse's default subjects name people and rooms
    assert "message_from_person_in_room" in check_email_notifications(named, tmp_path).detail


def test_alcove_templates_render_no_name_and_no_text() -> None:
    """Rendered as Synapse renders them, with every variable it passes holding names and text."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir())), autoescape=True)
    variables = {
        "app_name": "Practice",
        "server_name": "example.org",
        "user_display_name": "J.D.",
        "unsubscribe_link": "https://example.org/unsubscribe",
        "summary_text": "Dr Who sent a message in Jane Doe",
        "rooms": [{"title": "Jane Doe", "notifs": [{"messages": [{"body_text_plain": "x"}]}]}],
        "reason": {"room_name": "Jane Doe", "now": 0, "received_at": 0},
    }
    for name in TEMPLATES:
        text = env.get_template(name).render(**variables)
        assert "new message" in text and "https://example.org/unsubscribe" in text
        for word in ("J.D.", "Dr Who", "Jane", "Doe"):
            assert word not in text


def test_email_addresses_are_kept_as_the_homeserver_keeps_them() -> None:
    assert normalise_email("  Jane.Doe@Example.ORG ") == "jane.doe@example.org"
    for bad in ("jane", "jane@", "@example.org", "a@b@c.org", "a b@c.org", "a@localhost"):
        with pytest.raises(ValueError):
            normalise_email(bad)
    help_text = sign_in_help("@c-abc123:example.org")
    assert "username is c-abc123" in help_text and "Forgot password" in help_text


def test_restore_needs_msc2815() -> None:
    assert check_restore({"experimental_features": {"msc2815_enabled": True}}).ok
    off = check_restore({})
    assert not off.ok and off.warning and "msc2815_enabled: true" in off.detail
