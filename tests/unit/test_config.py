"""bridge/config.py: parsing into typed objects, errors that name the key, env overrides."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bridge.config import Config, apply_env, load_config, parse_config
from bridge.errors import ConfigError

DOMAIN = "clinic.test"


def valid_config() -> dict[str, Any]:
    """A fresh, complete and valid config tree (explicit tokens: no registration file needed)."""
    return {
        "homeserver": {"address": "http://127.0.0.1:8008/", "domain": DOMAIN},
        "appservice": {
            "address": "http://127.0.0.1:29340",
            "port": 29340,
            "as_token": "as-token-for-tests",
            "hs_token": "hs-token-for-tests",
        },
        "database": {"url": "sqlite:data/alcove.db"},
        "practice": {"name": "Quiet Harbour Therapy", "timezone": "Europe/London"},
        "staff": [
            {"user_id": f"@alice:{DOMAIN}", "displayname": "Alice", "role": "therapist"},
            {"user_id": f"@bob:{DOMAIN}", "role": "care"},
        ],
        "logging": {"level": "DEBUG"},
        "inbox": {"max_attempts": 7},
    }


def parse(data: Any, base: Path) -> Config:
    return parse_config(data, base, need_tokens=False)


def error_of(data: Any, base: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(data, base)
    return info.value


# --------------------------------------------------------------------------- valid configs


def test_valid_config_parses_into_typed_objects(tmp_path: Path) -> None:
    config = parse(valid_config(), tmp_path)

    assert config.homeserver.address == "http://127.0.0.1:8008"  # trailing slash dropped
    assert config.homeserver.domain == DOMAIN
    assert config.homeserver.verify_ssl is True
    assert config.appservice.port == 29340
    assert config.appservice.as_token == "as-token-for-tests"
    assert config.appservice.hs_token == "hs-token-for-tests"
    assert config.appservice.bot_localpart == "alcove"
    assert config.appservice.client_prefix == "c-"
    assert config.appservice.registration == tmp_path / "registration.yaml"
    assert config.appservice.access_token_in_query is False  # the token only in a header
    assert config.bot_user_id == f"@alcove:{DOMAIN}"
    assert isinstance(config.practice.timezone, ZoneInfo)
    assert config.practice.timezone.key == "Europe/London"
    assert config.practice.name == "Quiet Harbour Therapy"
    assert config.logging.level == "DEBUG"
    assert config.inbox.max_attempts == 7
    assert config.inbox.concurrency == 32  # default kept
    assert [m.role for m in config.staff] == ["therapist", "care"]
    assert config.staff[1].displayname == "bob"  # defaults to the localpart
    member = config.staff_member(f"@alice:{DOMAIN}")
    assert member is not None
    assert member.displayname == "Alice"
    assert config.staff_member(f"@nobody:{DOMAIN}") is None


def test_relative_sqlite_path_is_resolved_against_base(tmp_path: Path) -> None:
    config = parse(valid_config(), tmp_path)
    assert config.database.url == f"sqlite:{(tmp_path / 'data' / 'alcove.db').resolve()}"


def test_absolute_sqlite_path_is_kept(tmp_path: Path) -> None:
    data = valid_config()
    data["database"]["url"] = "sqlite:///var/lib/alcove/alcove.db"
    assert parse(data, tmp_path).database.url == "sqlite:///var/lib/alcove/alcove.db"


def test_postgres_url_is_accepted(tmp_path: Path) -> None:
    data = valid_config()
    data["database"]["url"] = "postgres://alcove:s3cret@db.internal/alcove"
    assert parse(data, tmp_path).database.url == "postgres://alcove:s3cret@db.internal/alcove"


def test_optional_sections_may_be_missing(tmp_path: Path) -> None:
    data = valid_config()
    for name in ("database", "logging", "inbox", "staff"):
        del data[name]
    config = parse(data, tmp_path)
    assert config.database.url == f"sqlite:{(tmp_path / 'alcove.db').resolve()}"
    assert config.logging.level == "INFO"
    assert config.inbox.max_attempts == 5
    assert config.staff == ()


# --------------------------------------------------------------------------- errors name the key


def test_missing_required_key_names_the_key(tmp_path: Path) -> None:
    data = valid_config()
    del data["homeserver"]["domain"]
    error = error_of(data, tmp_path)
    assert error.path == "homeserver.domain"
    assert str(error) == "homeserver.domain: is required"


def test_missing_required_section_names_the_section(tmp_path: Path) -> None:
    data = valid_config()
    del data["practice"]
    assert str(error_of(data, tmp_path)) == "practice: is required"


def test_wrong_role_names_the_list_item(tmp_path: Path) -> None:
    data = valid_config()
    data["staff"][1]["role"] = "doctor"
    error = error_of(data, tmp_path)
    assert error.path == "staff[1].role"
    assert str(error).startswith("staff[1].role: must be one of therapist, care, admin")
    assert "'doctor'" in str(error)


def test_duplicate_staff_user_id_is_refused(tmp_path: Path) -> None:
    data = valid_config()
    data["staff"].append({"user_id": f"@alice:{DOMAIN}", "role": "admin"})
    error = error_of(data, tmp_path)
    assert error.path == "staff[2].user_id"
    assert "listed twice" in error.message


def test_staff_on_another_domain_is_refused(tmp_path: Path) -> None:
    data = valid_config()
    data["staff"][0]["user_id"] = "@alice:elsewhere.test"
    error = error_of(data, tmp_path)
    assert error.path == "staff[0].user_id"
    assert f"local account on {DOMAIN}" in error.message


def test_malformed_staff_user_id_is_refused(tmp_path: Path) -> None:
    data = valid_config()
    data["staff"][0]["user_id"] = "alice"
    error = error_of(data, tmp_path)
    assert error.path == "staff[0].user_id"
    assert "Matrix ID" in error.message


def test_staff_must_be_a_list(tmp_path: Path) -> None:
    data = valid_config()
    data["staff"] = {"user_id": f"@alice:{DOMAIN}"}
    assert error_of(data, tmp_path).path == "staff"


def test_placeholder_change_me_is_refused(tmp_path: Path) -> None:
    data = valid_config()
    data["database"]["url"] = "postgres://alcove:CHANGE_ME@localhost/alcove"
    error = error_of(data, tmp_path)
    assert error.path == "database.url"
    assert "example value" in error.message


def test_placeholder_example_domain_is_refused(tmp_path: Path) -> None:
    data = valid_config()
    data["homeserver"]["domain"] = "example.org"
    error = error_of(data, tmp_path)
    assert error.path == "homeserver.domain"
    assert "example value" in error.message


def test_placeholder_example_staff_id_is_refused(tmp_path: Path) -> None:
    data = valid_config()
    data["staff"][0]["user_id"] = "@therapist:example.org"
    assert error_of(data, tmp_path).path == "staff[0].user_id"


@pytest.mark.parametrize("url", ["ftp://matrix.clinic.test", "matrix.clinic.test", "http://"])
def test_bad_url_is_refused(tmp_path: Path, url: str) -> None:
    data = valid_config()
    data["homeserver"]["address"] = url
    error = error_of(data, tmp_path)
    assert error.path == "homeserver.address"
    assert "http(s):// URL" in error.message


@pytest.mark.parametrize("tz", ["Mars/Olympus_Mons", "../etc/passwd", "Europe"])
def test_bad_timezone_is_refused(tmp_path: Path, tz: str) -> None:
    data = valid_config()
    data["practice"]["timezone"] = tz
    error = error_of(data, tmp_path)
    assert error.path == "practice.timezone"
    assert "unknown time zone" in error.message


def test_bad_database_scheme_is_refused(tmp_path: Path) -> None:
    data = valid_config()
    data["database"]["url"] = "mysql://localhost/alcove"
    error = error_of(data, tmp_path)
    assert error.path == "database.url"
    assert "'mysql'" in error.message


def test_sqlite_url_without_a_file_is_refused(tmp_path: Path) -> None:
    data = valid_config()
    data["database"]["url"] = "sqlite:"
    assert error_of(data, tmp_path).path == "database.url"


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("appservice", "port", 70000),
        ("appservice", "port", "eighty"),
        ("homeserver", "verify_ssl", "maybe"),
        ("appservice", "access_token_in_query", "sometimes"),
        ("inbox", "retry_base_seconds", "soon"),
        ("appservice", "bot_localpart", "Alcove Bot"),
        ("appservice", "bot_localpart", "c-bot"),  # would fall in the client namespace
    ],
)
def test_bad_scalar_values_name_their_key(
    tmp_path: Path, section: str, key: str, value: object
) -> None:
    data = valid_config()
    data[section][key] = value
    assert error_of(data, tmp_path).path == f"{section}.{key}"


def test_access_token_in_query_can_be_turned_on(tmp_path: Path) -> None:
    data = valid_config()
    data["appservice"]["access_token_in_query"] = True
    assert parse(data, tmp_path).appservice.access_token_in_query is True


def test_section_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    data = valid_config()
    data["homeserver"] = ["http://127.0.0.1:8008"]
    error = error_of(data, tmp_path)
    assert error.path == "homeserver"
    assert "mapping" in error.message


def test_unknown_keys_are_warned_about_and_do_not_fail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = valid_config()
    data["homeserver"]["adress"] = "typo"
    data["staff"][0]["rol"] = "typo"
    data["extra_section"] = {}
    with caplog.at_level(logging.WARNING, logger="alcove.config"):
        config = parse(data, tmp_path)
    assert config.homeserver.domain == DOMAIN
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("homeserver.adress" in w for w in warnings)
    assert any("staff[0].rol" in w for w in warnings)
    assert any("extra_section" in w for w in warnings)


def test_known_keys_are_not_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="alcove.config"):
        parse(valid_config(), tmp_path)
    assert [r.getMessage() for r in caplog.records] == []


def test_lower_case_log_level_is_accepted(tmp_path: Path) -> None:
    data = valid_config()
    data["logging"]["level"] = "info"
    assert parse(data, tmp_path).logging.level == "INFO"


# --------------------------------------------------------------------------- environment


def test_env_overrides_database_url_and_staff_role(tmp_path: Path) -> None:
    environ = {
        "ALCOVE__DATABASE__URL": "postgres://alcove@db/alcove",
        "ALCOVE__STAFF__0__ROLE": "admin",
        "ALCOVE__INBOX__CONCURRENCY": "8",
        "UNRELATED": "ignored",
    }
    config = parse(apply_env(valid_config(), environ), tmp_path)
    assert config.database.url == "postgres://alcove@db/alcove"
    assert config.staff[0].role == "admin"
    assert config.staff[1].role == "care"
    assert config.inbox.concurrency == 8


def test_env_creates_missing_sections(tmp_path: Path) -> None:
    data = valid_config()
    del data["logging"]
    config = parse(apply_env(data, {"ALCOVE__LOGGING__LEVEL": "WARNING"}), tmp_path)
    assert config.logging.level == "WARNING"


def test_env_fills_a_section_left_empty_in_the_file(tmp_path: Path) -> None:
    data = valid_config()
    data["database"] = None  # YAML `database:` with nothing under it
    config = parse(apply_env(data, {"ALCOVE__DATABASE__URL": "postgres://db/alcove"}), tmp_path)
    assert config.database.url == "postgres://db/alcove"


def test_env_value_is_validated_like_the_file(tmp_path: Path) -> None:
    data = apply_env(valid_config(), {"ALCOVE__STAFF__1__ROLE": "janitor"})
    assert error_of(data, tmp_path).path == "staff[1].role"


def test_env_index_past_the_list_is_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        apply_env(valid_config(), {"ALCOVE__STAFF__5__ROLE": "admin"})
    assert info.value.path == "staff"
    assert "ALCOVE__STAFF__5__ROLE" in info.value.message


# --------------------------------------------------------------------------- registration tokens


def write_registration(path: Path, as_token: str, hs_token: str) -> None:
    path.write_text(f"id: alcove\nas_token: {as_token}\nhs_token: {hs_token}\n")


def test_tokens_are_read_from_the_registration_file(tmp_path: Path) -> None:
    write_registration(tmp_path / "registration.yaml", "as-from-file", "hs-from-file")
    data = valid_config()
    data["appservice"]["as_token"] = "from-registration"
    data["appservice"]["hs_token"] = "from-registration"
    config = parse_config(data, tmp_path, need_tokens=True)
    assert config.appservice.as_token == "as-from-file"
    assert config.appservice.hs_token == "hs-from-file"


def test_tokens_default_to_the_registration_file(tmp_path: Path) -> None:
    (tmp_path / "reg").mkdir()
    write_registration(tmp_path / "reg" / "main.yaml", "as-default", "hs-default")
    data = valid_config()
    del data["appservice"]["as_token"]
    del data["appservice"]["hs_token"]
    data["appservice"]["registration"] = "reg/main.yaml"
    config = parse_config(data, tmp_path)
    assert (config.appservice.as_token, config.appservice.hs_token) == ("as-default", "hs-default")


def test_missing_registration_file_says_to_generate_it(tmp_path: Path) -> None:
    data = valid_config()
    data["appservice"]["as_token"] = "from-registration"
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path, need_tokens=True)
    assert info.value.path == "appservice.registration"
    assert "alcove generate-registration" in info.value.message


def test_missing_registration_is_fine_when_tokens_are_not_needed(tmp_path: Path) -> None:
    data = valid_config()
    data["appservice"]["as_token"] = "from-registration"
    config = parse_config(data, tmp_path, need_tokens=False)
    assert config.appservice.as_token == ""
    assert config.appservice.hs_token == "hs-token-for-tests"


def test_broken_registration_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "registration.yaml").write_text("id: alcove\n")  # no tokens
    data = valid_config()
    data["appservice"]["as_token"] = "from-registration"
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path, need_tokens=True)
    assert info.value.path == "appservice.registration"
    assert "not a valid registration file" in info.value.message


# --------------------------------------------------------------------------- load_config


CONFIG_YAML = f"""\
homeserver:
  address: http://127.0.0.1:8008
  domain: {DOMAIN}
appservice:
  address: http://127.0.0.1:29340
  as_token: as-yaml
  hs_token: hs-yaml
database:
  url: sqlite:alcove.db
practice:
  name: Quiet Harbour
  timezone: America/New_York
staff:
  - user_id: "@alice:{DOMAIN}"
    role: therapist
"""


def test_load_config_reads_yaml_and_applies_env(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG_YAML)
    config = load_config(path, environ={"ALCOVE__STAFF__0__ROLE": "care"})
    assert config.path == path.resolve()
    assert config.practice.timezone == ZoneInfo("America/New_York")
    assert config.database.url == f"sqlite:{(tmp_path / 'alcove.db').resolve()}"
    assert config.staff[0].role == "care"
    assert config.appservice.as_token == "as-yaml"


def test_load_config_with_empty_environ_uses_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG_YAML)
    assert load_config(path, environ={}).staff[0].role == "therapist"


def test_load_config_on_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml", environ={})
    assert "not found" in str(info.value)
    assert "config.example.yaml" in str(info.value)


def test_load_config_on_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("homeserver: [unclosed\n  domain: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert "not valid YAML" in str(info.value)


def test_load_config_on_an_empty_file_names_the_first_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.path == "homeserver"


def test_encrypted_room_kinds_default_to_all_and_only_once_enabled(
    tmp_path: Path,
) -> None:
    off = parse(valid_config(), tmp_path).encryption
    assert not off.enabled
    kinds = ("management", "dm", "group", "staff", "session")
    assert not any(off.encrypts(kind) for kind in kinds)
    on = parse({**valid_config(), "encryption": {"enabled": True}}, tmp_path).encryption
    assert all(on.encrypts(k) for k in kinds)
    chosen = parse(
        {
            **valid_config(),
            "encryption": {"enabled": True, "rooms": {"group": False, "session": False}},
        },
        tmp_path,
    ).encryption
    assert chosen.encrypts("dm") and not chosen.encrypts("group")
    assert not chosen.encrypts("session")


def test_encrypted_room_kinds_are_validated(tmp_path: Path) -> None:
    def rooms(value: Any) -> ConfigError:
        return error_of({**valid_config(), "encryption": {"rooms": value}}, tmp_path)

    assert "encryption.rooms: must be a mapping" in str(rooms(["dm"]))
    assert "encryption.rooms.dm: must be true or false" in str(rooms({"dm": "sometimes"}))


def test_an_unknown_room_kind_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="alcove.config"):
        parse({**valid_config(), "encryption": {"rooms": {"one_to_one": True}}}, tmp_path)
    assert "encryption.rooms.one_to_one" in caplog.text


# --------------------------------------------------------------------------- the HTTP API

TOKEN = "t" * 32


def with_api(**api: Any) -> dict[str, Any]:
    data = valid_config()
    data["api"] = api
    return data


def test_api_section_parses_and_never_shows_its_tokens(tmp_path: Path) -> None:
    config = parse(
        with_api(
            enabled=True,
            port="29400",
            tokens=[{"name": "booking", "token": TOKEN, "scopes": ["read", "bookings:write"]}],
            calendars=[{"therapist": f"@alice:{DOMAIN}", "token": "c" * 40}],
        ),
        tmp_path,
    )
    api = config.api
    assert api.enabled and api.port == 29400 and api.host == "127.0.0.1"
    assert api.tokens[0].scopes == frozenset({"read", "bookings:write"})
    assert api.calendars[0].therapist == f"@alice:{DOMAIN}"
    assert TOKEN not in repr(config) and "c" * 40 not in repr(config)
    assert parse(valid_config(), tmp_path).api.enabled is False


@pytest.mark.parametrize(
    ("api", "key", "words"),
    [
        (
            {"tokens": [{"name": "a", "token": "short", "scopes": ["read"]}]},
            "api.tokens[0].token",
            "at least 32",
        ),
        (
            {"tokens": [{"name": "a", "token": TOKEN, "scopes": ["write"]}]},
            "api.tokens[0].scopes",
            "unknown scope 'write'",
        ),
        (
            {"tokens": [{"name": "a", "token": TOKEN, "scopes": []}]},
            "api.tokens[0].scopes",
            "must be a list of",
        ),
        (
            {
                "tokens": [
                    {"name": "a", "token": TOKEN, "scopes": ["read"]},
                    {"name": "a", "token": "u" * 32, "scopes": ["read"]},
                ]
            },
            "api.tokens[1].name",
            "used by another",
        ),
        (
            {
                "tokens": [
                    {"name": "a", "token": TOKEN, "scopes": ["read"]},
                    {"name": "b", "token": TOKEN, "scopes": ["read"]},
                ]
            },
            "api.tokens[1].token",
            "same as another",
        ),
        ({"tokens": {"name": "a"}}, "api.tokens", "must be a list"),
        (
            {"calendars": [{"therapist": f"@bob:{DOMAIN}", "token": TOKEN}]},
            "api.calendars[0].therapist",
            "no therapist",
        ),
        ({"enabled": True, "port": 29340}, "api.port", "must differ from appservice.port"),
        (
            {"webhooks": [{"name": "w", "url": "ftp://x", "secret": TOKEN}]},
            "api.webhooks[0].url",
            "http(s)",
        ),
        (
            {"webhooks": [{"name": "w", "url": "https://x/h", "secret": "s"}]},
            "api.webhooks[0].secret",
            "at least 32",
        ),
        (
            {
                "webhooks": [
                    {
                        "name": "w",
                        "url": "https://x/h",
                        "secret": TOKEN,
                        "events": ["client.deleted"],
                    }
                ]
            },
            "api.webhooks[0].events",
            "unknown event",
        ),
    ],
)
def test_api_errors_name_the_key(tmp_path: Path, api: dict[str, Any], key: str, words: str) -> None:
    error = error_of(with_api(**api), tmp_path)
    assert error.path == key, error
    assert words in error.message, error.message
