"""bridge/devstack_workers.py and devstack_nginx.py: the worker-mode stack's Synapse and nginx
configuration, without starting anything (tests/integration/test_workers_stack.py runs it)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bridge.devstack_nginx import CLIENT_WORKER_ROUTES, find_nginx, nginx_config
from bridge.devstack_workers import WorkerDevStack
from bridge.errors import StartupError

DEV = {"shared_secret": "s3cret", "hs_port": 8008}


def overrides(tmp_path: Path, persisters: int) -> dict[str, Any]:
    stack = WorkerDevStack(tmp_path, event_persisters=persisters)
    return stack._synapse_overrides(DEV)


def test_every_event_persister_is_a_stream_writer_in_the_instance_map(tmp_path: Path) -> None:
    hs = overrides(tmp_path, 2)
    assert hs["stream_writers"] == {"events": ["persister1", "persister2"]}
    assert set(hs["instance_map"]) == {"main", "persister1", "persister2"}
    assert hs["notify_appservices_from_worker"] == "appservice1"
    assert hs["redis"] == {"enabled": True, "host": "127.0.0.1", "port": 6379}
    assert hs["database"]["name"] == "psycopg2"
    replication = [x for x in hs["listeners"] if x["resources"] == [{"names": ["replication"]}]]
    assert [x["port"] for x in replication] == [hs["instance_map"]["main"]["port"]]
    ports = [x["port"] for x in hs["listeners"]] + [
        v["port"] for k, v in hs["instance_map"].items() if k != "main"
    ]
    assert len(set(ports)) == len(ports)


def test_ports_and_database_are_kept_when_the_shape_changes(tmp_path: Path) -> None:
    """The bench restarts one stack with 2, 1 and 0 persisters on the same database."""
    two = WorkerDevStack(tmp_path, event_persisters=2)
    two._synapse_overrides(DEV)
    one = WorkerDevStack(tmp_path, event_persisters=1)
    assert one._synapse_overrides(DEV)["stream_writers"] == {"events": ["persister1"]}
    assert one.database_name == two.database_name
    assert one._port("persister1") == two._port("persister1")


def test_no_persisters_is_a_monolith_on_the_same_database(tmp_path: Path) -> None:
    hs = overrides(tmp_path, 0)
    assert "stream_writers" not in hs and "redis" not in hs
    assert WorkerDevStack(tmp_path, event_persisters=0).worker_names == []


def test_a_monolithic_state_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "synapse").mkdir()
    (tmp_path / "synapse" / "homeserver.db").touch()
    with pytest.raises(StartupError, match="monolithic"):
        WorkerDevStack(tmp_path).prepare()


def test_nginx_routes_client_endpoints_to_the_worker_and_the_rest_to_main(
    tmp_path: Path,
) -> None:
    conf = nginx_config(tmp_path, 8008, 9000, 9001)
    assert "listen 127.0.0.1:8008;" in conf
    assert "server 127.0.0.1:9001;" in conf and "server 127.0.0.1:9000;" in conf
    assert conf.count("proxy_pass http://synapse_client;") == len(CLIENT_WORKER_ROUTES)
    assert "location / { proxy_pass http://synapse_main; }" in conf
    routes = [re.compile(r) for r in CLIENT_WORKER_ROUTES]

    def to_worker(path: str) -> bool:
        return any(r.search(path) for r in routes)

    assert to_worker("/_matrix/client/v3/rooms/!a:localhost/send/m.room.message/t1")
    assert to_worker("/_matrix/client/v3/sync")
    assert to_worker("/_matrix/client/v3/rooms/!a:localhost/invite")
    assert not to_worker("/_synapse/admin/v2/users/@alcove:localhost")
    assert not to_worker("/_matrix/client/v1/appservice/alcove/ping")
    assert not to_worker("/_matrix/client/v3/keys/upload")  # the device_lists writer: main
    assert not to_worker("/_matrix/media/v3/upload")


def test_without_a_client_worker_everything_goes_to_main(tmp_path: Path) -> None:
    conf = nginx_config(tmp_path, 8008, 9000, None)
    assert "synapse_client" not in conf


@pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed (scripts/ensure-nginx)")
def test_nginx_accepts_the_generated_config(tmp_path: Path) -> None:
    nginx = find_nginx()
    assert nginx is not None
    (tmp_path / "nginx.conf").write_text(nginx_config(tmp_path, 8008, 9000, 9001))
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_nothing_starts_once_stop_has_begun(tmp_path: Path) -> None:
    """`alcove dev --workers` starts the stack in a thread: Ctrl-C stops it meanwhile, and the
    starting thread must not leave a process behind."""
    stack = WorkerDevStack(tmp_path)
    (tmp_path / "synapse").mkdir()
    stack.stop()
    with pytest.raises(StartupError, match="stopped while starting"):
        stack._spawn("main", ["true"])
    assert stack._process is None and stack.pids == {}


def test_alcove_dev_workers_has_a_state_dir_of_its_own() -> None:
    from bridge.__main__ import _parser

    args = _parser().parse_args(["dev", "--workers"])
    assert args.workers and args.state_dir is None  # → .alcove-dev-workers
    assert not _parser().parse_args(["dev"]).workers
