"""bots/features/schedule/timeparse.py: delays, local date-times and weekly/daily rules in the
therapist's time zone, including the days the clocks change."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bots.features.schedule.timeparse import (
    TimeError,
    local_text,
    next_fire,
    parse_delay,
    parse_local,
    recurrence,
)

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def exists(local: datetime) -> bool:
    """True if the aware local wall time round-trips through UTC (is not in a DST gap)."""
    assert local.tzinfo is not None
    back = local.astimezone(UTC).astimezone(local.tzinfo)
    return back.replace(tzinfo=None) == local.replace(tzinfo=None)


def fires(rule: str, tz: ZoneInfo, start: datetime, count: int) -> list[datetime]:
    """``count`` successive occurrences, each computed from the previous one."""
    out: list[datetime] = []
    after = start
    for _ in range(count):
        after = next_fire(rule, tz, after)
        out.append(after)
    return out


# --------------------------------------------------------------------------- parse_delay


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10),
        ("5m", 300),
        ("2h", 7200),
        ("1d", 86400),
        ("90m", 5400),
        ("  5M ", 300),
        ("999999s", 999999),
    ],
)
def test_parse_delay(text: str, seconds: int) -> None:
    assert parse_delay(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text",
    ["", "5", "m", "5x", "-5m", "1.5h", "5 m", "m5", "1234567s", "5mm", "five m", "5w"],
)
def test_parse_delay_refuses_what_is_not_a_delay(text: str) -> None:
    with pytest.raises(TimeError, match="not a delay"):
        parse_delay(text)


@pytest.mark.parametrize("text", ["0s", "0m", "000h", "0d"])
def test_parse_delay_refuses_zero(text: str) -> None:
    with pytest.raises(TimeError, match="more than zero"):
        parse_delay(text)


def test_time_error_is_a_value_error() -> None:
    assert issubclass(TimeError, ValueError)


# --------------------------------------------------------------------------- parse_local


def test_parse_local_winter_and_summer() -> None:
    winter = parse_local("2026-12-01", "09:00", LONDON)
    assert winter == utc(2026, 12, 1, 9, 0)
    assert winter.tzinfo == UTC
    summer = parse_local("2026-07-01", "09:00", LONDON)
    assert summer == utc(2026, 7, 1, 8, 0)
    assert summer.utcoffset() == timedelta(0)


def test_parse_local_in_new_york() -> None:
    assert parse_local("2026-12-01", "09:30", NEW_YORK) == utc(2026, 12, 1, 14, 30)


def test_parse_local_refuses_a_time_skipped_when_clocks_go_forward() -> None:
    with pytest.raises(TimeError, match="does not exist") as caught:
        parse_local("2027-03-28", "01:30", LONDON)
    assert "Europe/London" in str(caught.value)
    # Either side of the gap is fine.
    assert parse_local("2027-03-28", "00:59", LONDON) == utc(2027, 3, 28, 0, 59)
    assert parse_local("2027-03-28", "02:00", LONDON) == utc(2027, 3, 28, 1, 0)


def test_parse_local_ambiguous_time_is_the_first_occurrence() -> None:
    # 2026-10-25 01:30 happens twice in London: first in BST (00:30 UTC), then GMT (01:30 UTC).
    assert parse_local("2026-10-25", "01:30", LONDON) == utc(2026, 10, 25, 0, 30)
    assert parse_local("2026-11-01", "01:30", NEW_YORK) == utc(2026, 11, 1, 5, 30)


@pytest.mark.parametrize(
    ("day", "hhmm"),
    [
        ("2026-13-01", "09:00"),
        ("2026-02-30", "09:00"),
        ("01/12/2026", "09:00"),
        ("2026-12-01", "24:00"),
        ("2026-12-01", "09:60"),
        ("2026-12-01", "9am"),
        ("2026-12-01", ""),
        ("", "09:00"),
        ("tomorrow", "09:00"),
    ],
)
def test_parse_local_refuses_bad_formats(day: str, hhmm: str) -> None:
    with pytest.raises(TimeError, match="not a date and time"):
        parse_local(day, hhmm, LONDON)


# --------------------------------------------------------------------------- recurrence


@pytest.mark.parametrize("day", ["monday", "mon", "Monday", "MON"])
def test_weekly_rule_accepts_full_and_short_weekday_names(day: str) -> None:
    after = utc(2026, 11, 18, 12, 0)  # a Wednesday
    got = next_fire(f"{day} 09:00", LONDON, after)
    assert got == utc(2026, 11, 23, 9, 0)
    assert got.astimezone(LONDON).weekday() == 0


@pytest.mark.parametrize(
    ("full", "short", "weekday"),
    [
        ("monday", "mon", 0),
        ("tuesday", "tue", 1),
        ("wednesday", "wed", 2),
        ("thursday", "thu", 3),
        ("friday", "fri", 4),
        ("saturday", "sat", 5),
        ("sunday", "sun", 6),
    ],
)
def test_every_weekday(full: str, short: str, weekday: int) -> None:
    after = utc(2026, 11, 18, 12, 0)
    got = next_fire(f"{full} 17:45", LONDON, after)
    assert next_fire(f"{short} 17:45", LONDON, after) == got
    local = got.astimezone(LONDON)
    assert (local.weekday(), local.hour, local.minute) == (weekday, 17, 45)
    assert after < got <= after + timedelta(days=7)


@pytest.mark.parametrize("day", ["day", "daily", "DAY"])
def test_daily_rule(day: str) -> None:
    assert next_fire(f"{day} 09:00", LONDON, utc(2026, 11, 18, 8, 0)) == utc(2026, 11, 18, 9, 0)
    assert next_fire(f"{day} 09:00", LONDON, utc(2026, 11, 18, 10, 0)) == utc(2026, 11, 19, 9, 0)


def test_single_digit_hour_is_accepted() -> None:
    assert next_fire("day 9:05", LONDON, utc(2026, 11, 18, 8, 0)) == utc(2026, 11, 18, 9, 5)


@pytest.mark.parametrize(
    "rule",
    [
        "",
        "monday",
        "09:00",
        "monday 09:00 extra",
        "monday 9",
        "monday 0900",
        "monday 24:00",
        "monday 09:60",
        "monday 09:0",
        "funday 09:00",
        "mo 09:00",
        "weekday 09:00",
        "every monday 09:00",
    ],
)
def test_bad_rules_raise(rule: str) -> None:
    with pytest.raises(TimeError):
        recurrence(rule, LONDON)
    with pytest.raises(TimeError):
        next_fire(rule, LONDON, utc(2026, 11, 18, 12, 0))


def test_next_fire_is_strictly_after() -> None:
    occurrence = utc(2026, 11, 23, 9, 0)  # Monday 09:00 GMT
    assert next_fire("monday 09:00", LONDON, occurrence) == occurrence + timedelta(days=7)
    assert next_fire("monday 09:00", LONDON, occurrence - timedelta(seconds=1)) == occurrence
    assert next_fire("monday 09:00", LONDON, occurrence - timedelta(minutes=5)) == occurrence
    assert next_fire("monday 09:00", LONDON, occurrence + timedelta(microseconds=1)) == (
        occurrence + timedelta(days=7)
    )
    assert next_fire("day 09:00", LONDON, occurrence) == occurrence + timedelta(days=1)


def test_next_fire_does_not_skip_an_occurrence_within_the_next_second() -> None:
    occurrence = utc(2026, 11, 23, 9, 0)
    assert next_fire("monday 09:00", LONDON, occurrence - timedelta(milliseconds=500)) == (
        occurrence
    )


def test_next_fire_results_are_utc_and_after_any_aware_after() -> None:
    after = datetime(2026, 11, 18, 12, 0, tzinfo=NEW_YORK)
    got = next_fire("day 09:00", LONDON, after)
    assert got.utcoffset() == timedelta(0)
    assert got > after
    assert got == utc(2026, 11, 19, 9, 0)


# --------------------------------------------------------------------------- DST


def test_weekly_rule_keeps_local_time_across_the_october_change_in_london() -> None:
    # The clocks go back on Sunday 2026-10-25.
    got = fires("monday 09:00", LONDON, utc(2026, 10, 10, 12, 0), 4)
    assert got == [
        utc(2026, 10, 12, 8, 0),
        utc(2026, 10, 19, 8, 0),
        utc(2026, 10, 26, 9, 0),
        utc(2026, 11, 2, 9, 0),
    ]
    for when in got:
        local = when.astimezone(LONDON)
        assert (local.weekday(), local.hour, local.minute) == (0, 9, 0)


def test_weekly_rule_keeps_local_time_across_the_march_change_in_london() -> None:
    # The clocks go forward on Sunday 2027-03-28.
    got = fires("monday 09:00", LONDON, utc(2027, 3, 13, 12, 0), 4)
    assert got == [
        utc(2027, 3, 15, 9, 0),
        utc(2027, 3, 22, 9, 0),
        utc(2027, 3, 29, 8, 0),
        utc(2027, 4, 5, 8, 0),
    ]
    for when in got:
        local = when.astimezone(LONDON)
        assert (local.weekday(), local.hour, local.minute) == (0, 9, 0)


def test_weekly_rule_keeps_local_time_across_the_november_change_in_new_york() -> None:
    # New York goes back on Sunday 2026-11-01 (EDT -4 → EST -5).
    got = fires("monday 09:00", NEW_YORK, utc(2026, 10, 20, 12, 0), 4)
    assert got == [
        utc(2026, 10, 26, 13, 0),
        utc(2026, 11, 2, 14, 0),
        utc(2026, 11, 9, 14, 0),
        utc(2026, 11, 16, 14, 0),
    ]
    for when in got:
        local = when.astimezone(NEW_YORK)
        assert (local.weekday(), local.hour, local.minute) == (0, 9, 0)


def test_daily_rule_in_the_skipped_hour_never_returns_a_time_that_does_not_exist() -> None:
    # 01:30 does not exist in London on 2027-03-28.
    got = fires("day 01:30", LONDON, utc(2027, 3, 25, 12, 0), 6)
    locals_ = [when.astimezone(LONDON) for when in got]
    assert all(exists(local) for local in locals_)
    assert [local.date() for local in locals_] == [
        date(2027, 3, 26) + timedelta(days=i) for i in range(6)
    ]
    assert all(b > a for a, b in itertools.pairwise(got))
    # Every other day is at 01:30 local.
    for local in locals_:
        if local.date() != date(2027, 3, 28):
            assert (local.hour, local.minute) == (1, 30)
    # The changeover day's message goes out once, at the first real instant after 01:30 GMT.
    changeover = got[2]
    assert changeover == utc(2027, 3, 28, 1, 30)


def test_daily_rule_in_the_repeated_hour_fires_once_that_day() -> None:
    got = fires("day 01:30", LONDON, utc(2026, 10, 23, 12, 0), 4)
    local_dates = [when.astimezone(LONDON).date() for when in got]
    assert local_dates == [date(2026, 10, 24) + timedelta(days=i) for i in range(4)]


# --------------------------------------------------------------------------- local_text


def test_local_text_shows_the_zone_abbreviation() -> None:
    assert local_text(utc(2026, 10, 26, 9, 0), LONDON) == "Mon 2026-10-26 09:00 GMT"
    assert local_text(utc(2026, 10, 19, 8, 0), LONDON) == "Mon 2026-10-19 09:00 BST"
