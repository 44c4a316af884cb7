"""Times in commands, in the therapist's time zone; results are aware UTC datetimes.

Pure functions of "now". Recurrences use APScheduler's CronTrigger, which handles DST."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import cast
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
WEEKDAYS = {
    "monday": "mon",
    "tuesday": "tue",
    "wednesday": "wed",
    "thursday": "thu",
    "friday": "fri",
    "saturday": "sat",
    "sunday": "sun",
}
_DELAY = re.compile(r"^(\d{1,6})([smhd])$")
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


class TimeError(ValueError):
    """A time the user wrote that cannot be used; the message says why."""


def parse_delay(text: str) -> timedelta:
    match = _DELAY.match(text.strip().lower())
    if not match:
        raise TimeError(f"{text!r} is not a delay like 10m, 2h or 1d")
    seconds = int(match[1]) * UNITS[match[2]]
    if seconds <= 0:
        raise TimeError("the delay must be more than zero")
    return timedelta(seconds=seconds)


def parse_local(date: str, hhmm: str, tz: ZoneInfo) -> datetime:
    """'2026-12-01', '09:00' in ``tz`` -> aware UTC. Refuses times that do not exist (the hour
    skipped when clocks go forward); an ambiguous time (clocks go back) is the first one."""
    try:
        naive = datetime.strptime(f"{date} {hhmm}", "%Y-%m-%d %H:%M")
    except ValueError:
        raise TimeError(f"{date} {hhmm} is not a date and time like 2026-12-01 09:00") from None
    local = naive.replace(tzinfo=tz, fold=0)
    back = local.astimezone(UTC).astimezone(tz)
    if back.replace(tzinfo=None) != naive:
        raise TimeError(f"{date} {hhmm} does not exist in {tz.key} (the clocks change then)")
    return local.astimezone(UTC)


def recurrence(rule: str, tz: ZoneInfo) -> CronTrigger:
    """'monday 09:00' (weekly) or 'day 09:00' (daily) -> a trigger in the therapist's zone."""
    parts = rule.lower().split()
    if len(parts) != 2 or not _HHMM.match(parts[1]):
        raise TimeError(f"{rule!r} is not like 'monday 09:00' or 'day 09:00'")
    day, hhmm = parts
    hour, minute = (int(x) for x in hhmm.split(":"))
    if day in ("day", "daily"):
        return CronTrigger(hour=hour, minute=minute, timezone=tz)
    short = WEEKDAYS.get(day) or (day if day in WEEKDAYS.values() else None)
    if short is None:
        raise TimeError(f"{day!r} is not a weekday or 'day'")
    return CronTrigger(day_of_week=short, hour=hour, minute=minute, timezone=tz)


def next_fire(rule: str, tz: ZoneInfo, after: datetime) -> datetime:
    """The first occurrence of ``rule`` strictly after ``after`` (aware), in UTC."""
    trigger = recurrence(rule, tz)
    # APScheduler answers "the first time >= now", rounded up to a whole second.
    start = after + timedelta(microseconds=1)
    for _ in range(3):
        nxt = trigger.get_next_fire_time(None, start)
        if nxt is None:  # a cron rule always has a next time; guard for the type checker
            raise TimeError(f"{rule!r} never happens")
        when = cast(datetime, nxt).astimezone(UTC)
        if not _second_of_repeated_hour(when, tz):
            return when
        # When clocks go back, a wall time in the repeated hour happens twice: keep the first
        # (as parse_local does), so a daily message is not sent twice that night.
        start = when + timedelta(microseconds=1)
    raise TimeError(f"{rule!r} has no usable next time")


def _second_of_repeated_hour(when: datetime, tz: ZoneInfo) -> bool:
    local = when.astimezone(tz)
    first = local.replace(tzinfo=None).replace(tzinfo=tz, fold=0).astimezone(UTC)
    return first != when


def local_text(when: datetime, tz: ZoneInfo) -> str:
    return when.astimezone(tz).strftime("%a %Y-%m-%d %H:%M %Z")
