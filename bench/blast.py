"""A blast to N clients (default 500) through Alcove, against a baseline of the same N messages
sent with plain concurrent appservice requests into the same rooms, in the same run.

Alcove:   `!blast all <text>` → the therapist sees "Delivered to N of N" (every message accepted
          by Synapse, sent through the durable outbox, one row per client).
Baseline: N PUT /send as the therapist (double-puppet token), 32 at a time, no persistence.
Setup (not timed): N managed clients with their 1:1 rooms, created with `!client add`.

After an uncounted warm-up baseline, rounds alternate baseline and blast (B A B A ... B), so
drift in Synapse's speed as its database grows hits both alike; the ratio is the mean baseline
time over the mean blast time. CPU seconds of Synapse, Alcove and this process are printed per
phase, to show where the time goes.

A blast's end is read from Alcove's database (its report accepted by Synapse), so watching
costs Synapse nothing: a /sync left waiting would be woken and recomputed by Synapse for each of
the 500 sends (the therapist is in every room), which costs Synapse more CPU than the sends.

Usage: python -m bench.blast [--clients 500] [--rounds 2] [--state DIR]
  --state DIR keeps Synapse and Alcove's state in DIR and reuses the clients on the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class Phase:
    name: str
    seconds: float
    cpu: dict[str, float]


class Meter:
    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def sample(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    async def phase(self, name: str, run: Callable[[], Awaitable[None]]) -> Phase:
        before = self.sample()
        start = time.perf_counter()
        await run()
        seconds = time.perf_counter() - start
        after = self.sample()
        return Phase(name, seconds, {k: after[k] - before[k] for k in after})


async def report_accepted(alcove_db: Path, command_event_id: str, timeout: float) -> None:
    """Wait until Synapse has accepted Alcove's reply to the command, read from Alcove's own
    database every 10 ms: watching costs Synapse nothing."""
    deadline = time.monotonic() + timeout
    with sqlite3.connect(f"file:{alcove_db}?mode=ro", uri=True) as db:
        while time.monotonic() < deadline:
            row = db.execute(
                "SELECT status FROM outbox WHERE key = ?", (f"reply:{command_event_id}:1",)
            ).fetchone()
            if row is not None and row[0] != "pending":
                return
            await asyncio.sleep(0.01)
    raise TimeoutError("no blast report")


async def baseline(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    rooms: list[str],
    device_id: str | None = None,
    sender: str = THERAPIST,
    concurrency: int = 32,
) -> None:
    """N sends as ``sender``, ``concurrency`` at a time. With ``device_id``, the same requests
    Alcove makes for crash-safe dedupe (Synapse then stores each transaction id with the device)."""
    slots = asyncio.Semaphore(concurrency)
    tag = secrets.token_hex(4)

    async def one(i: int, room: str) -> None:
        path = f"/_matrix/client/v3/rooms/{quote(room)}/send/m.room.message/base-{tag}-{i}"
        async with (
            slots,
            http.put(
                url + path,
                params={"user_id": sender, **({"device_id": device_id} if device_id else {})},
                json={"msgtype": "m.text", "body": "Baseline message"},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp,
        ):
            if resp.status != 200:
                raise RuntimeError(f"baseline send failed: {resp.status} {await resp.text()}")

    await asyncio.gather(*(one(i, r) for i, r in enumerate(rooms)))


async def add_clients(therapist: MatrixUser, mgmt: str, first: int, count: int) -> list[str]:
    rooms: list[str] = []
    for batch in range(first, first + count, 50):
        names = [f"Bench{i:04d} Client" for i in range(batch, min(first + count, batch + 50))]
        for name in names:
            await therapist.send_text(mgmt, f"!client add {name}")
        for name in names:
            reply = await therapist.wait_for(from_bot(mgmt, f"Added {name} as"), 300)
            rooms.append(parse_added(reply["content"]["body"]).room_id)
    return rooms


def report_phases(clients: int, phases: list[Phase]) -> None:
    names = sorted({n for p in phases for n in p.cpu})
    print(
        f"{'phase':10} {'seconds':>8} {'msg/s':>6}  "
        + "  ".join(f"{n + ' cpu':>12}" for n in names)
    )
    for p in phases:
        print(
            f"{p.name:10} {p.seconds:8.2f} {clients / p.seconds:6.0f}  "
            + "  ".join(f"{p.cpu[n]:11.2f}s" for n in names)
        )


async def measure(clients: int, rounds: int, state: Path) -> None:
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
        log_start = (state / "alcove.log").stat().st_size if (state / "alcove.log").exists() else 0
        await alcove.start()
        assert stack._process is not None and alcove.proc is not None
        meter = Meter(
            {"synapse": stack._process.pid, "alcove": alcove.proc.pid, "bench": os.getpid()}
        )
        url = stack.homeserver_url
        saved = state / "bench-rooms.json"
        async with aiohttp.ClientSession() as http:
            therapist = await MatrixUser(http, url, THERAPIST).login(
                stack.dev_secrets["passwords"]["therapist"]
            )
            mgmt = await management_room(therapist)
            rooms: list[str] = json.loads(saved.read_text()) if saved.exists() else []
            if len(rooms) < clients:
                t0 = time.perf_counter()
                rooms += await add_clients(therapist, mgmt, len(rooms), clients - len(rooms))
                saved.write_text(json.dumps(rooms))
                print(
                    f"setup: {clients} clients with their rooms in {time.perf_counter() - t0:.0f} s"
                )
            elif len(rooms) > clients:
                raise SystemExit(f"{state} holds {len(rooms)} clients; use --clients {len(rooms)}")
            token = read_doublepuppet_token(config.appservice.doublepuppet_registration)
            assert token is not None
            # The end of a blast is read from Alcove's database (the report accepted by Synapse),
            # not watched through Synapse: a waiting /sync is woken and recomputed by Synapse for
            # each of the 500 sends (the therapist is in every room), which costs Synapse more
            # CPU than the sends themselves, and polling /messages would load it too.
            commands: list[str] = []

            async def blast() -> None:
                command = await therapist.send_text(
                    mgmt, f"!blast all Bench blast {secrets.token_hex(3)}"
                )
                commands.append(command)
                await report_accepted(state / "alcove.db", command, timeout=1800)

            async def plain() -> None:
                await baseline(http, url, token, rooms)

            async def with_device() -> None:
                await baseline(http, url, token, rooms, device_id=DEVICE_ID)

            await plain()  # warm-up, not counted: Synapse's caches after a (re)start
            phases = [await meter.phase("baseline", plain)]
            for _ in range(rounds):
                phases.append(await meter.phase("blast", blast))
                phases.append(await meter.phase("baseline", plain))
            phases.append(await meter.phase("device", with_device))
            reports = []
            with sqlite3.connect(state / "alcove.db") as db:
                for command in commands:
                    (event_id,) = db.execute(
                        "SELECT event_id FROM outbox WHERE key = ?", (f"reply:{command}:1",)
                    ).fetchone()
                    _, event = await therapist.raw(
                        "GET", f"/_matrix/client/v3/rooms/{quote(mgmt)}/event/{quote(event_id)}"
                    )
                    reports.append(str(event["content"]["body"]).splitlines()[0])
        with sqlite3.connect(state / "alcove.db") as db:
            spans = db.execute(
                "SELECT MAX(sent_at) - MIN(created_at) FROM outbox WHERE key LIKE 'blast:%' "
                "GROUP BY substr(key, 1, instr(substr(key, 7), ':') + 6) ORDER BY MIN(created_at)"
            ).fetchall()
        notable = [
            line
            for line in (state / "alcove.log").read_text()[log_start:].splitlines()
            if " WARNING " in line or " ERROR " in line
        ]
        print(f"Alcove log: {len(notable)} warnings/errors")
        for line in notable[:10]:
            print("   ", line[:160])
        for line in reports:
            print(f"Alcove report: {line}")
        report_phases(clients, phases)
        base = statistics.mean(p.seconds for p in phases if p.name == "baseline")
        blasts = statistics.mean(p.seconds for p in phases if p.name == "blast")
        dev = next(p.seconds for p in phases if p.name == "device")
        inside = [s / 1000 for (s,) in spans[-rounds:]]
        print(
            f"baseline: {clients} plain concurrent sends, mean {base:.2f} s "
            f"({clients / base:.0f} msg/s)"
        )
        print(
            f"Alcove blast: {clients} deliveries, mean {blasts:.2f} s "
            f"({clients / blasts:.0f} msg/s)"
        )
        print(f"throughput ratio Alcove / baseline: {base / blasts:.2f}x (target >= 0.8x)")
        print(
            "inside Alcove, first delivery written -> last accepted: "
            + ", ".join(f"{s:.2f} s" for s in inside)
            + "; the rest is the command and its report"
        )
        print(
            f"same sends with a device_id (Synapse stores txn ids for dedupe): {dev:.2f} s "
            f"({clients / dev:.0f} msg/s); Alcove / that: {dev / blasts:.2f}x"
        )
    finally:
        if alcove is not None:
            alcove.terminate()
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--state", type=Path, help="keep (and reuse) the stack's state here")
    args = parser.parse_args()
    if args.state is not None:
        args.state.mkdir(parents=True, exist_ok=True)
        asyncio.run(measure(args.clients, args.rounds, args.state.resolve()))
        return
    with tempfile.TemporaryDirectory(prefix="alcove-bench-") as tmp:
        asyncio.run(measure(args.clients, args.rounds, Path(tmp)))


if __name__ == "__main__":
    main()
