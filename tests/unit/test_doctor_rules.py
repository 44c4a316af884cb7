"""`alcove doctor` asks the homeserver whether Alcove's Synapse module is installed, for whom."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.config import Config
from bridge.doctor import RULES_STATUS_PATH, rules_module
from tests.support.builders import make_config


async def check_against(tmp_path: Path, answer: web.Response | None) -> tuple[Config, Any]:
    app = web.Application()
    if answer is not None:

        async def status(_request: web.Request) -> web.Response:
            return answer

        app.router.add_get(RULES_STATUS_PATH, status)
    server = TestServer(app)
    await server.start_server()
    try:
        config = make_config(tmp_path)
        config = replace(
            config,
            homeserver=replace(config.homeserver, address=str(server.make_url("/"))),
        )
        async with aiohttp.ClientSession() as session:
            return config, await rules_module(session, config)
    finally:
        await server.close()


async def test_module_answering_for_this_bot_is_ok(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    body = {
        "module": "alcove_synapse",
        "version": "0.1.0",
        "bot_user_id": config.bot_user_id,
        "client_prefix": config.appservice.client_prefix,
    }
    _, check = await check_against(tmp_path, web.json_response(body))
    assert check.ok and "installed" in check.detail


async def test_missing_module_is_a_warning_pointing_at_the_readme(tmp_path: Path) -> None:
    _, check = await check_against(tmp_path, None)
    assert not check.ok and check.warning
    assert "README" in check.detail


async def test_module_configured_for_another_bot_fails(tmp_path: Path) -> None:
    body = {"module": "alcove_synapse", "bot_user_id": "@other:x", "client_prefix": "c-"}
    _, check = await check_against(tmp_path, web.json_response(body))
    assert not check.ok and not check.warning
    assert "@other:x" in check.detail
