"""A blast to N clients (default 500) through Alcove, against a baseline of the same N messages
sent with plain concurrent appservice requests into the same rooms, in the same run.

Alcove:   `!blast all <text>` → the therapist sees "Delivered to N of N" (every message accepted
          by Synapse, sent through the durable outbox, one row per client).
Baseline: N PUT /send as the therapist (double-puppet token), 32 at a time, no persistence.
Setup (not timed): N managed clients with their 1:1 rooms, created with `!client add`.

Usage: python -m bench.blast [--clients 500]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sqlite3
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp

from bridge.config import load_config
from bridge.devstack import DevStack, DevUser
from bridge.matrix.outbox import DEVICE_ID
from bridge.registration import read_doublepuppet_token
from tests.support.alcove_process import AlcoveProcess
from tests.support.matrix_client import MatrixUser
from tests.support.scenario import from_bot, management_room, parse_added

USERS = (DevUser("therapist", "therapist", "Dr Bench"),)
THERAPIST = "@therapist:localhost"


async def baseline(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    rooms: list[str],
    device_id: str | None = None,
) -> float:
    """N sends, 32 at a time. With ``device_id``, the same requests Alcove makes for crash-safe
    dedupe (Synapse then stores each transaction id with the device)."""
    slots = asyncio.Semaphore(32)
    tag = secrets.token_hex(4)

    async def one(i: int, room: str) -> None:
        path = f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/base-{tag}-{i}"
        async with (
            slots,
            http.put(
                url + path,
                params={"user_id": THERAPIST, **({"device_id": device_id} if device_id else {})},
                json={"msgtype": "m.text", "body": "Baseline message"},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp,
        ):
            if resp.status != 200:
                raise RuntimeError(f"baseline send failed: {resp.status} {await resp.text()}")

    start = time.perf_counter()
    await asyncio.gather(*(one(i, r) for i, r in enumerate(rooms)))
    return time.perf_counter() - start


async def measure(clients: int, state: Path) -> None:
    stack = DevStack(state, users=USERS)
    config = stack.prepare()
    stack.start()
    alcove = None
    try:
        await stack.bootstrap(config)
        config = load_config(stack.config_path, environ={})
        alcove = AlcoveProcess(
            stack.config_path,
            stack.homeserver_url,
            f"sqlite:{state / 'alcove.db'}",
            config.appservice.port,
            state / "alcove.log",
            log_level="INFO",
        )
        await alcove.start()
        url = stack.homeserver_url
        async with aiohttp.ClientSession() as http:
            therapist = await MatrixUser(http, url, THERAPIST).login(
                stack.dev_secrets["passwords"]["therapist"]
            )
            mgmt = await management_room(therapist)
            t0 = time.perf_counter()
            rooms: list[str] = []
            for batch in range(0, clients, 50):
                names = [f"Bench{i:04d} Client" for i in range(batch, min(clients, batch + 50))]
                for name in names:
                    await therapist.send_text(mgmt, f"!client add {name}")
                for name in names:
                    reply = await therapist.wait_for(from_bot(mgmt, f"Added {name} as"), 300)
                    rooms.append(parse_added(reply["content"]["body"]).room_id)
            print(f"setup: {clients} clients with their rooms in {time.perf_counter() - t0:.0f} s")
            token = read_doublepuppet_token(config.appservice.doublepuppet_registration)
            assert token is not None
            # Waiting for the report must not load Synapse more than the baselines' (absent)
            # observer: a sync filtered to the management room, not to all 500+ rooms.
            observer = MatrixUser(http, url, THERAPIST, only_rooms=[mgmt])
            await observer.login(stack.dev_secrets["passwords"]["therapist"])
            base1 = await baseline(http, url, token, rooms)
            start = time.perf_counter()
            await therapist.send_text(mgmt, "!blast all Bench blast")
            report = await observer.wait_for(
                from_bot(mgmt, "Delivered to"), timeout=1800, fresh=True
            )
            blast = time.perf_counter() - start
            base2 = await baseline(http, url, token, rooms)
            dev = await baseline(http, url, token, rooms, device_id=DEVICE_ID)
        with sqlite3.connect(state / "alcove.db") as db:
            first, last = db.execute(
                "SELECT MIN(created_at), MAX(sent_at) FROM outbox WHERE key LIKE 'blast:%'"
            ).fetchone()
        inside = (last - first) / 1000
        notable = [
            line
            for line in (state / "alcove.log").read_text().splitlines()
            if " WARNING " in line or " ERROR " in line or "Catching up" in line
        ]
        print(f"Alcove log: {len(notable)} warnings/errors/catch-ups during the run")
        for line in notable[:10]:
            print("   ", line[:160])
        print(f"Alcove report: {report['content']['body'].splitlines()[0]}")
        base = (base1 + base2) / 2
        print(
            f"baseline: {clients} plain concurrent sends in {base1:.2f} s and {base2:.2f} s "
            f"({clients / base:.0f} msg/s)"
        )
        print(f"Alcove blast: {clients} deliveries in {blast:.2f} s ({clients / blast:.0f} msg/s)")
        print(f"throughput ratio Alcove / baseline: {base / blast:.2f}x (target >= 0.8x)")
        print(
            f"inside Alcove, first delivery written -> last accepted: {inside:.2f} s "
            f"({clients / inside:.0f} msg/s); the rest is the command and its report"
        )
        print(
            f"same sends with a device_id (Synapse stores txn ids for dedupe): {dev:.2f} s "
            f"({clients / dev:.0f} msg/s); Alcove / that: {dev / blast:.2f}x"
        )
    finally:
        if alcove is not None:
            alcove.terminate()
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alcove-bench-") as tmp:
        asyncio.run(measure(args.clients, Path(tmp)))


if __name__ == "__main__":
    main()
