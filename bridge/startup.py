"""Start-up checks against the homeserver, each failing with what to do about it.

wait for the homeserver → whoami (is the as_token known?) → server admin? → appservice ping
(Synapse reaches us and stops any backoff) → bot display name."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from .clock import Clock
from .config import Config
from .errors import StartupError
from .matrix.gateway import PermanentError, TemporaryError
from .matrix.mautrix_gateway import MautrixGateway
from .registration import UPGRADE_ADVICE, outdated

log = logging.getLogger("alcove.startup")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # advice that cannot be verified: shown, but does not fail doctor


def token_rejected_message(config: Config) -> str:
    path = config.appservice.registration
    return (
        "The homeserver does not accept Alcove's as_token. Is registration.yaml listed in "
        f"app_service_config_files in homeserver.yaml (this Alcove uses {path}), and was "
        "Synapse restarted after it was generated?"
    )


def not_admin_message(config: Config) -> str:
    bot = config.bot_user_id
    return (
        f"The bot {bot} is not a server admin; Alcove needs that to create client accounts "
        "and purge session rooms. Make it one with the admin API as an existing admin: "
        f'PUT /_synapse/admin/v2/users/{bot} {{"admin": true}}, or in Synapse\'s database: '
        f"UPDATE users SET admin = 1 WHERE name = '{bot}';"
    )


async def wait_for_homeserver(gateway: MautrixGateway, config: Config, clock: Clock) -> None:
    deadline = clock.monotonic() + config.homeserver.startup_timeout
    delay = 0.25
    while True:
        try:
            await gateway.versions()
            return
        except TemporaryError as e:
            if clock.monotonic() >= deadline:
                raise StartupError(
                    f"Cannot reach the homeserver at {config.homeserver.address} ({e}). Is "
                    "Synapse running, and is homeserver.address in the config right?"
                ) from None
            log.info("Waiting for the homeserver at %s (%s)", config.homeserver.address, e)
        except PermanentError as e:
            if e.status in (401, 403):
                return  # it answered; the token is checked next, with a better message
            raise StartupError(
                f"{config.homeserver.address} answered /versions with {e.status}: is it a Matrix "
                "homeserver's client API address?"
            ) from None
        await clock.sleep(delay)
        delay = min(delay * 2, 5.0)


async def check_token(gateway: MautrixGateway, config: Config) -> None:
    try:
        user_id = await gateway.whoami()
    except PermanentError as e:
        if e.status in (401, 403):
            raise StartupError(token_rejected_message(config)) from None
        raise StartupError(f"whoami failed with {e.status} {e.errcode}: {e}") from None
    if user_id != config.bot_user_id:
        raise StartupError(
            f"The as_token belongs to {user_id}, not {config.bot_user_id}: "
            "appservice.bot_localpart and homeserver.domain must match the registration."
        )


async def check_admin(gateway: MautrixGateway, config: Config) -> None:
    try:
        await gateway.ensure_registered(config.appservice.bot_localpart)
    except PermanentError as e:
        raise StartupError(
            f"Could not register the bot account {config.bot_user_id}: {e}"
        ) from None
    admin = await gateway.is_server_admin(config.bot_user_id)
    if admin is False:
        raise StartupError(not_admin_message(config))
    if admin is None:
        log.warning("Could not check whether %s is a server admin", config.bot_user_id)


async def ping(gateway: MautrixGateway, config: Config) -> float:
    """Ask Synapse to push to us now; returns its measured round trip in ms."""
    try:
        result = await gateway.ping(config.appservice.id, f"alcove-ping-{secrets.token_hex(4)}")
    except PermanentError as e:
        if e.errcode == "M_CONNECTION_FAILED" or e.status == 502:
            raise StartupError(
                f"Synapse cannot reach Alcove at {config.appservice.address} ({e}). Is "
                "appservice.address reachable from the homeserver, and does it match the url in "
                "registration.yaml?"
            ) from None
        if e.errcode == "M_BAD_STATUS":
            raise StartupError(
                "Synapse reached Alcove but its hs_token was refused: Synapse still has an old "
                "registration.yaml. Restart Synapse so it reads the current one."
            ) from None
        if e.errcode == "M_FORBIDDEN":
            raise StartupError(
                f"Synapse refused the ping: appservice.id {config.appservice.id!r} must match the "
                "id in registration.yaml."
            ) from None
        raise StartupError(f"Appservice ping failed: {e.status} {e.errcode} {e}") from None
    return float(result.get("duration_ms", 0))


async def set_bot_profile(gateway: MautrixGateway, config: Config) -> None:
    current = await gateway.get_displayname(config.bot_user_id)
    if current != config.appservice.bot_displayname:
        await gateway.set_displayname(config.bot_user_id, config.appservice.bot_displayname)


async def ping_with_retries(
    gateway: MautrixGateway, config: Config, clock: Clock, attempts: int = 5
) -> float | None:
    """The ping only makes Synapse retry sooner. A 5xx from Synapse (e.g. while it still has a
    transaction in flight to an Alcove that was killed) is retried, then tolerated."""
    delay = 0.5
    for attempt in range(1, attempts + 1):
        try:
            return await ping(gateway, config)
        except TemporaryError as e:
            if attempt == attempts:
                log.warning("Appservice ping kept failing (%s); continuing without it", e)
                return None
            log.info("Appservice ping failed (%s); retrying in %.1fs", e, delay)
            await clock.sleep(delay)
            delay *= 2
    return None


async def run_startup(gateway: MautrixGateway, config: Config, clock: Clock) -> None:
    try:
        await _run_startup(gateway, config, clock)
    except TemporaryError as e:
        raise StartupError(
            f"The homeserver failed during start-up checks ({e}). Check that Synapse is "
            "healthy (its log says why), then start Alcove again."
        ) from None


def warn_outdated_registration(config: Config) -> list[str]:
    problems = outdated(config)
    for problem in problems:
        log.warning("%s. %s", problem, UPGRADE_ADVICE)
    return problems


async def _run_startup(gateway: MautrixGateway, config: Config, clock: Clock) -> None:
    warn_outdated_registration(config)
    await wait_for_homeserver(gateway, config, clock)
    await check_token(gateway, config)
    await check_admin(gateway, config)
    duration = await ping_with_retries(gateway, config, clock)
    if duration is not None:
        log.info("Appservice ping OK (Synapse → Alcove in %.0f ms)", duration)
    try:
        await set_bot_profile(gateway, config)
    except (PermanentError, TemporaryError) as e:
        log.warning("Could not set the bot's display name: %s", e)
