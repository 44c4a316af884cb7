"""bridge/registration.py: the two registration files Synapse loads."""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from bridge.config import Config, load_config
from bridge.doctor import registration_current
from bridge.registration import (
    UPGRADE_ADVICE,
    RegistrationExists,
    outdated,
    read_doublepuppet_token,
    write_registrations,
)
from bridge.startup import warn_outdated_registration

DOMAIN = "clinic.test"

CONFIG_YAML = f"""\
homeserver:
  address: http://127.0.0.1:8008
  domain: {DOMAIN}
appservice:
  address: http://127.0.0.1:29340
  as_token: from-registration
  hs_token: from-registration
practice:
  name: Quiet Harbour
"""


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG_YAML)
    return path


@pytest.fixture
def config(config_path: Path) -> Config:
    return load_config(config_path, environ={}, need_tokens=False)


def read_yaml(path: Path) -> dict[str, Any]:
    data = YAML(typ="safe").load(path.read_text())
    assert isinstance(data, dict)
    return data


def test_both_files_are_written_private(config: Config, tmp_path: Path) -> None:
    written = write_registrations(config)
    assert written.registration == tmp_path / "registration.yaml"
    assert written.doublepuppet == tmp_path / "doublepuppet-registration.yaml"
    for path in (written.registration, written.doublepuppet):
        assert path.is_file()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.yaml",
        "doublepuppet-registration.yaml",
        "registration.yaml",
    ]  # no .tmp left behind


def test_main_registration_contents(config: Config) -> None:
    main = read_yaml(write_registrations(config).registration)
    assert main["id"] == "alcove"
    assert main["url"] == "http://127.0.0.1:29340"
    assert main["sender_localpart"] == "alcove"
    assert main["rate_limited"] is False
    # Typing, receipts and presence of every user are not pushed: nothing uses them.
    assert "receive_ephemeral" not in main
    assert "de.sorunome.msc2409.push_ephemeral" not in main
    users = main["namespaces"]["users"]
    assert users, "the main registration must claim users"
    for entry in users:
        # The bot's ID exclusively; the clients' not (else Synapse computes no notifications
        # for them), guarded by alcove_synapse instead.
        assert entry["exclusive"] is ("alcove" in entry["regex"])
        assert entry["regex"].startswith("^")
        assert entry["regex"].endswith("$")


def test_main_namespace_covers_the_bot_and_clients_only(config: Config) -> None:
    main = read_yaml(write_registrations(config).registration)
    patterns = [re.compile(entry["regex"]) for entry in main["namespaces"]["users"]]

    def claimed(user_id: str) -> bool:
        return any(p.match(user_id) for p in patterns)

    assert claimed(f"@c-abc123:{DOMAIN}")
    assert claimed(f"@alcove:{DOMAIN}")
    assert not claimed("@c-abc:evil.org")
    assert not claimed(f"@therapist:{DOMAIN}")
    assert not claimed(f"@c-abc:{DOMAIN}.evil.org")
    assert not claimed("@c-abc:clinicXtest")  # the dot in the domain is escaped


def test_doublepuppet_registration_contents(config: Config) -> None:
    dp = read_yaml(write_registrations(config).doublepuppet)
    assert dp["url"] is None
    assert dp["rate_limited"] is False
    assert dp["id"] != "alcove"
    assert dp["sender_localpart"] != "alcove"
    [users] = dp["namespaces"]["users"]
    assert users["regex"] == f"^@[^:]+:{re.escape(DOMAIN)}$"
    assert users["exclusive"] is False
    pattern = re.compile(users["regex"])
    assert pattern.match(f"@therapist:{DOMAIN}")
    assert not pattern.match("@therapist:evil.org")
    assert not pattern.match(f"@a:evil.org:{DOMAIN}")  # ^@.*: would claim this one
    assert not pattern.match(f"@therapist:{DOMAIN}.evil.org")


def test_tokens_are_long_and_all_different(config: Config) -> None:
    written = write_registrations(config)
    main = read_yaml(written.registration)
    dp = read_yaml(written.doublepuppet)
    tokens = [main["as_token"], main["hs_token"], dp["as_token"], dp["hs_token"]]
    assert all(isinstance(t, str) and len(t) >= 40 for t in tokens)
    assert len(set(tokens)) == 4
    assert read_doublepuppet_token(written.doublepuppet) == dp["as_token"]


def test_refuses_to_overwrite_without_force(config: Config) -> None:
    written = write_registrations(config)
    before = written.registration.read_text()
    with pytest.raises(RegistrationExists) as info:
        write_registrations(config)
    assert "--force" in str(info.value)
    assert written.registration.read_text() == before


def test_refuses_when_only_the_doublepuppet_file_exists(config: Config) -> None:
    config.appservice.doublepuppet_registration.write_text("as_token: keep-me\n")
    with pytest.raises(RegistrationExists):
        write_registrations(config)
    assert not config.appservice.registration.exists()


def test_force_writes_new_tokens(config: Config) -> None:
    written = write_registrations(config)
    old_main = read_yaml(written.registration)
    old_dp = read_yaml(written.doublepuppet)
    write_registrations(config, force=True)
    new_main = read_yaml(written.registration)
    new_dp = read_yaml(written.doublepuppet)
    assert new_main["as_token"] != old_main["as_token"]
    assert new_main["hs_token"] != old_main["hs_token"]
    assert new_dp["as_token"] != old_dp["as_token"]
    assert stat.S_IMODE(written.registration.stat().st_mode) == 0o600


def test_load_config_reads_the_written_tokens(config: Config, config_path: Path) -> None:
    assert config.appservice.as_token == ""  # nothing written yet
    main = read_yaml(write_registrations(config).registration)
    reloaded = load_config(config_path, environ={})
    assert reloaded.appservice.as_token == main["as_token"]
    assert reloaded.appservice.hs_token == main["hs_token"]


def test_read_doublepuppet_token_when_absent_or_broken(tmp_path: Path) -> None:
    assert read_doublepuppet_token(tmp_path / "missing.yaml") is None
    broken = tmp_path / "broken.yaml"
    broken.write_text("url: null\n")
    assert read_doublepuppet_token(broken) is None


def _write_old_style(config: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    """Registration files as an older Alcove wrote them."""
    written = write_registrations(config)
    main, dp = read_yaml(written.registration), read_yaml(written.doublepuppet)
    main["receive_ephemeral"] = True
    main["de.sorunome.msc2409.push_ephemeral"] = True
    for entry in main["namespaces"]["users"]:
        entry["exclusive"] = True  # before issue 12: no notifications for clients
    dp["namespaces"]["users"][0]["regex"] = f"^@.*:{re.escape(DOMAIN)}$"
    yaml = YAML()
    with written.registration.open("w") as f:
        yaml.dump(main, f)
    with written.doublepuppet.open("w") as f:
        yaml.dump(dp, f)
    return main, dp


def test_current_files_are_not_outdated(config: Config) -> None:
    assert outdated(config) == []  # absent
    write_registrations(config)
    assert outdated(config) == []
    assert registration_current(config).ok


def test_old_files_are_reported_with_what_to_do(
    config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    _write_old_style(config)
    problems = outdated(config)
    assert len(problems) == 3
    assert "receive_ephemeral" in problems[0]
    assert "no push or email notifications" in problems[1]
    assert f"@a:evil.org:{DOMAIN}" in problems[2]
    check = registration_current(config)
    assert not check.ok and check.warning
    assert "--keep-tokens" in check.detail and "restart Synapse" in check.detail
    with caplog.at_level("WARNING", logger="alcove.startup"):
        assert warn_outdated_registration(config) == problems
    assert [r.levelname for r in caplog.records] == ["WARNING"] * 3
    assert UPGRADE_ADVICE in caplog.text


def test_keep_tokens_rewrites_in_the_current_form(config: Config) -> None:
    old_main, old_dp = _write_old_style(config)
    written = write_registrations(config, keep_tokens=True)  # no --force needed
    assert len(written.fixed) == 3
    assert outdated(config) == []
    main, dp = read_yaml(written.registration), read_yaml(written.doublepuppet)
    assert "receive_ephemeral" not in main
    assert dp["namespaces"]["users"][0]["regex"] == f"^@[^:]+:{re.escape(DOMAIN)}$"
    for key in ("as_token", "hs_token"):
        assert main[key] == old_main[key]
    for key in ("as_token", "hs_token", "sender_localpart"):
        assert dp[key] == old_dp[key]
    assert stat.S_IMODE(written.registration.stat().st_mode) == 0o600


def test_regenerating_says_what_changed(
    config: Config, config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridge.__main__ import main

    _write_old_style(config)
    assert main(["generate-registration", "-c", str(config_path), "--force"]) == 0
    out = capsys.readouterr().out
    assert "Fixed:" in out and f"@a:evil.org:{DOMAIN}" in out and "receive_ephemeral" in out
    assert main(["generate-registration", "-c", str(config_path), "--keep-tokens"]) == 0
    assert "Fixed:" not in capsys.readouterr().out  # nothing left to fix


def test_encryption_asks_for_the_appservice_encryption_extensions(config_path: Path) -> None:
    """encryption.enabled: to-device events (MSC2409) and device lists / one-time-key counts
    (MSC3202) pushed in transactions; a registration without them is reported and rewritten."""
    plain = load_config(config_path, environ={}, need_tokens=False)
    write_registrations(plain)
    config_path.write_text(CONFIG_YAML + "encryption:\n  enabled: true\n")
    config = load_config(config_path, environ={}, need_tokens=False)
    assert config.encryption.enabled
    problems = outdated(config)
    assert len(problems) == 1 and "encryption extensions" in problems[0]
    main = read_yaml(write_registrations(config, keep_tokens=True).registration)
    assert main["receive_ephemeral"] is True
    assert main["de.sorunome.msc2409.push_ephemeral"] is True
    assert main["org.matrix.msc3202"] is True
    assert outdated(config) == []
    # Turned off again: the extensions are no longer wanted.
    assert "receive_ephemeral" in outdated(plain)[0]
