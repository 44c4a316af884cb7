"""schemathesis fuzzes the HTTP API from its OpenAPI document, against a real Alcove on a real
Synapse (both databases): valid and invalid requests for every operation. No answer may be a
5xx, every answer must match the document (status, content type, headers, body schema), invalid
data must be refused with a 4xx, and a refused request may leave nothing behind (no client,
room or session rows more than before it). Bounded: a fixed number of examples per operation
and mode (derandomized, so CI runs the same cases every time)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import hypothesis.strategies as st
import schemathesis
from hypothesis import HealthCheck, given, settings
from mautrix.util.async_db import Database
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from bridge.devstack import DevStack
from tests.support.alcove_process import AlcoveProcess
from tests.support.scenario import THERAPIST

EXAMPLES = 8
"""Per operation and mode; with 10 operations and two modes, 160 requests per run."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
TABLES = ("client", "conv_room", "text_session", "api_request")


async def _counts(db: Database) -> dict[str, Any]:
    counts: dict[str, Any] = {
        t: int(await db.fetchval(f"SELECT COUNT(*) FROM {t}")) for t in TABLES
    }
    counts["clients"] = [r["user_id"] for r in await db.fetch("SELECT user_id FROM client")]
    counts["sessions"] = [int(r["id"]) for r in await db.fetch("SELECT id FROM text_session")]
    return counts


def steer(case: schemathesis.Case[Any], known: dict[str, Any], calendar: str, draw: int) -> None:
    """Half the valid cases are pointed at what exists (the configured therapist, a client or
    session Alcove has, the calendar's token, a start in the future), so that they get past the
    lookups into the services; the other values stay as generated."""
    body, params, query = case.body, case.path_parameters or {}, case.query or {}
    if isinstance(body, dict):
        if "therapist" in body:
            body["therapist"] = THERAPIST
        if "start" in body:
            body["start"] = (datetime.now(UTC) + timedelta(days=1 + draw % 30)).isoformat()
        if body.get("client_id") is not None and known["clients"]:
            body["client_id"] = known["clients"][draw % len(known["clients"])]
    if "therapist" in query:
        query["therapist"] = THERAPIST
    if "client_id" in params and known["clients"]:
        params["client_id"] = known["clients"][draw % len(known["clients"])]
    if "booking_id" in params and known["sessions"]:
        params["booking_id"] = known["sessions"][draw % len(known["sessions"])]
    if "token" in params:
        params["token"] = calendar


async def test_schemathesis_finds_nothing(
    alcove: AlcoveProcess, synapse: DevStack, alcove_db: Database, http: aiohttp.ClientSession
) -> None:
    dev = synapse.dev_secrets
    base = f"http://127.0.0.1:{dev['api_port']}"
    async with http.get(f"{base}/_alcove/v1/openapi.json") as resp:
        document = await resp.json()
    schema = schemathesis.openapi.from_dict(document)
    headers = {"Authorization": f"Bearer {dev['api_token']}"}
    loop = asyncio.get_running_loop()
    stats: Counter[str] = Counter()

    def on_loop(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
        # The FaultProxy between Alcove and Synapse runs on this test's loop: the fuzzing runs
        # in a thread (schemathesis calls are blocking) and asks the loop for the database.
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    def run(
        operation: schemathesis.APIOperation[Any, Any, Any, Any], mode: schemathesis.GenerationMode
    ) -> None:
        positive = mode == schemathesis.GenerationMode.POSITIVE

        @given(
            case=operation.as_strategy(generation_mode=mode),
            real=st.booleans(),
            draw=st.integers(0, 1000),
        )
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def one(case: schemathesis.Case[Any], real: bool, draw: int) -> None:
            before = on_loop(_counts(alcove_db))
            if real and positive:
                steer(case, before, dev["calendar_token"], draw)
            response = case.call_and_validate(
                base_url=base, headers=headers, checks=CHECKS, timeout=30
            )
            stats["cases"] += 1
            stats[f"{response.status_code // 100}xx"] += 1
            stats[f"{case.method} {case.path} {mode.name[:3]} {response.status_code}"] += 1
            if 400 <= response.status_code < 500:
                after = on_loop(_counts(alcove_db))
                assert after == before, (case.method, case.path, response.text, after)

        one()

    def fuzz() -> None:
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result
            stats["operations"] += 1
            for mode in (
                schemathesis.GenerationMode.POSITIVE,
                schemathesis.GenerationMode.NEGATIVE,
            ):
                run(result.ok(), mode)

    started = time.monotonic()
    await asyncio.to_thread(fuzz)
    stats["seconds"] = round(time.monotonic() - started)
    print("schemathesis:", json.dumps(dict(stats)))  # the figures, with pytest -s
    assert stats["operations"] == sum(len(ops) for ops in document["paths"].values()) == 10
    assert stats["2xx"] > 0 and stats["4xx"] > 0
    assert stats["5xx"] == 0
