"""Builders for test data: configs and Matrix events."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from bridge.config import Config, parse_config

DOMAIN = "test.local"
_ids = itertools.count()


def config_dict(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "homeserver": {"address": "http://127.0.0.1:8008", "domain": DOMAIN},
        "appservice": {
            "address": "http://127.0.0.1:29340",
            "port": 29340,
            "as_token": "as-token-for-tests",
            "hs_token": "hs-token-for-tests",
        },
        "database": {"url": "sqlite:alcove.db"},
        "practice": {"name": "Test Practice", "timezone": "Europe/London"},
        "staff": [
            {"user_id": f"@therapist:{DOMAIN}", "displayname": "Dr T", "role": "therapist"},
            {"user_id": f"@care:{DOMAIN}", "displayname": "Carla Care", "role": "care"},
        ],
        "inbox": {"retry_base_seconds": 0.01, "max_attempts": 3},
    }
    for key, value in overrides.items():
        data[key] = value
    return data


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    return parse_config(config_dict(**overrides), tmp_path)


def message(room_id: str, sender: str, body: str, event_id: str | None = None) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "room_id": room_id,
        "sender": sender,
        "event_id": event_id or f"$e{next(_ids)}",
        "origin_server_ts": 1,
        "content": {"msgtype": "m.text", "body": body},
    }


def invite(room_id: str, sender: str, invitee: str) -> dict[str, Any]:
    return {
        "type": "m.room.member",
        "room_id": room_id,
        "sender": sender,
        "state_key": invitee,
        "event_id": f"$e{next(_ids)}",
        "origin_server_ts": 1,
        "content": {"membership": "invite"},
    }
