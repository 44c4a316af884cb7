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


class RegistrationExists(AlcoveError):
    pass


def new_token() -> str:
    return secrets.token_urlsafe(48)


def main_registration(config: Config, as_token: str, hs_token: str) -> dict[str, Any]:
    domain = re.escape(config.homeserver.domain)
    a = config.appservice
    return {
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
                {"regex": f"^@{re.escape(a.client_prefix)}[a-z0-9]+:{domain}$", "exclusive": True},
            ],
            "aliases": [],
            "rooms": [],
        },
    }


def doublepuppet_registration(config: Config, as_token: str) -> dict[str, Any]:
    domain = re.escape(config.homeserver.domain)
    return {
        "id": f"{config.appservice.id}-doublepuppet",
        "url": None,
        "as_token": as_token,
        # Synapse never pushes to a url-less registration; this token is never used.
        "hs_token": new_token(),
        "sender_localpart": f"{config.appservice.bot_localpart}-puppet-{secrets.token_hex(4)}",
        "rate_limited": False,
        "namespaces": {"users": [{"regex": f"^@.*:{domain}$", "exclusive": False}]},
    }


@dataclass(frozen=True)
class Written:
    registration: Path
    doublepuppet: Path


def dump_yaml(data: dict[str, Any]) -> str:
    yaml = YAML()
    yaml.default_flow_style = False
    out = StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def write_registrations(config: Config, force: bool = False) -> Written:
    main_path = config.appservice.registration
    dp_path = config.appservice.doublepuppet_registration
    if not force:
        for path in (main_path, dp_path):
            if path.exists():
                raise RegistrationExists(
                    f"{path} already exists; Synapse knows its tokens. Use --force to replace it "
                    "(then restart Synapse so it reads the new tokens)."
                )
    _write_private(main_path, dump_yaml(main_registration(config, new_token(), new_token())))
    _write_private(dp_path, dump_yaml(doublepuppet_registration(config, new_token())))
    return Written(main_path, dp_path)


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
