"""bridge/synapse_checks.py: the homeserver settings text-only sessions rely on."""

from __future__ import annotations

from typing import Any

from bridge.synapse_checks import (
    check_encryption_extensions,
    check_synapse_config,
    duration_seconds,
)

GOOD: dict[str, Any] = {
    "redaction_retention_period": "1d",
    "push": {"include_content": False},
    "url_preview_enabled": False,
    "database": {"name": "psycopg2"},
}
QUIET_LOGS: dict[str, Any] = {
    "root": {"level": "WARNING"},
    "loggers": {"synapse": {"level": "ERROR"}},
}


def by_name(hs: dict[str, Any], logs: dict[str, Any] | None) -> dict[str, tuple[bool, bool]]:
    return {c.name: (c.ok, c.warning) for c in check_synapse_config(hs, logs)}


def test_a_careful_homeserver_passes_everything() -> None:
    results = by_name(GOOD, QUIET_LOGS)
    assert len(results) == 5
    # Vacuuming cannot be read from the config, on either engine: always advice (measured:
    # a plain VACUUM on PostgreSQL leaves purged text in pages and the full-text index).
    disk = results.pop("deleted rows leave no bytes on disk")
    assert disk == (False, True)
    assert all(ok for ok, _ in results.values()), results


def test_synapse_defaults_are_flagged() -> None:
    results = by_name({}, {"root": {"level": "INFO"}})
    failed = {name for name, (ok, warning) in results.items() if not ok and not warning}
    assert failed == {
        "redacted content is not kept (redaction_retention_period)",
        "push notifications carry no message text",
        "Synapse does not log request content (log level WARNING or above)",
    }
    # SQLite (the default) cannot be verified from the config: advice, not a failure.
    assert results["deleted rows leave no bytes on disk"] == (False, True)


def test_url_previews_and_a_debug_logger_fail() -> None:
    results = by_name(
        {**GOOD, "url_preview_enabled": True},
        {"root": {"level": "WARNING"}, "loggers": {"synapse.storage.SQL": {"level": "DEBUG"}}},
    )
    assert results["URL previews are off"] == (False, False)
    assert results["Synapse does not log request content (log level WARNING or above)"] == (
        False,
        False,
    )


def test_redaction_retention_short_is_fine_long_or_null_is_not() -> None:
    # null turns Synapse's censoring of redacted events off: their text is kept for good.
    null = by_name({**GOOD, "redaction_retention_period": None}, QUIET_LOGS)[
        "redacted content is not kept (redaction_retention_period)"
    ]
    assert null[0] is False
    assert (
        by_name({**GOOD, "redaction_retention_period": "5m"}, QUIET_LOGS)[
            "redacted content is not kept (redaction_retention_period)"
        ][0]
        is True
    )
    assert (
        by_name({**GOOD, "redaction_retention_period": "2d"}, QUIET_LOGS)[
            "redacted content is not kept (redaction_retention_period)"
        ][0]
        is False
    )


def test_durations() -> None:
    assert duration_seconds("7d") == 7 * 86400
    assert duration_seconds("1h") == 3600
    assert duration_seconds(60000) == 60
    assert duration_seconds("soon") is None
    assert duration_seconds(True) is None


def test_encryption_needs_the_appservice_extensions() -> None:
    check = check_encryption_extensions(
        {"experimental_features": {"msc3202_transaction_extensions": True}}
    )
    assert not check.ok and "msc2409_to_device_messages_enabled: true" in check.detail
    assert "msc3202" not in check.detail
    assert not check_encryption_extensions({}).ok
    features = {"msc2409_to_device_messages_enabled": True, "msc3202_transaction_extensions": True}
    assert check_encryption_extensions({"experimental_features": features}).ok
