"""`alcove doctor`: run every start-up check, report each with what to do, never stop early."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from .clock import SystemClock
from .config import Config
from .db.database import open_database, redact_url
from .errors import AlcoveError
from .matrix.mautrix_gateway import MautrixGateway
from .metrics import Metrics
from .notify_email import check_email_notifications
from .registration import UPGRADE_ADVICE, outdated, read_doublepuppet_token
from .startup import (
    Check,
    check_admin,
    check_token,
    ping,
    wait_for_homeserver,
)
from .synapse_checks import check_encryption_extensions, check_restore, check_synapse_config


async def run_doctor(config: Config, web_timeout: float = 5.0) -> list[Check]:
    checks: list[Check] = []
    try:
        db = await open_database(config.database)
        await db.stop()
        checks.append(Check("database", True, redact_url(config.database.url)))
    except AlcoveError as e:
        checks.append(Check("database", False, str(e)))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        gateway = MautrixGateway(
            session,
            config.homeserver.address,
            config.appservice.as_token,
            config.bot_user_id,
            Metrics(),
            doublepuppet_token=read_doublepuppet_token(config.appservice.doublepuppet_registration),
            client_namespace_prefix=f"@{config.appservice.client_prefix}",
        )
        quick = _with_timeout(config, web_timeout)
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("homeserver reachable", lambda: wait_for_homeserver(gateway, quick, SystemClock())),
            ("as_token accepted (whoami)", lambda: check_token(gateway, config)),
            ("bot is a server admin", lambda: check_admin(gateway, config)),
            ("Synapse reaches Alcove (appservice ping)", lambda: _ping(gateway, config)),
        ]
        for name, step in steps:
            try:
                await step()
                checks.append(Check(name, True, ""))
            except AlcoveError as e:
                checks.append(Check(name, False, str(e)))
                if name == "homeserver reachable":
                    break
        checks.extend(synapse_settings(config))
        checks.append(await rules_module(session, config))
        dp = read_doublepuppet_token(config.appservice.doublepuppet_registration)
        if dp is None:
            checks.append(
                Check(
                    "double-puppet registration",
                    False,
                    f"{config.appservice.doublepuppet_registration} is missing: messages on a "
                    "therapist's behalf will come from the bot. Run generate-registration and "
                    "add the file to app_service_config_files.",
                )
            )
        else:
            checks.append(Check("double-puppet registration", True, "installed"))
        checks.append(registration_current(config))
    return checks


def registration_current(config: Config) -> Check:
    problems = outdated(config)
    if not problems:
        return Check("registration files current", True, "")
    return Check(
        "registration files current", False, "; ".join(problems) + ". " + UPGRADE_ADVICE, True
    )


RULES_STATUS_PATH = "/_synapse/client/alcove/rules"  # served by alcove_synapse.StatusResource
RULES_NAME = "homeserver module alcove_synapse (refuses what Alcove would otherwise repair)"


async def rules_module(session: aiohttp.ClientSession, config: Config) -> Check:
    """Asks the homeserver: the module answers at its status path with the bot it serves."""
    url = config.homeserver.address.rstrip("/") + RULES_STATUS_PATH
    try:
        async with session.get(url) as resp:
            status = resp.status
            body = await resp.json(content_type=None) if status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        return Check(RULES_NAME, False, f"could not ask the homeserver ({e})", warning=True)
    if status != 200 or not isinstance(body, dict) or body.get("module") != "alcove_synapse":
        return Check(
            RULES_NAME,
            False,
            "not installed (optional): without it clients can rename themselves, create rooms "
            "and join rooms Alcove does not govern until Alcove undoes it. See the README for "
            "the lines to add to homeserver.yaml.",
            warning=True,
        )
    wanted = (config.bot_user_id, config.appservice.client_prefix)
    if (body.get("bot_user_id"), body.get("client_prefix")) != wanted:
        return Check(
            RULES_NAME,
            False,
            f"installed for bot {body.get('bot_user_id')!r} and client prefix "
            f"{body.get('client_prefix')!r}, but Alcove is {wanted[0]!r} with {wanted[1]!r}: "
            "fix the module's config in homeserver.yaml.",
        )
    return Check(RULES_NAME, True, f"installed (version {body.get('version')})")


def synapse_settings(config: Config) -> list[Check]:
    """The homeserver settings text-only sessions rely on (needs homeserver.synapse_config)."""
    path = config.homeserver.synapse_config
    if path is None:
        return [
            Check(
                "homeserver settings for text-only sessions",
                False,
                "set homeserver.synapse_config to the path of homeserver.yaml so doctor can check "
                "redaction retention, push content, URL previews, logging and vacuuming (README).",
                warning=True,
            )
        ]
    try:
        hs = YAML(typ="safe").load(path.read_text()) or {}
    except (OSError, YAMLError) as e:
        return [
            Check("homeserver settings for text-only sessions", False, f"cannot read {path}: {e}")
        ]
    log_config = None
    if hs.get("log_config"):
        try:
            log_config = YAML(typ="safe").load((path.parent / str(hs["log_config"])).read_text())
        except (OSError, YAMLError):
            log_config = None
    checks = check_synapse_config(hs, log_config)
    checks.append(check_email_notifications(hs, path.parent))
    checks.append(check_restore(hs))
    if config.encryption.enabled:
        checks.append(check_encryption_extensions(hs))
    return checks


async def _ping(gateway: MautrixGateway, config: Config) -> None:
    await ping(gateway, config)


def _with_timeout(config: Config, timeout: float) -> Config:
    from dataclasses import replace

    return replace(config, homeserver=replace(config.homeserver, startup_timeout=timeout))


def failures(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.ok and not c.warning]


def render(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        mark = "ok  " if check.ok else ("warn" if check.warning else "FAIL")
        lines.append(f"[{mark}] {check.name}" + (f": {check.detail}" if check.detail else ""))
    bad = len(failures(checks))
    lines.append(
        "All checks passed."
        if not bad
        else f"{bad} check(s) failed: fix them, then run doctor again."
    )
    return "\n".join(lines)
