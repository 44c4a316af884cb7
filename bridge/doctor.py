"""`alcove doctor`: run every start-up check, report each with what to do, never stop early."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp

from .clock import SystemClock
from .config import Config
from .db.database import open_database, redact_url
from .errors import AlcoveError
from .matrix.mautrix_gateway import MautrixGateway
from .metrics import Metrics
from .registration import read_doublepuppet_token
from .startup import (
    Check,
    check_admin,
    check_token,
    ping,
    wait_for_homeserver,
)


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
    return checks


async def _ping(gateway: MautrixGateway, config: Config) -> None:
    await ping(gateway, config)


def _with_timeout(config: Config, timeout: float) -> Config:
    from dataclasses import replace

    return replace(config, homeserver=replace(config.homeserver, startup_timeout=timeout))


def render(checks: list[Check]) -> str:
    lines = []
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        lines.append(f"[{mark}] {check.name}" + (f": {check.detail}" if check.detail else ""))
    bad = sum(not c.ok for c in checks)
    lines.append(
        "All checks passed."
        if not bad
        else f"{bad} check(s) failed: fix them, then run doctor again."
    )
    return "\n".join(lines)
