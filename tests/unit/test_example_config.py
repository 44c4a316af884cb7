"""config.example.yaml documents the real keys: refused as shipped (placeholders), valid once
filled in, and every key in it is one Alcove knows (no unknown-key warnings)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from bridge.config import EncryptionConfig, load_config
from bridge.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"


def test_example_is_refused_until_placeholders_are_replaced(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "config.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "config.yaml", environ={}, need_tokens=False)
    assert "example value" in str(err.value)


def test_filled_in_example_is_valid_and_fully_known(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = EXAMPLE.read_text().replace("CHANGE_ME", "real").replace("example.org", "clinic.test")
    (tmp_path / "config.yaml").write_text(text)
    with caplog.at_level(logging.WARNING, logger="alcove.config"):
        config = load_config(tmp_path / "config.yaml", environ={}, need_tokens=False)
    assert [r.getMessage() for r in caplog.records] == []
    assert config.homeserver.domain == "clinic.test"
    assert [m.role for m in config.staff] == ["therapist", "care"]
    assert config.database.url == f"sqlite:{tmp_path / 'alcove.db'}"


def test_example_encrypted_room_kinds_are_the_defaults(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("CHANGE_ME", "real").replace("example.org", "clinic.test")
    (tmp_path / "config.yaml").write_text(text.replace("enabled: false", "enabled: true", 1))
    config = load_config(tmp_path / "config.yaml", environ={}, need_tokens=False)
    assert config.encryption.rooms == EncryptionConfig().rooms
    assert config.encryption.encrypts("management") and config.encryption.encrypts("session")
