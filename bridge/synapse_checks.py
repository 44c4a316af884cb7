"""What a homeserver must be configured for, so that "a text-only session leaves nothing" holds
beyond Alcove's own purge. Pure functions of the parsed homeserver.yaml (and its log config)."""

from __future__ import annotations

import re
from typing import Any

from .startup import Check

_DURATION = re.compile(r"^(\d+)\s*([smhdwy]?)$")
_SECONDS = {"": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def duration_seconds(value: Any) -> float | None:
    """Synapse durations: a number of milliseconds, or '7d', '1h' ... None if unparseable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) / 1000
    match = _DURATION.match(str(value).strip().lower())
    if not match:
        return None
    return int(match[1]) * _SECONDS[match[2]]


def check_synapse_config(hs: dict[str, Any], log_config: dict[str, Any] | None) -> list[Check]:
    checks: list[Check] = []
    # null does not mean "keep nothing": Synapse then never censors redacted events
    # (synapse/storage/databases/main/censor_events.py), so their text stays for good.
    retention = hs.get("redaction_retention_period", "7d")
    seconds = None if retention is None else duration_seconds(retention)
    if seconds is not None and seconds <= 86400:
        checks.append(Check("redacted content is not kept (redaction_retention_period)", True, ""))
    else:
        kept = "for ever (null turns the clean-up off)" if retention is None else "that long"
        checks.append(
            Check(
                "redacted content is not kept (redaction_retention_period)",
                False,
                f"is {retention!r}: Synapse keeps the text of deleted messages {kept}. Set "
                "redaction_retention_period: 1d (or shorter, e.g. 5m) in homeserver.yaml.",
            )
        )
    push = hs.get("push") or {}
    if push.get("include_content", True):
        checks.append(
            Check(
                "push notifications carry no message text",
                False,
                "set push: {include_content: false} in homeserver.yaml, or message text leaves the "
                "server in push notifications.",
            )
        )
    else:
        checks.append(Check("push notifications carry no message text", True, ""))
    if hs.get("url_preview_enabled"):
        checks.append(
            Check(
                "URL previews are off",
                False,
                "url_preview_enabled: true stores the links people write (and page previews) in "
                "Synapse's database and media store; set it to false.",
            )
        )
    else:
        checks.append(Check("URL previews are off", True, ""))
    checks.append(_logging(log_config))
    checks.append(_database(hs.get("database") or {}))
    return checks


def _logging(log_config: dict[str, Any] | None) -> Check:
    name = "Synapse does not log request content (log level WARNING or above)"
    if log_config is None:
        return Check(name, False, "log_config could not be read; check its levels by hand.")
    levels = {"root": str((log_config.get("root") or {}).get("level", "WARNING")).upper()}
    for logger, conf in (log_config.get("loggers") or {}).items():
        if isinstance(conf, dict) and "level" in conf:
            levels[str(logger)] = str(conf["level"]).upper()
    chatty = sorted(k for k, v in levels.items() if v in ("INFO", "DEBUG", "NOTSET"))
    if chatty:
        return Check(
            name,
            False,
            f"{', '.join(chatty)} log at INFO or DEBUG: Synapse then logs /search terms (and at "
            "DEBUG, SQL with values). Use WARNING in the log config.",
        )
    return Check(name, True, "")


def _database(database: dict[str, Any]) -> Check:
    engine = str(database.get("name", "sqlite3"))
    if engine == "sqlite3":
        return Check(
            "deleted rows leave no bytes on disk",
            False,
            "SQLite keeps the bytes of purged rows in free pages and the WAL until VACUUM: run "
            "`alcove vacuum-homeserver -c config.yaml` after sessions (e.g. nightly), or set "
            "sessions.vacuum_homeserver when Alcove runs beside Synapse (README).",
            warning=True,
        )
    return Check(
        "deleted rows leave no bytes on disk",
        False,
        "PostgreSQL keeps purged rows' bytes in table pages and the full-text index after a "
        "plain VACUUM, and in WAL segments until they are reused: run `alcove vacuum-homeserver "
        "-c config.yaml` (VACUUM FULL of the content tables) after sessions (README).",
        warning=True,
    )


ENCRYPTION_FEATURES = ("msc2409_to_device_messages_enabled", "msc3202_transaction_extensions")


def check_encryption_extensions(hs: dict[str, Any]) -> Check:
    """With encryption.enabled: Synapse pushes to-device events (room keys), device lists and
    one-time-key counts to appservices only with these experimental features on."""
    name = "appservice encryption extensions (experimental_features)"
    features = hs.get("experimental_features") or {}
    missing = [f for f in ENCRYPTION_FEATURES if not features.get(f)]
    if missing:
        return Check(
            name,
            False,
            f"encryption.enabled needs {', '.join(f'{m}: true' for m in missing)} under "
            "experimental_features in homeserver.yaml (without them room keys never reach Alcove "
            "and encrypted commands wait until they are given up on); restart Synapse after.",
        )
    return Check(name, True, "")


def check_restore(hs: dict[str, Any]) -> Check:
    """`!restore` reads redacted content through MSC2815, which Synapse serves only with the
    experimental feature on (and only while redaction_retention_period keeps the content)."""
    name = "deleted messages can be restored (!restore: msc2815_enabled)"
    if (hs.get("experimental_features") or {}).get("msc2815_enabled"):
        return Check(name, True, "")
    return Check(
        name,
        False,
        "set experimental_features: {msc2815_enabled: true} in homeserver.yaml (optional): "
        "without it !restore answers that the homeserver does not let Alcove read deleted "
        "messages.",
        warning=True,
    )
