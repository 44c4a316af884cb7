"""A therapist's iCalendar feed of upcoming text-only sessions (the ``icalendar`` library):
times and clients' initials only, never a name or a room link."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from icalendar import Calendar, Event

from bots.features.sessions.repo import Session

from ..config import Config


def calendar_feed(
    config: Config,
    sessions: Sequence[Session],
    initials: Mapping[str, str],
    now: datetime,
) -> str:
    cal = Calendar()
    cal.add("prodid", "-//Alcove//Text-only sessions//EN")
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("x-wr-calname", f"{config.practice.name}: text-only sessions")
    cal.add("refresh-interval", timedelta(minutes=15), parameters={"VALUE": "DURATION"})
    stamp = now.astimezone(UTC)
    for s in sessions:
        who = ", ".join(initials.get(c, "?") for c in s.clients)
        event = Event()
        event.add("uid", f"alcove-session-{s.id}@{config.homeserver.domain}")
        event.add("dtstamp", stamp)
        event.add("dtstart", datetime.fromtimestamp(s.start_at / 1000, UTC))
        event.add("dtend", datetime.fromtimestamp(s.end_at / 1000, UTC))
        event.add("summary", f"Text-only session #{s.id} · {who}")
        event.add("status", "CONFIRMED")
        event.add("transp", "OPAQUE")
        cal.add_component(event)
    return str(cal.to_ical().decode())
