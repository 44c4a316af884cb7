"""Appservice registration files for Synapse's ``app_service_config_files``.

Two files: the main registration (bot + exclusive namespace for managed clients, pushed to
Alcove's URL) and a url-less double-puppet registration with a non-exclusive namespace over the
whole server, used only to send *as* a staff member. Alcove reads its tokens from these files,
so the operator's config is never rewritten.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from .config import Config
from .errors import AlcoveError

UPGRADE_ADVICE = (
    "Run `alcove generate-registration --keep-tokens` (rewrites both files in the current form, "
    "keeping their tokens) and restart Synapse."
)
EPHEMERAL_MSC2409 = "de.sorunome.msc2409.push_ephemeral"
MSC3202 = "org.matrix.msc3202"
ENCRYPTION_KEYS = {
    "receive_ephemeral": True,
    EPHEMERAL_MSC2409: True,
    "push_ephemeral": True,
    MSC3202: True,
}
"""With ``encryption.enabled``: the appservice encryption extensions. ``receive_ephemeral`` (or
MSC2409's unstable name) makes Synapse push to-device events (room keys) when homeserver.yaml
has ``experimental_features: {msc2409_to_device_messages_enabled: true}`` — and, unavoidably,
typing and receipts of Alcove's rooms, which Alcove ignores; ``org.matrix.msc3202`` adds device
list changes and one-time-key counts (``msc3202_transaction_extensions: true``)."""


class RegistrationExists(AlcoveError):
    pass


def new_token() -> str:
    return secrets.token_urlsafe(48)


def main_registration(config: Config, as_token: str, hs_token: str) -> dict[str, Any]:
    domain = re.escape(config.homeserver.domain)
    a = config.appservice
    registration: dict[str, Any] = {
        "id": a.id,
        "url": a.address,
        "as_token": as_token,
        "hs_token": hs_token,
        "sender_localpart": a.bot_localpart,
        "rate_limited": False,
        # No receive_ephemeral: nothing in Alcove uses typing, receipts or presence, and asking
        # for them would push every user's to Alcove.
        "namespaces": {
            "users": [
                {"regex": f"^@{re.escape(a.bot_localpart)}:{domain}$", "exclusive": True},
                # Not exclusive: Synapse computes no push actions for users in an exclusive
                # namespace (bulk_push_rule_evaluator filters them out), so managed clients
                # would get no push or email notifications and no unread counts. Nobody else
                # registers in it: alcove_synapse refuses it; registration is closed anyway.
                {"regex": client_regex(config), "exclusive": False},
            ],
            "aliases": [],
            "rooms": [],
        },
    }
    if config.encryption.enabled:
        registration.update(ENCRYPTION_KEYS)
    return registration


def client_regex(config: Config) -> str:
    domain = re.escape(config.homeserver.domain)
    return f"^@{re.escape(config.appservice.client_prefix)}[a-z0-9]+:{domain}$"


def doublepuppet_regex(domain: str) -> str:
    """Every local user, and only them: ``[^:]+`` so that ``@a:evil.org:<domain>`` (a localpart
    cannot hold a colon, but a regex ``.*`` would cover it) is not claimed."""
    return f"^@[^:]+:{re.escape(domain)}$"


def doublepuppet_registration(config: Config, as_token: str) -> dict[str, Any]:
    return {
        "id": f"{config.appservice.id}-doublepuppet",
        "url": None,
        "as_token": as_token,
        # Synapse never pushes to a url-less registration; this token is never used.
        "hs_token": new_token(),
        "sender_localpart": f"{config.appservice.bot_localpart}-puppet-{secrets.token_hex(4)}",
        "rate_limited": False,
        "namespaces": {
            "users": [{"regex": doublepuppet_regex(config.homeserver.domain), "exclusive": False}]
        },
    }


@dataclass(frozen=True)
class Written:
    registration: Path
    doublepuppet: Path
    fixed: tuple[str, ...] = ()
    """What the replaced files had that the new ones no longer have (see ``outdated``)."""


def dump_yaml(data: dict[str, Any]) -> str:
    yaml = YAML()
    yaml.default_flow_style = False
    out = StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def write_registrations(config: Config, force: bool = False, keep_tokens: bool = False) -> Written:
    """Write both files. ``keep_tokens`` rewrites existing files in the current form but keeps
    their tokens and the double puppet's sender, so only a Synapse restart is needed."""
    main_path = config.appservice.registration
    dp_path = config.appservice.doublepuppet_registration
    if not force and not keep_tokens:
        for path in (main_path, dp_path):
            if path.exists():
                raise RegistrationExists(
                    f"{path} already exists; Synapse knows its tokens. Use --force to replace it "
                    "(then restart Synapse so it reads the new tokens)."
                )
    fixed = tuple(outdated(config))
    old_main = _read(main_path) if keep_tokens else {}
    old_dp = _read(dp_path) if keep_tokens else {}
    main = main_registration(config, _token(old_main, "as_token"), _token(old_main, "hs_token"))
    dp = doublepuppet_registration(config, _token(old_dp, "as_token"))
    for key in ("hs_token", "sender_localpart"):
        if isinstance(old_dp.get(key), str) and old_dp[key]:
            dp[key] = old_dp[key]
    _write_private(main_path, dump_yaml(main))
    _write_private(dp_path, dump_yaml(dp))
    return Written(main_path, dp_path, fixed)


def outdated(config: Config) -> list[str]:
    """What the existing registration files ask of Synapse that this Alcove no longer wants
    (``UPGRADE_ADVICE`` says what to do). Empty when the files are current or absent."""
    problems = []
    main = _read(config.appservice.registration)
    if config.encryption.enabled:
        if main and not (
            (main.get("receive_ephemeral") or main.get(EPHEMERAL_MSC2409)) and main.get(MSC3202)
        ):
            problems.append(
                f"{config.appservice.registration} does not ask Synapse for the appservice "
                "encryption extensions (to-device events, device lists, one-time-key counts) "
                "that encryption.enabled needs"
            )
    elif main.get("receive_ephemeral") or main.get(EPHEMERAL_MSC2409):
        problems.append(
            f"{config.appservice.registration} asks Synapse to push typing notifications, read "
            "receipts and presence of every user (receive_ephemeral), which Alcove does not use"
        )
    main_namespaces = main.get("namespaces")
    main_users = main_namespaces.get("users") if isinstance(main_namespaces, dict) else None
    for entry in main_users if isinstance(main_users, list) else []:
        if (
            isinstance(entry, dict)
            and entry.get("regex") == client_regex(config)
            and entry.get("exclusive")
        ):
            problems.append(
                f"{config.appservice.registration} claims the clients' namespace exclusively: "
                "Synapse then sends managed clients no push or email notifications"
            )
    domain = config.homeserver.domain
    dp = _read(config.appservice.doublepuppet_registration)
    namespaces = dp.get("namespaces")
    users = namespaces.get("users") if isinstance(namespaces, dict) else None
    for entry in users if isinstance(users, list) else []:
        regex = entry.get("regex") if isinstance(entry, dict) else None
        if isinstance(regex, str) and _too_wide(regex, domain):
            problems.append(
                f"{config.appservice.doublepuppet_registration} has the user namespace {regex}, "
                f"which also matches IDs like @a:evil.org:{domain}; Alcove now writes "
                f"{doublepuppet_regex(domain)}"
            )
    return problems


def _too_wide(regex: str, domain: str) -> bool:
    try:
        return re.match(regex, f"@a:evil.org:{domain}") is not None  # as Synapse matches
    except re.error:
        return False


def _read(path: Path) -> dict[str, Any]:
    try:
        data = YAML(typ="safe").load(path.read_text())
    except (OSError, YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _token(old: dict[str, Any], key: str) -> str:
    value = old.get(key)
    return value if isinstance(value, str) and value else new_token()


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def read_doublepuppet_token(path: Path) -> str | None:
    """The double-puppet as_token, or None when that registration is not installed."""
    if not path.exists():
        return None
    try:
        data = YAML(typ="safe").load(path.read_text())
        return str(data["as_token"])
    except (YAMLError, KeyError, TypeError):
        return None
