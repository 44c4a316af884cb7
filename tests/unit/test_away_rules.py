"""Working hours, schedule and away settings, and phrase templates in bridge/config.py."""

from __future__ import annotations

from datetime import datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bridge.config import (
    PHRASE_PLACEHOLDERS,
    WELCOME_PLACEHOLDERS,
    AwayConfig,
    Config,
    ScheduleConfig,
    WorkingHours,
    check_template,
)
from bridge.errors import ConfigError
from tests.support.builders import DOMAIN, make_config

LONDON = ZoneInfo("Europe/London")
THERAPIST = f"@therapist:{DOMAIN}"
WEEKDAYS_9_TO_5 = WorkingHours(frozenset(range(5)), time(9, 0), time(17, 0))


def at(year: int, month: int, day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=LONDON)


def staff_with_hours(hours: Any) -> list[dict[str, Any]]:
    return [
        {
            "user_id": THERAPIST,
            "displayname": "Dr T",
            "role": "therapist",
            "working_hours": hours,
        }
    ]


def config_error(tmp_path: Path, **overrides: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        make_config(tmp_path, **overrides)
    return caught.value


# --------------------------------------------------------------------------- WorkingHours


def test_contains_a_weekday_inside_hours() -> None:
    # 2026-11-18 is a Wednesday.
    assert WEEKDAYS_9_TO_5.contains(at(2026, 11, 18, 12))
    assert WEEKDAYS_9_TO_5.contains(at(2026, 11, 16, 10))  # Monday
    assert WEEKDAYS_9_TO_5.contains(at(2026, 11, 20, 16, 59, 59))  # Friday


def test_weekend_is_outside_working_hours() -> None:
    assert not WEEKDAYS_9_TO_5.contains(at(2026, 11, 21, 12))  # Saturday
    assert not WEEKDAYS_9_TO_5.contains(at(2026, 11, 22, 12))  # Sunday


def test_start_is_inclusive_and_end_exclusive() -> None:
    assert WEEKDAYS_9_TO_5.contains(at(2026, 11, 18, 9, 0))
    assert not WEEKDAYS_9_TO_5.contains(at(2026, 11, 18, 8, 59, 59))
    assert not WEEKDAYS_9_TO_5.contains(at(2026, 11, 18, 17, 0))
    assert WEEKDAYS_9_TO_5.contains(at(2026, 11, 18, 16, 59))


def test_contains_uses_the_local_wall_time_it_is_given() -> None:
    # 08:30 UTC in summer is 09:30 in London: the caller converts to the practice zone first.
    summer = datetime(2026, 7, 15, 8, 30, tzinfo=ZoneInfo("UTC"))
    assert not WEEKDAYS_9_TO_5.contains(summer)
    assert WEEKDAYS_9_TO_5.contains(summer.astimezone(LONDON))


def test_weekend_only_hours() -> None:
    weekend = WorkingHours(frozenset({5, 6}), time(10, 0), time(12, 0))
    assert weekend.contains(at(2026, 11, 21, 11))
    assert not weekend.contains(at(2026, 11, 18, 11))


# --------------------------------------------------------------------------- config: working_hours


def hours_of(config: Config) -> WorkingHours:
    member = config.staff_member(THERAPIST)
    assert member is not None
    assert member.working_hours is not None
    return member.working_hours


def test_working_hours_parse(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        staff=staff_with_hours(
            {"days": ["mon", "Tuesday", "WED"], "start": "08:30", "end": "18:00"}
        ),
    )
    assert hours_of(config) == WorkingHours(frozenset({0, 1, 2}), time(8, 30), time(18, 0))


def test_working_hours_default_to_weekdays(tmp_path: Path) -> None:
    config = make_config(tmp_path, staff=staff_with_hours({"start": "09:00", "end": "17:00"}))
    assert hours_of(config) == WEEKDAYS_9_TO_5


def test_no_working_hours_means_none(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    member = config.staff_member(THERAPIST)
    assert member is not None
    assert member.working_hours is None


def test_working_hours_bad_day_name(tmp_path: Path) -> None:
    error = config_error(
        tmp_path,
        staff=staff_with_hours({"days": ["mon", "funday"], "start": "09:00", "end": "17:00"}),
    )
    assert error.path == "staff[0].working_hours.days"
    assert "funday" in error.message


@pytest.mark.parametrize("days", [[], "mon", {"mon": 1}])
def test_working_hours_days_must_be_a_list(tmp_path: Path, days: Any) -> None:
    error = config_error(
        tmp_path, staff=staff_with_hours({"days": days, "start": "09:00", "end": "17:00"})
    )
    assert error.path == "staff[0].working_hours.days"


@pytest.mark.parametrize(("start", "end"), [("17:00", "09:00"), ("09:00", "09:00")])
def test_working_hours_end_must_be_after_start(tmp_path: Path, start: str, end: str) -> None:
    error = config_error(tmp_path, staff=staff_with_hours({"start": start, "end": end}))
    assert error.path == "staff[0].working_hours.end"
    assert "after start" in error.message
    assert str(error).startswith("staff[0].working_hours.end:")


@pytest.mark.parametrize(("key", "value"), [("start", "9am"), ("end", "25:00")])
def test_working_hours_bad_time(tmp_path: Path, key: str, value: str) -> None:
    hours = {"start": "09:00", "end": "17:00", key: value}
    error = config_error(tmp_path, staff=staff_with_hours(hours))
    assert error.path == f"staff[0].working_hours.{key}"
    assert value in error.message


def test_working_hours_start_and_end_are_required(tmp_path: Path) -> None:
    error = config_error(tmp_path, staff=staff_with_hours({"end": "17:00"}))
    assert error.path == "staff[0].working_hours.start"


def test_working_hours_error_names_the_right_staff_member(tmp_path: Path) -> None:
    staff = [
        {"user_id": f"@care:{DOMAIN}", "role": "care"},
        {
            "user_id": THERAPIST,
            "role": "therapist",
            "working_hours": {"start": "18:00", "end": "08:00"},
        },
    ]
    error = config_error(tmp_path, staff=staff)
    assert error.path == "staff[1].working_hours.end"


def test_working_hours_must_be_a_mapping(tmp_path: Path) -> None:
    error = config_error(tmp_path, staff=staff_with_hours(["09:00", "17:00"]))
    assert error.path == "staff[0].working_hours"


# --------------------------------------------------------------------------- config: schedule, away


def test_schedule_and_away_defaults(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert config.schedule == ScheduleConfig(late_policy="send", grace_seconds=300.0)
    assert config.away == AwayConfig()
    assert config.away.throttle_hours == 4.0


@pytest.mark.parametrize("policy", ["send", "skip"])
def test_schedule_late_policy(tmp_path: Path, policy: str) -> None:
    config = make_config(tmp_path, schedule={"late_policy": policy, "grace_seconds": 60})
    assert config.schedule.late_policy == policy
    assert config.schedule.grace_seconds == 60.0


@pytest.mark.parametrize("policy", ["drop", "SEND", "", "later"])
def test_schedule_late_policy_must_be_send_or_skip(tmp_path: Path, policy: str) -> None:
    error = config_error(tmp_path, schedule={"late_policy": policy})
    assert error.path == "schedule.late_policy"


def test_schedule_grace_must_not_be_negative(tmp_path: Path) -> None:
    error = config_error(tmp_path, schedule={"grace_seconds": -1})
    assert error.path == "schedule.grace_seconds"


def test_away_settings(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        away={"throttle_hours": 0.5, "message": "Back soon", "after_hours_message": "Closed"},
    )
    assert config.away == AwayConfig(0.5, "Back soon", "Closed")


def test_away_throttle_must_not_be_negative(tmp_path: Path) -> None:
    error = config_error(tmp_path, away={"throttle_hours": -2})
    assert error.path == "away.throttle_hours"


# --------------------------------------------------------------------------- phrases


def test_phrases_with_known_placeholders(tmp_path: Path) -> None:
    phrases = {
        "hello": "Hi {client_first_name}, this is {therapist_name} at {practice_name}.",
        "next": "Your next session: {next_session}. Braces: {{ok}}",
    }
    config = make_config(tmp_path, phrases=phrases)
    assert config.phrases == phrases


def test_phrase_with_an_unknown_placeholder_names_the_phrase(tmp_path: Path) -> None:
    error = config_error(tmp_path, phrases={"ok": "fine", "bad": "Hello {client_full_name}"})
    assert error.path == "phrases.bad"
    assert "{client_full_name}" in error.message


def test_phrase_with_a_malformed_placeholder(tmp_path: Path) -> None:
    error = config_error(tmp_path, phrases={"broken": "Hello {client_first_name"})
    assert error.path == "phrases.broken"
    assert "malformed" in error.message


@pytest.mark.parametrize(
    "text",
    ["{therapist_name:>999999999}", "{therapist_name!r}", "{practice_name.upper}", "{x[0]}"],
)
def test_a_practice_phrase_with_a_format_spec_is_a_config_error(tmp_path: Path, text: str) -> None:
    error = config_error(tmp_path, phrases={"ok": "fine", "big": f"Hi {text}"})
    assert error.path == "phrases.big"
    assert "format spec" in error.message or "malformed" in error.message


def test_a_welcome_with_a_format_spec_is_a_config_error(tmp_path: Path) -> None:
    practice = {"name": "Calm", "welcome": "Hi {client_first_name:>999999999}"}
    error = config_error(tmp_path, practice=practice)
    assert error.path == "practice.welcome"
    assert "write just {client_first_name}" in error.message


@pytest.mark.parametrize("name", ["Hello", "-x", "a b", "x" * 33])
def test_phrase_names_are_checked(tmp_path: Path, name: str) -> None:
    error = config_error(tmp_path, phrases={name: "text"})
    assert error.path == f"phrases.{name}"


def test_check_template() -> None:
    assert check_template("Hi {client_first_name}", PHRASE_PLACEHOLDERS) is None
    assert check_template("no placeholders", PHRASE_PLACEHOLDERS) is None
    assert check_template("{next_session}", PHRASE_PLACEHOLDERS) is None
    problem = check_template("{next_session}", WELCOME_PLACEHOLDERS)
    assert problem is not None and "{next_session}" in problem
    problem = check_template("{a} {b}", PHRASE_PLACEHOLDERS)
    assert problem is not None and problem.startswith("unknown placeholder {a}")
    problem = check_template("oops }", PHRASE_PLACEHOLDERS)
    assert problem is not None and "malformed" in problem
    problem = check_template("{therapist_name:>999999999}", PHRASE_PLACEHOLDERS)
    assert problem is not None and "format spec" in problem
    assert check_template("{{therapist_name:>9}} is literal", PHRASE_PLACEHOLDERS) is None
