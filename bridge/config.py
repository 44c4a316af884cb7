"""Alcove's configuration: read once with ruamel.yaml into frozen, typed objects.

The operator's file is never written. Every error names the key (``staff[2].role``) and what
is expected; unknown keys are warned about; values left over from config.example.yaml are
refused. Environment variables override keys for containers: ``ALCOVE__DATABASE__URL`` sets
``database.url`` and ``ALCOVE__STAFF__0__ROLE`` sets ``staff[0].role``.
"""

from __future__ import annotations

import logging
import os
import re
import string
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from .errors import ConfigError

log = logging.getLogger("alcove.config")

ENV_PREFIX = "ALCOVE__"
ROLES = ("therapist", "care", "admin")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FROM_REGISTRATION = "from-registration"
# Values that only make sense in the example file. RFC 2606 reserves example.* for documentation.
_PLACEHOLDER = re.compile(r"CHANGE_?ME|(^|[.:@])example\.(org|com|net)$", re.IGNORECASE)
_USER_ID = re.compile(r"^@[a-z0-9._=\-/+]+:[A-Za-z0-9.\-]+(:\d+)?$")
_LOCALPART = re.compile(r"^[a-z0-9._=\-/]+$")
_TOKEN_NAME = re.compile(r"^[a-z0-9_-]{1,64}$")
_PHRASE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WELCOME_PLACEHOLDERS = frozenset({"client_first_name", "therapist_name", "practice_name"})
PHRASE_PLACEHOLDERS = WELCOME_PLACEHOLDERS | {"next_session"}


def template_parts(template: str) -> list[tuple[str, str | None]]:
    """A template as (literal text, placeholder name or None) pairs, ``{{``/``}}`` unescaped.

    Raises ValueError with a sentence for a malformed template and for any placeholder that is
    not a plain ``{name}``: format specs (``{name:>999999999}`` builds a gigabyte string),
    conversions (``{name!r}``) and attribute or index access (``{name.x}``, ``{name[0]}``)."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(
            f"malformed placeholder ({e}); use {{name}} and write {{{{ for a literal brace"
        ) from None
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in fields:
        if name is None:
            parts.append((literal, None))
            continue
        if spec or conversion:
            raw = "{" + name + (f"!{conversion}" if conversion else "") + f":{spec}" * bool(spec)
            shown = raw + "}" if len(raw) < 40 else raw[:39] + "…}"
            raise ValueError(
                f"placeholders take no format spec or conversion: {shown}; write just {{{name}}}"
            )
        if not name.isidentifier():  # '' / '0' (positional), 'a.b', 'a[0]'
            raise ValueError(
                f"malformed placeholder {{{name[:40]}}}: placeholders are plain names like "
                "{client_first_name}, without dots, brackets or numbers"
            )
        parts.append((literal, name))
    return parts


def placeholders(template: str) -> set[str]:
    """The {names} a template uses. Raises ValueError for a malformed template."""
    return {name for _, name in template_parts(template) if name is not None}


def check_template(template: str, allowed: frozenset[str]) -> str | None:
    """None if fine, else what is wrong (for ConfigError and for !phrase add)."""
    try:
        used = placeholders(template)
    except ValueError as e:
        return str(e)
    unknown = sorted(used - allowed)
    if unknown:
        known = ", ".join("{" + n + "}" for n in sorted(allowed))
        return f"unknown placeholder {{{unknown[0]}}}; known: {known}"
    return None


@dataclass(frozen=True)
class HomeserverConfig:
    address: str
    domain: str
    verify_ssl: bool = True
    startup_timeout: float = 60.0
    synapse_config: Path | None = None


@dataclass(frozen=True)
class AppserviceConfig:
    id: str
    address: str
    hostname: str
    port: int
    bot_localpart: str
    bot_displayname: str
    client_prefix: str
    as_token: str
    hs_token: str
    registration: Path
    doublepuppet_registration: Path
    max_body_size_mib: int = 64
    access_token_in_query: bool = False


@dataclass(frozen=True)
class DatabaseConfig:
    url: str
    min_size: int = 1
    max_size: int = 10


@dataclass(frozen=True)
class PracticeConfig:
    name: str
    timezone: ZoneInfo
    welcome: str


@dataclass(frozen=True)
class WorkingHours:
    days: frozenset[int]  # 0 = Monday
    start: time
    end: time

    def contains(self, local: datetime) -> bool:
        return local.weekday() in self.days and self.start <= local.time() < self.end


@dataclass(frozen=True)
class StaffMember:
    user_id: str
    displayname: str
    role: str
    working_hours: WorkingHours | None = None


@dataclass(frozen=True)
class ScheduleConfig:
    late_policy: str = "send"  # send | skip
    grace_seconds: float = 300.0


@dataclass(frozen=True)
class SessionsConfig:
    default_minutes: int = 50
    reminder_minutes: int = 10
    warning_minutes: int = 5
    transcript_timeout_minutes: int = 5
    purge_poll_seconds: float = 1.0
    purge_retry_seconds: float = 30.0
    room_keep_days: float = 7.0
    """How long an ended session's room (state only) waits for member devices to sync the
    leave before it is deleted anyway."""
    room_check_seconds: float = 600.0
    vacuum_homeserver: bool = False
    """After each purge, VACUUM the homeserver's database (read from homeserver.synapse_config);
    only where Alcove can reach it (the dev stack). Production: `alcove vacuum-homeserver`."""


@dataclass(frozen=True)
class AwayConfig:
    throttle_hours: float = 4.0
    message: str = "I'm away at the moment and will reply when I'm back."
    after_hours_message: str = (
        "Thanks for your message. I'm outside my working hours and will reply when I'm back. "
        "If you are in crisis, please call your local emergency number."
    )


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    file: Path | None = None


@dataclass(frozen=True)
class InboxConfig:
    max_attempts: int = 5
    retry_base_seconds: float = 1.0
    concurrency: int = 32
    keep_done_hours: float = 24.0


ROOM_KINDS = ("management", "dm", "group", "session", "staff")
"""The kinds of room Alcove creates, as named under ``encryption.rooms``."""
ENCRYPTED_BY_DEFAULT = ROOM_KINDS
"""Each carries clinical content (the management room: client names, initial passwords and
transcripts; a text-only session room: what a purge cannot reach in the homeserver's backups,
free pages and replicas stays ciphertext)."""


@dataclass(frozen=True)
class EncryptionConfig:
    """End-to-end encryption (issue 11): the bot as a crypto-capable member."""

    enabled: bool = False
    key_wait_minutes: float = 60.0
    """How long an encrypted event whose room key has not arrived is kept waiting for it."""
    rooms: frozenset[str] = frozenset(ENCRYPTED_BY_DEFAULT)
    """The kinds of room Alcove creates end-to-end encrypted (when ``enabled``): by default
    every kind that works encrypted (see ENCRYPTED_BY_DEFAULT). Existing rooms are never
    converted."""

    def encrypts(self, kind: str) -> bool:
        """Whether a new room of ``kind`` (one of ROOM_KINDS) is created encrypted."""
        assert kind in ROOM_KINDS, kind
        return self.enabled and kind in self.rooms


API_SCOPES = ("clients:write", "bookings:write", "read")
MIN_SECRET_LENGTH = 32


@dataclass(frozen=True)
class ApiToken:
    """One integration's bearer token (a booking system, a practice-management system)."""

    name: str
    token: str = field(repr=False)
    scopes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class CalendarFeed:
    """A therapist's iCalendar feed of upcoming sessions at a secret URL."""

    therapist: str
    token: str = field(repr=False)


WEBHOOK_EVENTS = {"client.created": "client.created", "session.ended": "session.purged"}
"""Webhook event name → the audit-log action it is read from."""


@dataclass(frozen=True)
class Webhook:
    """Events POSTed to a URL, signed with HMAC-SHA256 of the secret."""

    name: str
    url: str
    secret: str = field(repr=False)
    events: frozenset[str] = frozenset(WEBHOOK_EVENTS)


@dataclass(frozen=True)
class ApiConfig:
    """The HTTP API (issue 13) on its own listener, apart from the appservice's."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 29332
    tokens: tuple[ApiToken, ...] = ()
    calendars: tuple[CalendarFeed, ...] = ()
    webhooks: tuple[Webhook, ...] = ()
    webhook_retry_seconds: float = 5.0
    """The first retry of a failed delivery; doubled each time, at most an hour."""


VIDEO_PROVIDERS = ("jitsi", "element_call")


@dataclass(frozen=True)
class VideoConfig:
    """``!video``: the meeting a therapist starts in a conversation (a room widget)."""

    provider: str = "jitsi"
    jitsi_domain: str = "meet.jit.si"
    element_call_url: str = "https://call.element.io"


@dataclass(frozen=True)
class Config:
    homeserver: HomeserverConfig
    appservice: AppserviceConfig
    database: DatabaseConfig
    practice: PracticeConfig
    staff: tuple[StaffMember, ...]
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    inbox: InboxConfig = field(default_factory=InboxConfig)
    phrases: dict[str, str] = field(default_factory=dict)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    away: AwayConfig = field(default_factory=AwayConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    path: Path | None = None

    @property
    def bot_user_id(self) -> str:
        return f"@{self.appservice.bot_localpart}:{self.homeserver.domain}"

    def staff_member(self, user_id: str) -> StaffMember | None:
        for member in self.staff:
            if member.user_id == user_id:
                return member
        return None


# --------------------------------------------------------------------------- reading helpers

T = TypeVar("T")


class _Section:
    """A mapping that remembers its path, so every error can name the key."""

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(path, f"must be a mapping, got {type(data).__name__}")
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def raw(self, name: str, default: Any = ...) -> Any:
        self.seen.add(name)
        if name not in self.data or self.data[name] is None:
            if default is ...:
                raise ConfigError(self.key(name), "is required")
            return default
        return self.data[name]

    def text(self, name: str, default: Any = ..., *, placeholder_ok: bool = False) -> str:
        value = self.raw(name, default)
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(self.key(name), f"must be a string, got {type(value).__name__}")
        text = str(value).strip()
        if not text and default is ...:
            raise ConfigError(self.key(name), "must not be empty")
        if not placeholder_ok and _PLACEHOLDER.search(text):
            raise ConfigError(
                self.key(name),
                f"still has the example value {text!r}: replace it with your own",
            )
        return text

    def integer(self, name: str, default: Any = ..., *, low: int = 0, high: int = 2**31) -> int:
        value = self.raw(name, default)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(self.key(name), f"must be a whole number, got {value!r}")
        if not low <= value <= high:
            raise ConfigError(self.key(name), f"must be between {low} and {high}, got {value}")
        return value

    def number(self, name: str, default: Any = ..., *, low: float = 0.0) -> float:
        value = self.raw(name, default)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(self.key(name), f"must be a number, got {value!r}") from None
        if number < low:
            raise ConfigError(self.key(name), f"must be at least {low}, got {number}")
        return number

    def flag(self, name: str, default: Any = ...) -> bool:
        value = self.raw(name, default)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), f"must be true or false, got {value!r}")
        return value

    def choice(
        self, name: str, choices: tuple[str, ...], default: Any = ..., *, upper: bool = False
    ) -> str:
        value = self.text(name, default)
        if upper:
            value = value.upper()
        if value not in choices:
            raise ConfigError(self.key(name), f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def section(self, name: str, required: bool = True) -> _Section:
        return _Section(self.raw(name, ... if required else {}), self.key(name))

    def warn_unknown(self) -> None:
        for name in self.data:
            if name not in self.seen:
                log.warning("Unknown config key %s is ignored (typo?)", self.key(str(name)))


def _read(section: _Section, build: Callable[[_Section], T]) -> T:
    result = build(section)
    section.warn_unknown()
    return result


# --------------------------------------------------------------------------- sections


def _homeserver(s: _Section, base: Path) -> HomeserverConfig:
    address = _url(s, "address")
    domain = s.text("domain")
    if "/" in domain or " " in domain:
        raise ConfigError(
            s.key("domain"), f"must be a server name like matrix.clinic.org, got {domain!r}"
        )
    return HomeserverConfig(
        address=address,
        domain=domain,
        verify_ssl=s.flag("verify_ssl", True),
        startup_timeout=s.number("startup_timeout", 60.0),
        synapse_config=(base / str(s.raw("synapse_config")))
        if s.raw("synapse_config", None)
        else None,
    )


def _url(s: _Section, name: str) -> str:
    value = s.text(name).rstrip("/")
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(s.key(name), f"must be an http(s):// URL, got {value!r}")
    return value


def _appservice(s: _Section, base: Path, need_tokens: bool) -> AppserviceConfig:
    bot_localpart = s.text("bot_localpart", "alcove")
    if not _LOCALPART.match(bot_localpart):
        raise ConfigError(s.key("bot_localpart"), "may only use a-z, 0-9 and ._=-/")
    prefix = s.text("client_prefix", "c-")
    if not _LOCALPART.match(prefix):
        raise ConfigError(s.key("client_prefix"), "may only use a-z, 0-9 and ._=-/")
    if bot_localpart.startswith(prefix):
        raise ConfigError(s.key("bot_localpart"), f"must not start with client_prefix {prefix!r}")
    registration = base / s.text("registration", "registration.yaml")
    doublepuppet = base / s.text("doublepuppet_registration", "doublepuppet-registration.yaml")
    as_token = s.text("as_token", FROM_REGISTRATION)
    hs_token = s.text("hs_token", FROM_REGISTRATION)
    if FROM_REGISTRATION in (as_token, hs_token):
        if need_tokens or registration.exists():
            tokens = _tokens_from_registration(registration, s.key("registration"))
        else:
            tokens = ("", "")  # generate-registration is about to write them
        if as_token == FROM_REGISTRATION:
            as_token = tokens[0]
        if hs_token == FROM_REGISTRATION:
            hs_token = tokens[1]
    return AppserviceConfig(
        id=s.text("id", "alcove"),
        address=_url(s, "address"),
        hostname=s.text("hostname", "127.0.0.1"),
        port=s.integer("port", 29340, low=1, high=65535),
        bot_localpart=bot_localpart,
        bot_displayname=s.text("bot_displayname", "Alcove"),
        client_prefix=prefix,
        as_token=as_token,
        hs_token=hs_token,
        registration=registration,
        doublepuppet_registration=doublepuppet,
        max_body_size_mib=s.integer("max_body_size_mib", 64, low=10, high=1024),
        access_token_in_query=s.flag("access_token_in_query", False),
    )


def _tokens_from_registration(path: Path, key: str) -> tuple[str, str]:
    if not path.exists():
        raise ConfigError(
            key,
            f"{path} does not exist: run `alcove generate-registration -c <config>` first "
            "(or set appservice.as_token and appservice.hs_token)",
        )
    try:
        data = YAML(typ="safe").load(path.read_text())
        return str(data["as_token"]), str(data["hs_token"])
    except (YAMLError, KeyError, TypeError) as e:
        raise ConfigError(key, f"{path} is not a valid registration file ({e})") from None


def _database(s: _Section, base: Path) -> DatabaseConfig:
    url = s.text("url", "sqlite:alcove.db")
    scheme = url.split(":", 1)[0]
    if scheme in ("sqlite", "sqlite3"):
        path = url.split(":", 1)[1].removeprefix("//")
        if not path:
            raise ConfigError(s.key("url"), "sqlite URL needs a file: sqlite:alcove.db")
        if not path.startswith("/"):
            url = f"sqlite:{(base / path).resolve()}"
    elif scheme not in ("postgres", "postgresql"):
        raise ConfigError(
            s.key("url"),
            f"must start with sqlite: or postgres://, got {scheme!r}",
        )
    return DatabaseConfig(
        url=url,
        min_size=s.integer("min_size", 1, low=1, high=100),
        max_size=s.integer("max_size", 10, low=1, high=100),
    )


def _practice(s: _Section) -> PracticeConfig:
    tz_name = s.text("timezone", "UTC")
    try:
        tz = ZoneInfo(tz_name)
    # OSError: with the tzdata package installed (icalendar needs it) a folder name such as
    # "Europe" raises IsADirectoryError instead of ZoneInfoNotFoundError.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(
            s.key("timezone"), f"unknown time zone {tz_name!r}; use an IANA name like Europe/London"
        ) from None
    welcome = s.text(
        "welcome",
        "Hello {client_first_name}, this is your private conversation with "
        "{therapist_name} at {practice_name}.",
    )
    if (problem := check_template(welcome, WELCOME_PLACEHOLDERS)) is not None:
        raise ConfigError(s.key("welcome"), problem)
    return PracticeConfig(name=s.text("name"), timezone=tz, welcome=welcome)


def _staff(data: Any, domain: str) -> tuple[StaffMember, ...]:
    if data is None:
        return ()
    if not isinstance(data, list):
        raise ConfigError("staff", "must be a list of {user_id, displayname, role}")
    members: list[StaffMember] = []
    seen: set[str] = set()
    for index, item in enumerate(data):
        s = _Section(item, f"staff[{index}]")
        user_id = s.text("user_id")
        if not _USER_ID.match(user_id):
            raise ConfigError(s.key("user_id"), f"must be a Matrix ID like @name:{domain}")
        if user_id.split(":", 1)[1] != domain:
            raise ConfigError(s.key("user_id"), f"must be a local account on {domain}")
        if user_id in seen:
            raise ConfigError(s.key("user_id"), f"{user_id} is listed twice")
        seen.add(user_id)
        role = s.choice("role", ROLES)
        hours = s.raw("working_hours", None)
        members.append(
            StaffMember(
                user_id=user_id,
                displayname=s.text("displayname", user_id[1:].split(":", 1)[0]),
                role=role,
                working_hours=_working_hours(_Section(hours, s.key("working_hours")))
                if hours is not None
                else None,
            )
        )
        s.warn_unknown()
    return tuple(members)


def _clock_time(s: _Section, name: str) -> time:
    value = s.text(name)
    try:
        return datetime.strptime(value, "%H:%M").time()
    except ValueError:
        raise ConfigError(s.key(name), f"must be a time like 09:00, got {value!r}") from None


def _working_hours(s: _Section) -> WorkingHours:
    days_raw = s.raw("days", ["mon", "tue", "wed", "thu", "fri"])
    if not isinstance(days_raw, list) or not days_raw:
        raise ConfigError(s.key("days"), "must be a list like [mon, tue, wed, thu, fri]")
    days = set()
    for day in days_raw:
        name = str(day).lower()[:3]
        if name not in WEEKDAYS:
            raise ConfigError(s.key("days"), f"unknown day {day!r}; use {', '.join(WEEKDAYS)}")
        days.add(WEEKDAYS.index(name))
    start, end = _clock_time(s, "start"), _clock_time(s, "end")
    if not start < end:
        raise ConfigError(s.key("end"), "must be after start")
    s.warn_unknown()
    return WorkingHours(frozenset(days), start, end)


def _phrases(data: Any) -> dict[str, str]:
    section = _Section(data, "phrases")
    out: dict[str, str] = {}
    for name in list(section.data):
        key = str(name)
        if not _PHRASE_NAME.match(key):
            raise ConfigError(section.key(key), "phrase names use a-z, 0-9, - and _ (max 32)")
        text = section.text(key)
        if (problem := check_template(text, PHRASE_PLACEHOLDERS)) is not None:
            raise ConfigError(section.key(key), problem)
        out[key] = text
    return out


def _schedule(s: _Section) -> ScheduleConfig:
    return ScheduleConfig(
        late_policy=s.choice("late_policy", ("send", "skip"), "send"),
        grace_seconds=s.number("grace_seconds", 300.0),
    )


def _away(s: _Section) -> AwayConfig:
    d = AwayConfig()
    return AwayConfig(
        throttle_hours=s.number("throttle_hours", d.throttle_hours, low=0.0),
        message=s.text("message", d.message),
        after_hours_message=s.text("after_hours_message", d.after_hours_message),
    )


def _sessions(s: _Section) -> SessionsConfig:
    d = SessionsConfig()
    return SessionsConfig(
        default_minutes=s.integer("default_minutes", d.default_minutes, low=1, high=24 * 60),
        reminder_minutes=s.integer("reminder_minutes", d.reminder_minutes, low=0, high=24 * 60),
        warning_minutes=s.integer("warning_minutes", d.warning_minutes, low=0, high=120),
        transcript_timeout_minutes=s.integer(
            "transcript_timeout_minutes", d.transcript_timeout_minutes, low=1, high=120
        ),
        purge_poll_seconds=s.number("purge_poll_seconds", d.purge_poll_seconds, low=0.05),
        purge_retry_seconds=s.number("purge_retry_seconds", d.purge_retry_seconds, low=0.1),
        room_keep_days=s.number("room_keep_days", d.room_keep_days, low=0.0),
        room_check_seconds=s.number("room_check_seconds", d.room_check_seconds, low=0.1),
        vacuum_homeserver=s.flag("vacuum_homeserver", d.vacuum_homeserver),
    )


def _logging(s: _Section, base: Path) -> LoggingConfig:
    file = s.raw("file", None)
    return LoggingConfig(
        level=s.choice("level", LOG_LEVELS, "INFO", upper=True),
        file=(base / str(file)) if file else None,
    )


def _inbox(s: _Section) -> InboxConfig:
    return InboxConfig(
        max_attempts=s.integer("max_attempts", 5, low=1, high=100),
        retry_base_seconds=s.number("retry_base_seconds", 1.0, low=0.01),
        concurrency=s.integer("concurrency", 32, low=1, high=1000),
        keep_done_hours=s.number("keep_done_hours", 24.0),
    )


def _encryption(s: _Section) -> EncryptionConfig:
    rooms = _read(s.section("rooms", required=False), _encrypted_rooms)
    return EncryptionConfig(
        enabled=s.flag("enabled", False),
        key_wait_minutes=s.number("key_wait_minutes", 60.0, low=1.0),
        rooms=rooms,
    )


def _video(s: _Section) -> VideoConfig:
    d = VideoConfig()
    domain = s.text("jitsi_domain", d.jitsi_domain)
    if "/" in domain or not domain:
        raise ConfigError(
            s.key("jitsi_domain"), f"must be a host name like meet.jit.si, got {domain!r}"
        )
    call_url = s.text("element_call_url", d.element_call_url).rstrip("/")
    if urlparse(call_url).scheme != "https":
        raise ConfigError(s.key("element_call_url"), f"must be an https:// URL, got {call_url!r}")
    return VideoConfig(
        provider=s.choice("provider", VIDEO_PROVIDERS, d.provider),
        jitsi_domain=domain,
        element_call_url=call_url,
    )


def _encrypted_rooms(s: _Section) -> frozenset[str]:
    return frozenset(kind for kind in ROOM_KINDS if s.flag(kind, kind in ENCRYPTED_BY_DEFAULT))


def _secret(s: _Section, name: str) -> str:
    value = s.text(name)
    if len(value) < MIN_SECRET_LENGTH:
        raise ConfigError(
            s.key(name),
            f"must be at least {MIN_SECRET_LENGTH} characters (it is a password); generate one "
            "with: python -c 'import secrets; print(secrets.token_urlsafe(32))'",
        )
    return value


def _list(data: Any, path: str) -> list[Any]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConfigError(path, f"must be a list, got {type(data).__name__}")
    return data


def _choices(
    s: _Section, key: str, what: str, allowed: Collection[str], default: Any = ...
) -> frozenset[str]:
    """A non-empty list whose every item is one of ``allowed``."""
    items = s.raw(key, default)
    if not isinstance(items, list) or not items:
        raise ConfigError(s.key(key), f"must be a list of: {', '.join(allowed)}")
    for item in items:
        if item not in allowed:
            raise ConfigError(s.key(key), f"unknown {what} {item!r}; use {', '.join(allowed)}")
    return frozenset(items)


def _api(s: _Section, staff: tuple[StaffMember, ...], appservice: AppserviceConfig) -> ApiConfig:
    d = ApiConfig()
    tokens: list[ApiToken] = []
    for i, item in enumerate(_list(s.raw("tokens", None), s.key("tokens"))):
        t = _Section(item, f"{s.key('tokens')}[{i}]")
        name = t.text("name")
        if not _TOKEN_NAME.match(name):
            raise ConfigError(t.key("name"), "may only use a-z, 0-9, - and _ (max 64)")
        secret = _secret(t, "token")
        scopes = _choices(t, "scopes", "scope", API_SCOPES)
        if any(o.name == name for o in tokens):
            raise ConfigError(t.key("name"), f"{name!r} is used by another token")
        if any(o.token == secret for o in tokens):
            raise ConfigError(t.key("token"), "is the same as another token's: one per integration")
        t.warn_unknown()
        tokens.append(ApiToken(name, secret, scopes))
    therapists = {m.user_id for m in staff if m.role == "therapist"}
    calendars: list[CalendarFeed] = []
    for i, item in enumerate(_list(s.raw("calendars", None), s.key("calendars"))):
        c = _Section(item, f"{s.key('calendars')}[{i}]")
        therapist = c.text("therapist", placeholder_ok=True)
        if therapist not in therapists:
            raise ConfigError(c.key("therapist"), f"{therapist!r} is no therapist under staff")
        secret = _secret(c, "token")
        if any(o.token == secret for o in calendars) or any(o.token == secret for o in tokens):
            raise ConfigError(c.key("token"), "is the same as another token's")
        c.warn_unknown()
        calendars.append(CalendarFeed(therapist, secret))
    webhooks: list[Webhook] = []
    for i, item in enumerate(_list(s.raw("webhooks", None), s.key("webhooks"))):
        w = _Section(item, f"{s.key('webhooks')}[{i}]")
        name = w.text("name")
        if any(o.name == name for o in webhooks):
            raise ConfigError(w.key("name"), f"{name!r} is used by another webhook")
        url = w.text("url")
        if urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
            raise ConfigError(w.key("url"), f"must be an http(s):// URL, got {url!r}")
        secret = _secret(w, "secret")
        events = _choices(w, "events", "event", WEBHOOK_EVENTS, default=sorted(WEBHOOK_EVENTS))
        w.warn_unknown()
        webhooks.append(Webhook(name, url, secret, events))
    api = ApiConfig(
        enabled=s.flag("enabled", d.enabled),
        host=s.text("host", d.host),
        port=s.integer("port", d.port, low=1, high=65535),
        tokens=tuple(tokens),
        calendars=tuple(calendars),
        webhooks=tuple(webhooks),
        webhook_retry_seconds=s.number("webhook_retry_seconds", d.webhook_retry_seconds, low=0.01),
    )
    if api.enabled and api.port == appservice.port:
        raise ConfigError(
            s.key("port"), f"must differ from appservice.port ({appservice.port}): its own listener"
        )
    return api


# --------------------------------------------------------------------------- entry points


def parse_config(
    data: Any, base: Path, path: Path | None = None, *, need_tokens: bool = True
) -> Config:
    """Validate a loaded YAML tree into a Config. ``base`` resolves relative paths."""
    root = _Section(data, "")
    hs = _read(root.section("homeserver"), lambda s: _homeserver(s, base))
    appservice = _read(root.section("appservice"), lambda s: _appservice(s, base, need_tokens))
    staff = _staff(root.raw("staff", None), hs.domain)
    config = Config(
        homeserver=hs,
        appservice=appservice,
        database=_read(root.section("database", required=False), lambda s: _database(s, base)),
        practice=_read(root.section("practice"), _practice),
        staff=staff,
        logging=_read(root.section("logging", required=False), lambda s: _logging(s, base)),
        inbox=_read(root.section("inbox", required=False), _inbox),
        phrases=_phrases(root.raw("phrases", None)),
        schedule=_read(root.section("schedule", required=False), _schedule),
        away=_read(root.section("away", required=False), _away),
        sessions=_read(root.section("sessions", required=False), _sessions),
        encryption=_read(root.section("encryption", required=False), _encryption),
        api=_read(root.section("api", required=False), lambda s: _api(s, staff, appservice)),
        video=_read(root.section("video", required=False), _video),
        path=path,
    )
    root.warn_unknown()
    return config


def apply_env(data: Any, environ: Mapping[str, str]) -> Any:
    """Override keys from ``ALCOVE__SECTION__KEY`` variables (list items by index)."""
    if data is None:
        data = {}
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        node: Any = data
        where = ""
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(where, f"environment variable {name}: no list item {part}")
                idx = int(part)
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            else:
                if not isinstance(node, dict):
                    raise ConfigError(
                        where, f"environment variable {name}: {where} is not a section"
                    )
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:  # absent, or present but empty in the file
                        node[part] = {}
                    node = node[part]
            where = f"{where}.{part}" if where else part
    return data


def load_config(
    path: str | Path, environ: Mapping[str, str] | None = None, *, need_tokens: bool = True
) -> Config:
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            "", f"config file {path} not found: copy config.example.yaml to {path} and edit it"
        )
    try:
        data = YAML(typ="safe").load(path.read_text())
    except YAMLError as e:
        raise ConfigError("", f"{path} is not valid YAML: {e}") from None
    data = apply_env(data, os.environ if environ is None else environ)
    return parse_config(data, path.parent.resolve(), path.resolve(), need_tokens=need_tokens)
