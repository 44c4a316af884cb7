"""The dev stack with Synapse split into workers: for `alcove dev --workers`, the smoke tests
and bench/workers.py. Alcove's config, registrations and bootstrap are DevStack's; only the
homeserver differs:

  nginx (127.0.0.1:hs_port, the address Alcove and clients use)
    ├─ client worker  client1       sync, send, state, join/invite, createRoom, login, register …
    └─ main process                 admin API, media, devices, everything else
  event persisters  persister1..N   stream_writers.events (rooms sharded between them)
  appservice pusher appservice1     notify_appservices_from_worker: pushes transactions to Alcove
  PostgreSQL (a database of its own, C collation) and Redis (replication pub/sub)

``event_persisters=0`` runs the same database and proxy with the main process alone (a
monolithic Synapse on PostgreSQL), so a bench can compare both on the same rooms.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .config import Config, load_config
from .devstack import SERVER_NAME, DevStack, element_instructions, free_port, synapse_env
from .devstack_nginx import find_nginx, nginx_config
from .errors import StartupError
from .registration import dump_yaml

log = logging.getLogger("alcove.devstack")

DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = ("127.0.0.1", 6379)
APPSERVICE_WORKER = "appservice1"
CLIENT_WORKER = "client1"
WORKER_APP = "synapse.app.generic_worker"


@dataclass
class WorkerDevStack(DevStack):
    event_persisters: int = 2
    postgres_dsn: str = DEFAULT_POSTGRES  # a maintenance database: the stack creates its own
    redis: tuple[str, int] = DEFAULT_REDIS
    _children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stopping: bool = field(default=False, repr=False)

    # ------------------------------------------------------------------ layout

    @property
    def workers_path(self) -> Path:
        return self.state_dir / "workers.json"

    @property
    def persisters(self) -> list[str]:
        return [f"persister{i}" for i in range(1, self.event_persisters + 1)]

    @property
    def worker_names(self) -> list[str]:
        if self.event_persisters == 0:
            return []
        return [*self.persisters, APPSERVICE_WORKER, CLIENT_WORKER]

    @property
    def database_name(self) -> str:
        return str(self._layout()["database"])

    @property
    def pids(self) -> dict[str, int]:
        """Every running process of the homeserver by name (main, workers, nginx)."""
        procs = dict(self._children)
        if self._process is not None:
            procs["main"] = self._process
        return {name: p.pid for name, p in procs.items() if p.poll() is None}

    @property
    def ports(self) -> dict[str, int]:
        """Every listening port of the homeserver by process name (nginx: the public one)."""
        ports = {k: int(v) for k, v in self._layout()["ports"].items()}
        return {**ports, "nginx": int(self.dev_secrets["hs_port"])}

    @property
    def database_dsn(self) -> str:
        """The homeserver's own database (for tests and benches that look inside)."""
        return self.postgres_dsn.rsplit("/", 1)[0] + "/" + self.database_name

    def _layout(self) -> dict[str, Any]:
        """Ports and the database name, chosen on first use and kept in workers.json."""
        data: dict[str, Any] = (
            json.loads(self.workers_path.read_text()) if self.workers_path.exists() else {}
        )
        changed = "database" not in data
        data.setdefault("database", f"alcove_synapse_{secrets.token_hex(5)}")
        ports: dict[str, int] = data.setdefault("ports", {})
        for name in ("main", "main_replication", *self.worker_names):
            if name not in ports:
                ports[name] = free_port()
                changed = True
        if changed:
            self.workers_path.write_text(json.dumps(data, indent=2))
        return data

    def _port(self, name: str) -> int:
        return int(self._layout()["ports"][name])

    # ------------------------------------------------------------------ files

    def prepare(self) -> Config:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if (self.state_dir / "synapse" / "homeserver.db").exists():
            raise StartupError(
                f"{self.state_dir} holds a monolithic dev stack (SQLite); the worker-mode stack "
                "needs a state dir of its own (pass another --state-dir)"
            )
        self._layout()
        self._ensure_database()
        config = super().prepare()  # calls _synapse_overrides below
        self._write_worker_configs()
        return config

    def _database_args(self) -> dict[str, Any]:
        url = urlsplit(self.postgres_dsn)
        args: dict[str, Any] = {
            "user": unquote(url.username or "postgres"),
            "host": url.hostname or "127.0.0.1",
            "port": url.port or 5432,
            "database": self.database_name,
            "cp_min": 1,
            "cp_max": 5,  # per process: six processes share PostgreSQL's 100 connections
        }
        if url.password:
            args["password"] = unquote(url.password)
        return args

    def _synapse_overrides(self, dev: dict[str, Any]) -> dict[str, Any]:
        secret = hashlib.sha256(dev["shared_secret"].encode() + b"r").hexdigest()
        overrides: dict[str, Any] = {
            "database": {"name": "psycopg2", "args": self._database_args()},
            "listeners": [
                {
                    "port": self._port("main"),
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": True,  # behind nginx
                    "resources": [{"names": ["client"], "compress": False}],
                },
                {
                    "port": self._port("main_replication"),
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "resources": [{"names": ["replication"]}],
                },
            ],
        }
        if self.event_persisters == 0:
            return overrides
        local = "127.0.0.1"
        overrides |= {
            "worker_replication_secret": secret,
            "redis": {"enabled": True, "host": self.redis[0], "port": self.redis[1]},
            "instance_map": {
                "main": {"host": local, "port": self._port("main_replication")},
                **{n: {"host": local, "port": self._port(n)} for n in self.persisters},
            },
            "stream_writers": {"events": self.persisters},
            "notify_appservices_from_worker": APPSERVICE_WORKER,
        }
        return overrides

    def _write_worker_configs(self) -> None:
        workers = self.state_dir / "synapse" / "workers"
        workers.mkdir(exist_ok=True)
        for name in self.worker_names:
            if name == CLIENT_WORKER:
                resources = [{"names": ["client"], "compress": False}]
            elif name == APPSERVICE_WORKER:
                resources = [{"names": ["health"]}]  # sends only; /health shows it is up
            else:
                resources = [{"names": ["replication"]}]
            log_config = {
                "version": 1,
                "formatters": {"f": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
                "handlers": {
                    "file": {
                        "class": "logging.FileHandler",
                        "filename": str(workers / f"{name}.log"),
                        "formatter": "f",
                    }
                },
                "root": {"level": "WARNING", "handlers": ["file"]},  # as main: no /search terms
                "disable_existing_loggers": False,
            }
            (workers / f"{name}.log.yaml").write_text(dump_yaml(log_config))
            worker = {
                "worker_app": WORKER_APP,
                "worker_name": name,
                "worker_listeners": [
                    {
                        "type": "http",
                        "port": self._port(name),
                        "bind_addresses": ["127.0.0.1"],
                        "x_forwarded": name == CLIENT_WORKER,
                        "resources": resources,
                    }
                ],
                "worker_log_config": str(workers / f"{name}.log.yaml"),
            }
            (workers / f"{name}.yaml").write_text(
                "# Generated by Alcove's worker-mode dev stack.\n" + dump_yaml(worker)
            )
        nginx_dir = self.state_dir / "nginx"
        nginx_dir.mkdir(exist_ok=True)
        client = self._port(CLIENT_WORKER) if self.event_persisters else None
        (nginx_dir / "nginx.conf").write_text(
            nginx_config(nginx_dir, self.dev_secrets["hs_port"], self._port("main"), client)
        )

    # ------------------------------------------------------------------ PostgreSQL, Redis

    def _ensure_database(self) -> None:
        import psycopg2  # Synapse's own driver (matrix-synapse[postgres])

        name = self.database_name
        try:
            conn = psycopg2.connect(self.postgres_dsn, connect_timeout=5)
        except psycopg2.OperationalError as e:
            raise StartupError(
                f"PostgreSQL is not reachable at {self.postgres_dsn} (workers need it): {e}"
            ) from e
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    # Synapse refuses any other collation (docs/postgres.md).
                    cur.execute(
                        f"CREATE DATABASE \"{name}\" ENCODING 'UTF8' LC_COLLATE 'C' "
                        "LC_CTYPE 'C' TEMPLATE template0"
                    )
        finally:
            conn.close()

    def drop_database(self) -> None:
        """Remove the homeserver's database (the tests' and the bench's clean-up)."""
        import psycopg2

        if not self.workers_path.exists():
            return  # never prepared: no database was created

        conn = psycopg2.connect(self.postgres_dsn, connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{self.database_name}" WITH (FORCE)')
        finally:
            conn.close()

    def _check_redis(self) -> None:
        """Redis pub/sub channels are named after the server name and shared by every database
        number: two worker stacks called `localhost` on one Redis would take each other's
        replication traffic. Refuse to start while another one is subscribed."""
        host, port = self.redis
        try:
            subscribers = redis_subscribers(host, port, SERVER_NAME)
        except OSError as e:
            raise StartupError(
                f"Redis is not reachable at {host}:{port} (workers need it): {e}"
            ) from e
        if subscribers:
            raise StartupError(
                f"Another Synapse with server name {SERVER_NAME!r} is using "
                f"Redis at {host}:{port} ({subscribers} subscriber(s)); stop it first"
            )

    # ------------------------------------------------------------------ processes

    def start(self, timeout: float = 180.0) -> None:
        nginx = find_nginx()
        if nginx is None:
            raise StartupError("nginx is not installed: run scripts/ensure-nginx")
        port = self.dev_secrets["hs_port"]
        for name, p in (("nginx", port), ("main", self._port("main"))):
            if port_open(p):
                raise StartupError(
                    f"Port {p} ({name}) of this dev stack is already in use: is another "
                    f"`alcove dev --workers` running with {self.state_dir}?"
                )
        if self.event_persisters:
            self._check_redis()
        deadline = time.monotonic() + timeout
        syn = self.state_dir / "synapse"
        shared = ["-c", str(syn / "homeserver.yaml")]
        nginx_dir = self.state_dir / "nginx"
        with self._lock:
            self._stopping = False
        try:
            self._spawn("main", [sys.executable, "-m", "synapse.app.homeserver", *shared])
            self._wait_http("main", f"http://127.0.0.1:{self._port('main')}/health", deadline)
            for name in self.worker_names:
                worker = ["-c", str(syn / "workers" / f"{name}.yaml")]
                self._spawn(name, [sys.executable, "-m", WORKER_APP, *shared, *worker])
            for name in self.worker_names:
                self._wait_http(name, f"http://127.0.0.1:{self._port(name)}/health", deadline)
            conf = ["-c", str(nginx_dir / "nginx.conf"), "-e", str(nginx_dir / "error.log")]
            self._spawn("nginx", [nginx, "-p", str(nginx_dir), *conf])
            self._wait_http("nginx", f"{self.homeserver_url}/_matrix/client/versions", deadline)
        except BaseException:
            self.stop()
            raise

    def _log_path(self, name: str) -> Path:
        if name == "main":
            return self.state_dir / "synapse" / "stdout.log"
        if name == "nginx":
            return self.state_dir / "nginx" / "stdout.log"
        return self.state_dir / "synapse" / "workers" / f"{name}.stdout.log"

    def _spawn(self, name: str, argv: list[str]) -> None:
        """Start one process of the stack, unless stop() has begun (start() runs in a thread
        for `alcove dev --workers`; Ctrl-C may stop the stack while it starts)."""
        env = synapse_env()  # alcove_synapse importable for every Synapse process
        with self._lock, self._log_path(name).open("ab") as out:
            if self._stopping:
                raise StartupError("the stack was stopped while starting")
            proc = subprocess.Popen(
                argv,
                cwd=self.state_dir / "synapse",
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches Alcove, which then stops these
            )
            if name == "main":
                self._process = proc
            else:
                self._children[name] = proc

    def _wait_http(self, name: str, url: str, deadline: float) -> None:
        proc = self._process if name == "main" else self._children[name]
        assert proc is not None
        while time.monotonic() < deadline and not self._stopping:
            if proc.poll() is not None:
                tail = self._log_path(name).read_text(errors="replace")[-3000:]
                raise StartupError(f"{name} exited with {proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback)
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise StartupError(f"{name} did not answer on {url} in time")

    def stop(self, timeout: float = 30.0) -> None:
        """nginx first, then the workers, then the main process (DevStack.stop)."""
        with self._lock:
            self._stopping = True
            children, self._children = self._children, {}
        for group in (["nginx"], [n for n in children if n != "nginx"]):
            procs = [children[n] for n in group if n in children]
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        with self._lock:
            super().stop(timeout)

    @property
    def running(self) -> bool:
        return super().running and all(p.poll() is None for p in self._children.values())


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def redis_subscribers(host: str, port: int, channel: str) -> int:
    """PUBSUB NUMSUB over a plain socket (RESP): how many clients listen on ``channel``."""
    parts = [b"PUBSUB", b"NUMSUB", channel.encode()]
    command = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection((host, port), timeout=3) as conn:
        conn.sendall(command)
        reply = b""
        while not reply.endswith(b"\r\n") or reply.count(b"\r\n") < 4:
            chunk = conn.recv(4096)
            if not chunk:
                break
            reply += chunk
    match = re.search(rb":(\d+)\r\n$", reply)
    if match is None:
        raise OSError(f"unexpected Redis reply {reply[:80]!r}")
    return int(match[1])


def process_table(stack: WorkerDevStack) -> str:
    procs = ", ".join(f"{name} ({pid})" for name, pid in stack.pids.items())
    return f"  Processes:  {procs}\n  (`alcove dev --workers` again reuses this state.)\n"


async def run_dev_workers(state_dir: Path) -> None:
    from .app import run_until_signalled

    stack_dev = WorkerDevStack(state_dir)
    config = stack_dev.prepare()
    print(
        f"Starting Synapse in workers: main, {stack_dev.event_persisters} event persisters, "
        f"an appservice pusher, a client worker, nginx (state in {state_dir}) ...",
        flush=True,
    )
    try:
        await asyncio.to_thread(stack_dev.start)
        stack = await stack_dev.bootstrap(config)
        config = load_config(stack_dev.config_path)
        print(element_instructions(stack), flush=True)
        print(process_table(stack_dev), flush=True)
        await run_until_signalled(config)
    finally:
        print("Stopping Synapse and nginx ...", flush=True)
        await asyncio.to_thread(stack_dev.stop)
