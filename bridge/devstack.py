"""A throwaway Synapse (SQLite, 127.0.0.1) wired to Alcove: for `alcove dev` and the tests.

prepare()  → state dir with homeserver.yaml, signing key, Alcove config and both registrations
start()    → Synapse subprocess from the installed package, waits for /versions
bootstrap()→ a dev admin (shared-secret registration), the bot registered and made server admin,
             the demo staff accounts; writes stack.json
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from ruamel.yaml import YAML

from . import notify_email
from .config import Config, load_config
from .errors import StartupError
from .registration import dump_yaml, outdated, write_registrations

log = logging.getLogger("alcove.devstack")

SERVER_NAME = "localhost"
DEV_ADMIN = "devadmin"


@dataclass(frozen=True)
class DevUser:
    localpart: str
    role: str
    displayname: str


DEFAULT_USERS = (DevUser("therapist", "therapist", "Dr Demo Therapist"),)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _synapse_rate_limits() -> dict[str, Any]:
    fast = {"per_second": 1000, "burst_count": 1000}
    return {
        "rc_message": fast,
        "rc_registration": fast,
        "rc_room_creation": fast,
        "rc_login": {"address": fast, "account": fast, "failed_attempts": fast},
        "rc_joins": {"local": fast, "remote": fast},
        "rc_joins_per_room": fast,
        "rc_invites": {"per_room": fast, "per_user": fast, "per_issuer": fast},
        "rc_admin_redaction": fast,
        "rc_3pid_validation": fast,
        "rc_media_create": fast,
        "rc_delayed_event_mgmt": fast,
        "rc_reports": fast,
    }


def rules_module_config(config: Config) -> dict[str, Any]:
    """The homeserver.yaml ``modules:`` entry for Alcove's Synapse module (README)."""
    return {
        "module": "alcove_synapse.AlcoveRules",
        "config": {
            "bot_user_id": config.bot_user_id,
            "client_prefix": config.appservice.client_prefix,
        },
    }


def synapse_env() -> dict[str, str]:
    """Synapse's environment: ours without Alcove's overrides, and alcove_synapse importable
    (it lives next to ``bridge``, in this checkout or in site-packages)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALCOVE__")}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def write_signing_key(path: Path) -> None:
    """The homeserver's signing key, written as Synapse's ``--generate-keys`` writes it (the same
    signedjson calls) without starting a second Synapse process just for that."""
    try:
        from signedjson.key import generate_signing_key, write_signing_keys
    except ImportError:  # a dependency of Synapse: without it there is no Synapse to run either
        raise StartupError(
            "The dev stack needs Synapse in this environment: pip install -e '.[dev]'"
        ) from None

    key_id = "a_" + "".join(secrets.choice(string.ascii_letters) for _ in range(4))
    with path.open("w") as f:
        write_signing_keys(f, (generate_signing_key(key_id),))


@dataclass
class DevStack:
    state_dir: Path
    users: tuple[DevUser, ...] = DEFAULT_USERS
    database_url: str | None = None
    rules_module: bool = True
    """Load Alcove's Synapse module (alcove_synapse), as the README advises for production."""
    encryption: bool = False
    """Alcove with ``encryption.enabled`` (and a registration asking for the extensions)."""
    smtp: tuple[str, int] | None = None
    """Where Synapse sends mail (clients' email notifications, password resets); by default
    127.0.0.1 and a port kept in dev-secrets.json (``smtp_port``), where nothing listens
    unless you start a mail sink there (README)."""
    mail_delay: str = "10m"
    """``email.notif_delay_before_mail``: how long a message waits unread before the mail."""
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Synapse runs with its own working directory: every path handed to it is absolute.
        self.state_dir = Path(self.state_dir).resolve()

    # ------------------------------------------------------------------ files

    @property
    def config_path(self) -> Path:
        return self.state_dir / "config.yaml"

    @property
    def hs_config_path(self) -> Path:
        return self.state_dir / "synapse" / "homeserver.yaml"

    @property
    def stack_path(self) -> Path:
        return self.state_dir / "stack.json"

    @property
    def secrets_path(self) -> Path:
        return self.state_dir / "dev-secrets.json"

    def prepare(self) -> Config:
        """Create the state dir on first use; reuse it afterwards (ports, tokens, accounts)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        syn = self.state_dir / "synapse"
        syn.mkdir(exist_ok=True)
        if not self.secrets_path.exists():
            dev: dict[str, Any] = {
                "hs_port": free_port(),
                "as_port": free_port(),
                "shared_secret": secrets.token_urlsafe(32),
                "passwords": {},
            }
            self.secrets_path.write_text(json.dumps(dev, indent=2))
            self.secrets_path.chmod(0o600)
        dev = self.dev_secrets
        dev.setdefault("smtp_port", free_port())  # state dirs from before issue 12 lack it
        for user in self.users:
            dev["passwords"].setdefault(user.localpart, secrets.token_urlsafe(12))
        # The HTTP API (added later than the rest: a state dir from before gets them now).
        dev.setdefault("api_port", free_port())
        dev.setdefault("api_token", secrets.token_urlsafe(32))
        dev.setdefault("calendar_token", secrets.token_urlsafe(32))
        self.secrets_path.write_text(json.dumps(dev, indent=2))
        self._write_alcove_config(dev)
        config = load_config(self.config_path, environ={}, need_tokens=False)
        if not config.appservice.registration.exists():
            write_registrations(config)
        elif outdated(config):  # a state dir from an older Alcove: same tokens, current form
            write_registrations(config, keep_tokens=True)
        config = load_config(self.config_path, environ={})
        self._write_synapse_config(dev, config)
        if not (syn / "signing.key").exists():
            write_signing_key(syn / "signing.key")
        return config

    @property
    def dev_secrets(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.secrets_path.read_text())
        return data

    @property
    def smtp_host(self) -> str:
        return self.smtp[0] if self.smtp else "127.0.0.1"

    @property
    def smtp_port(self) -> int:
        return self.smtp[1] if self.smtp else int(self.dev_secrets["smtp_port"])

    @property
    def homeserver_url(self) -> str:
        return f"http://127.0.0.1:{self.dev_secrets['hs_port']}"

    def _write_alcove_config(self, dev: dict[str, Any]) -> None:
        config = {
            "homeserver": {
                "address": f"http://127.0.0.1:{dev['hs_port']}",
                "domain": SERVER_NAME,
                "synapse_config": "synapse/homeserver.yaml",
            },
            "appservice": {
                "id": "alcove",
                "address": f"http://127.0.0.1:{dev['as_port']}",
                "hostname": "127.0.0.1",
                "port": dev["as_port"],
                "bot_localpart": "alcove",
                "bot_displayname": "Alcove",
            },
            "database": {"url": self.database_url or "sqlite:alcove.db"},
            "practice": {"name": "Demo Practice", "timezone": "Europe/London"},
            "staff": [
                {
                    "user_id": f"@{u.localpart}:{SERVER_NAME}",
                    "displayname": u.displayname,
                    "role": u.role,
                }
                for u in self.users
            ],
            "logging": {"level": "INFO", "file": "alcove.log"},
            # Nothing of a session on disk: the homeserver's SQLite is VACUUMed after a purge.
            "sessions": {"vacuum_homeserver": True},
            "encryption": {"enabled": self.encryption},
            "api": {
                "enabled": True,
                "host": "127.0.0.1",
                "port": dev["api_port"],
                "tokens": [
                    {
                        "name": "dev",
                        "token": dev["api_token"],
                        "scopes": ["clients:write", "bookings:write", "read"],
                    }
                ],
                "calendars": [
                    {"therapist": f"@{u.localpart}:{SERVER_NAME}", "token": dev["calendar_token"]}
                    for u in self.users[:1]
                    if u.role == "therapist"
                ],
            },
        }
        self.config_path.write_text(
            "# Generated by `alcove dev` for a throwaway homeserver. Not for production.\n"
            + dump_yaml(config)
        )

    def _write_synapse_config(self, dev: dict[str, Any], config: Config) -> None:
        syn = self.state_dir / "synapse"
        log_config = {
            "version": 1,
            "formatters": {"f": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "filename": str(syn / "homeserver.log"),
                    "formatter": "f",
                }
            },
            # WARNING, not INFO: Synapse logs /search terms and request paths at INFO.
            "root": {"level": "WARNING", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }
        (syn / "log.yaml").write_text(dump_yaml(log_config))
        hs: dict[str, Any] = {
            "server_name": SERVER_NAME,
            "public_baseurl": f"http://127.0.0.1:{dev['hs_port']}/",
            "pid_file": str(syn / "homeserver.pid"),
            "listeners": [
                {
                    "port": dev["hs_port"],
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {"name": "sqlite3", "args": {"database": str(syn / "homeserver.db")}},
            "log_config": str(syn / "log.yaml"),
            "media_store_path": str(syn / "media_store"),
            "signing_key_path": str(syn / "signing.key"),
            "report_stats": False,
            "registration_shared_secret": dev["shared_secret"],
            "macaroon_secret_key": hashlib.sha256(dev["shared_secret"].encode() + b"m").hexdigest(),
            "form_secret": hashlib.sha256(dev["shared_secret"].encode() + b"f").hexdigest(),
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "enable_registration": False,
            "url_preview_enabled": False,
            "presence": {"enabled": False},
            "federation_domain_whitelist": [],
            "app_service_config_files": [
                str(config.appservice.registration),
                str(config.appservice.doublepuppet_registration),
            ],
            "default_room_version": "12",
            # Text-only sessions (README): redacted content is not kept, push notifications
            # carry no text. (Its SQLite file: Alcove VACUUMs it after each purge.)
            # Short, not null: null turns Synapse's censoring of redacted events off.
            "redaction_retention_period": "5m",
            "push": {"include_content": False},
            # The appservice encryption extensions (issue 11): to-device events (MSC2409),
            # device lists and one-time-key counts (MSC3202) pushed in transactions, to an
            # appservice whose registration asks for them (encryption.enabled). Device
            # masquerading (`?device_id=` for an appservice) is stable in Synapse >= 1.141;
            # msc3202_device_masquerading is for older ones.
            "experimental_features": {
                # `!restore`: a server admin (the bot) reads a redacted event's content while
                # the homeserver keeps it (redaction_retention_period).
                "msc2815_enabled": True,
                "msc2409_to_device_messages_enabled": True,
                "msc3202_transaction_extensions": True,
                "msc3202_device_masquerading": True,
            },
            **_synapse_rate_limits(),
            # Clients' email notifications with Alcove's templates (README, issue 12).
            **notify_email.homeserver_settings(
                smtp_host=self.smtp_host,
                smtp_port=self.smtp_port,
                notif_from="Demo Practice <noreply@localhost>",
                delay=self.mail_delay,
                app_name="Demo Practice",
            ),
        }
        hs["email"]["enable_tls"] = False  # a local mail sink speaks plain SMTP
        if self.rules_module:
            hs["modules"] = [rules_module_config(config)]
        hs.update(self._synapse_overrides(dev))
        self.hs_config_path.write_text(
            "# Generated by Alcove's dev stack: a throwaway homeserver on 127.0.0.1.\n"
            + dump_yaml(hs)
        )

    def _synapse_overrides(self, dev: dict[str, Any]) -> dict[str, Any]:
        """Keys replacing those of homeserver.yaml (the worker-mode stack's database,
        listeners, Redis and workers); none for the monolithic stack."""
        return {}

    # ------------------------------------------------------------------ process

    def start(self, timeout: float = 120.0) -> None:
        syn = self.state_dir / "synapse"
        port = self.dev_secrets["hs_port"]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                raise StartupError(
                    f"Port {port} of this dev stack is already in use: is another `alcove dev` "
                    f"running with {self.state_dir}? Stop it, or pass another --state-dir."
                )
        out = (syn / "stdout.log").open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.hs_config_path)],
            cwd=syn,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=synapse_env(),
            start_new_session=True,
        )
        out.close()
        deadline = time.monotonic() + timeout
        url = f"{self.homeserver_url}/_matrix/client/versions"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = (syn / "stdout.log").read_text(errors="replace")[-3000:]
                raise StartupError(f"Synapse exited with {self._process.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback)
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise StartupError(f"Synapse did not answer on {url} within {timeout:.0f}s")

    def stop(self, timeout: float = 30.0) -> None:
        proc = self._process
        if proc is None or proc.poll() is not None:
            self._process = None
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # ------------------------------------------------------------------ accounts

    async def bootstrap(self, config: Config) -> dict[str, Any]:
        """Idempotent: dev admin, bot registered and admin, staff accounts; writes stack.json."""
        dev: dict[str, Any] = self.dev_secrets
        async with aiohttp.ClientSession(base_url=self.homeserver_url) as http:
            admin_token = await self._admin_token(http, dev)
            auth = {"Authorization": f"Bearer {admin_token}"}
            as_auth = {"Authorization": f"Bearer {config.appservice.as_token}"}
            async with http.post(
                "/_matrix/client/v3/register",
                json={
                    "type": "m.login.application_service",
                    "username": config.appservice.bot_localpart,
                    "inhibit_login": True,
                },
                headers=as_auth,
            ) as resp:
                if resp.status not in (200, 400):
                    raise StartupError(
                        f"Registering the bot failed: {resp.status} {await resp.text()}"
                    )
            async with http.put(
                f"/_synapse/admin/v2/users/{quote(config.bot_user_id)}",
                json={"admin": True},
                headers=auth,
            ) as resp:
                if resp.status not in (200, 201):
                    raise StartupError(
                        f"Making the bot admin failed: {resp.status} {await resp.text()}"
                    )
            users = []
            for user in self.users:
                user_id = f"@{user.localpart}:{SERVER_NAME}"
                password = dev["passwords"][user.localpart]
                async with http.put(
                    f"/_synapse/admin/v2/users/{quote(user_id)}",
                    json={
                        "password": password,
                        "logout_devices": False,  # a restart must not sign staff out
                        "displayname": user.displayname,
                        "admin": False,
                    },
                    headers=auth,
                ) as resp:
                    if resp.status not in (200, 201):
                        raise StartupError(
                            f"Creating {user_id} failed: {resp.status} {await resp.text()}"
                        )
                users.append({"user_id": user_id, "password": password, "role": user.role})
        stack = {
            "homeserver_url": self.homeserver_url,
            "server_name": SERVER_NAME,
            "bot_user_id": config.bot_user_id,
            "users": users,
            "api_url": f"http://127.0.0.1:{dev['api_port']}/_alcove/v1",
            "api_token": dev["api_token"],
            "calendar_url": f"http://127.0.0.1:{dev['api_port']}/_alcove/v1/calendar/"
            f"{dev['calendar_token']}",
        }
        self.stack_path.write_text(json.dumps(stack, indent=2))
        self.stack_path.chmod(0o600)
        return stack

    async def _admin_token(self, http: aiohttp.ClientSession, dev: dict[str, Any]) -> str:
        if dev.get("admin_token"):
            async with http.get(
                "/_matrix/client/v3/account/whoami",
                headers={"Authorization": f"Bearer {dev['admin_token']}"},
            ) as resp:
                if resp.status == 200:
                    return str(dev["admin_token"])
        async with http.get("/_synapse/admin/v1/register") as resp:
            nonce = (await resp.json())["nonce"]
        password = secrets.token_urlsafe(16)
        mac = hmac.new(dev["shared_secret"].encode(), digestmod=hashlib.sha1)
        mac.update(f"{nonce}\x00{DEV_ADMIN}\x00{password}\x00admin".encode())
        async with http.post(
            "/_synapse/admin/v1/register",
            json={
                "nonce": nonce,
                "username": DEV_ADMIN,
                "password": password,
                "admin": True,
                "mac": mac.hexdigest(),
            },
        ) as resp:
            body = await resp.json()
            if resp.status == 200:
                token = str(body["access_token"])
            elif body.get("errcode") == "M_USER_IN_USE":
                token = await self._login_admin(http, dev)
            else:
                raise StartupError(f"Creating the dev admin failed: {resp.status} {body}")
        if resp.status == 200:
            dev["admin_password"] = password
        dev["admin_token"] = token
        self.secrets_path.write_text(json.dumps(dev, indent=2))
        return token

    async def _login_admin(self, http: aiohttp.ClientSession, dev: dict[str, Any]) -> str:
        async with http.post(
            "/_matrix/client/v3/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": DEV_ADMIN},
                "password": dev.get("admin_password", ""),
            },
        ) as resp:
            if resp.status != 200:
                raise StartupError(
                    f"The dev admin exists but cannot log in; delete {self.state_dir} "
                    "to start afresh"
                )
            return str((await resp.json())["access_token"])


def element_instructions(stack: dict[str, Any]) -> str:
    lines = [
        "",
        "Alcove dev stack is running.",
        f"  Homeserver: {stack['homeserver_url']}   (server name: {stack['server_name']})",
        f"  Bot:        {stack['bot_user_id']}",
        "",
        "Log in with Element (Desktop, or Web served from this machine): choose 'Edit' next to",
        f"the homeserver, enter {stack['homeserver_url']}, then sign in as:",
    ]
    for user in stack["users"]:
        lines.append(f"  {user['user_id']:<28} password {user['password']}   ({user['role']})")
    lines += [
        "",
        "Your management room with the bot, 'Alcove', is already in your room list: send",
        "!ping or !help there.",
        "",
        f"HTTP API: {stack['api_url']}  (token {stack['api_token']}; see README, 'HTTP API'):",
        f"  curl -H 'Authorization: Bearer {stack['api_token']}' "
        f"'{stack['api_url']}/clients?therapist={stack['users'][0]['user_id']}'",
        f"Calendar feed of {stack['users'][0]['user_id']}: {stack['calendar_url']}",
        "Ctrl-C stops Alcove and Synapse; running `alcove dev` again reuses the same state.",
        "",
    ]
    return "\n".join(lines)


async def run_dev(
    state_dir: Path,
    encryption: bool = False,
    smtp: tuple[str, int] | None = None,
    mail_delay: str = "10m",
) -> None:
    from .app import run_until_signalled

    stack_dev = DevStack(state_dir, encryption=encryption, smtp=smtp, mail_delay=mail_delay)
    config = stack_dev.prepare()
    print(f"Starting Synapse (state in {state_dir}) ...", flush=True)
    stack_dev.start()
    try:
        stack = await stack_dev.bootstrap(config)
        config = load_config(stack_dev.config_path)
        print(element_instructions(stack), flush=True)
        await run_until_signalled(config)
    finally:
        print("Stopping Synapse ...", flush=True)
        await asyncio.to_thread(stack_dev.stop)


def read_yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())
