"""Forward-only numbered migrations.

Each ``vNN_*.py`` module registers exactly one upgrade on ``upgrade_table`` with a description
of why it exists. A database whose version is newer than the last migration here is refused
at start-up (mautrix raises UnsupportedDatabaseVersion; Alcove explains it).
"""

from mautrix.util.async_db import UpgradeTable

upgrade_table = UpgradeTable(version_table_name="alcove_version", database_name="Alcove")

from . import (  # noqa: E402,F401  (import order is version order)
    v01_inbox_outbox,
    v02_conversations,
    v03_therapist_tools,
    v04_sessions,
    v05_audit_truncate,
    v06_command_runs,
    v07_session_rooms_and_media,
    v08_replayable_answers,
    v09_management_rooms,
    v10_crypto_rooms,
    v11_api,
    v12_spaces_archive_mute,
)

__all__ = ["upgrade_table"]
