"""The homeserver database maintenance after a purge (issue 10 item 8): where the database is,
and that VACUUM + a TRUNCATE checkpoint leave no deleted text in the SQLite file or its WAL —
while another connection (Synapse's) stays open on it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bridge.__main__ import main
from bridge.errors import ConfigError
from bridge.registration import dump_yaml
from bridge.scrub import HomeserverDatabase, homeserver_database, vacuum_homeserver
from tests.support.builders import config_dict

CANARY = b"CANARY-lighthouse-5f3a"


def write_hs(path: Path, database: str) -> Path:
    path.write_text(f"server_name: localhost\n{database}\n")
    return path


def test_sqlite_path_is_read_relative_to_homeserver_yaml(tmp_path: Path) -> None:
    hs = write_hs(
        tmp_path / "homeserver.yaml", "database: {name: sqlite3, args: {database: hs.db}}"
    )
    assert homeserver_database(hs) == HomeserverDatabase(sqlite_path=tmp_path / "hs.db")


def test_postgres_arguments_are_read(tmp_path: Path) -> None:
    hs = write_hs(
        tmp_path / "homeserver.yaml",
        "database: {name: psycopg2, args: {user: syn, password: pw, dbname: synapse,"
        " host: db.internal, port: 5433}}",
    )
    found = homeserver_database(hs)
    assert found.postgres == {
        "user": "syn",
        "password": "pw",
        "database": "synapse",
        "host": "db.internal",
        "port": 5433,
    }
    assert "pw" not in found.describe()


def test_an_unknown_engine_names_the_key(tmp_path: Path) -> None:
    hs = write_hs(tmp_path / "homeserver.yaml", "database: {name: mysql}")
    with pytest.raises(ConfigError) as e:
        homeserver_database(hs)
    assert e.value.path == "homeserver.synapse_config"


def synapse_like_db(path: Path) -> sqlite3.Connection:
    """A WAL database holding a deleted row, as Synapse leaves one after a purge; the returned
    connection stays open like Synapse's."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE event_json (event_id TEXT, json TEXT)")
    for i in range(200):
        conn.execute("INSERT INTO event_json VALUES (?, ?)", (f"$e{i}", "x" * 200))
    conn.execute("INSERT INTO event_json VALUES ('$secret', ?)", (CANARY.decode() * 3,))
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # some of it in the file, some in the WAL
    conn.execute("DELETE FROM event_json WHERE event_id = '$secret'")
    return conn


def raw_hits(path: Path) -> list[str]:
    files = [path, path.with_name(path.name + "-wal")]
    return [f.name for f in files if f.exists() and CANARY in f.read_bytes()]


def test_vacuum_leaves_no_deleted_bytes_while_synapse_holds_a_connection(tmp_path: Path) -> None:
    db = tmp_path / "homeserver.db"
    synapse = synapse_like_db(db)
    try:
        assert raw_hits(db)  # a plain DELETE leaves the text on disk
        asyncio.run(vacuum_homeserver(HomeserverDatabase(sqlite_path=db), timeout=10))
        assert raw_hits(db) == []
        # Synapse's connection goes on working.
        assert synapse.execute("SELECT COUNT(*) FROM event_json").fetchone() == (200,)
        synapse.execute("INSERT INTO event_json VALUES ('$next', 'y')")
    finally:
        synapse.close()


def test_the_operator_command_vacuums_the_configured_homeserver(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "homeserver.db"
    synapse_like_db(db).close()
    hs = write_hs(
        tmp_path / "homeserver.yaml", f"database: {{name: sqlite3, args: {{database: {db}}}}}"
    )
    config = tmp_path / "config.yaml"
    config.write_text(dump_yaml(config_dict()))
    code = main(["vacuum-homeserver", "-c", str(config), "--homeserver-config", str(hs)])
    assert code == 0, capsys.readouterr()
    assert f"Vacuumed SQLite {db}" in capsys.readouterr().out
    assert raw_hits(db) == []
