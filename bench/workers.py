"""Blast throughput against Synapse split into workers, with two event persisters vs one, and
against a monolithic Synapse, in the same run on the same rooms.

One homeserver database (PostgreSQL) and one Alcove database hold N managed clients with their
1:1 rooms (created once with `!client add`, not timed). The homeserver is then restarted in
each of three shapes, alternating, round after round (the order rotates every round):

  workers-2  main + 2 event persisters + appservice pusher + client worker, behind nginx
  workers-1  the same with 1 event persister
  monolith   the main process alone on the same database, behind the same nginx

Per shape and round: start the homeserver, start Alcove, wait until the machine is quiet, one
uncounted warm-up of N plain sends, then the timed phases:
  blast     `!blast all <text>` until Alcove's report is accepted (read from Alcove's database)
  baseline  N plain concurrent sends as the therapist (32 at a time), no Alcove
Each blast's report must read "Delivered to N of N" (checked after the timing).
CPU seconds of Synapse (all its processes), nginx, Alcove and this process are shown per phase.

The machine is shared and has 2 cores: every process of the stack competes for them, so extra
workers add parallelism only up to that; treat the figures as this machine's, and noisy.

Usage: python -m bench.workers [--clients 200] [--rounds 3] [--state DIR]
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

from bench.blast import add_clients, baseline, cpu_seconds, report_accepted
from bridge.config import Config, load_config
from bridge.devstack import DevUser
from bridge.devstack_workers import WorkerDevStack
from bridge.registration import read_doublepuppet_token
from tests.conftest import PG_DSN
from tests.support.alcove_process import AlcoveProcess
from tests.support.matrix_client import MatrixUser
from tests.support.scenario import management_room

USERS = (DevUser("therapist", "therapist", "Dr Bench"),)
THERAPIST = "@therapist:localhost"
SHAPES = {"workers-2": 2, "workers-1": 1, "monolith": 0}


@dataclass
class Result:
    shape: str
    round: int
    phase: str
    seconds: float
    cpu: dict[str, float]


def cpu_by_group(stack: WorkerDevStack, alcove: AlcoveProcess) -> dict[str, float]:
    assert alcove.proc is not None
    pids = stack.pids
    return {
        "synapse": sum(cpu_seconds(pid) for name, pid in pids.items() if name != "nginx"),
        "nginx": cpu_seconds(pids["nginx"]) + sum(_children_cpu(pids["nginx"])),
        "alcove": cpu_seconds(alcove.proc.pid),
        "bench": cpu_seconds(os.getpid()),
    }


def _children_cpu(pid: int) -> list[float]:
    """nginx's worker processes (the master only accepts)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if not children.exists():
        return []
    return [cpu_seconds(int(c)) for c in children.read_text().split()]


async def quiet(stack: WorkerDevStack, alcove: AlcoveProcess, limit: float = 30.0) -> None:
    """Wait until Synapse and Alcove use < 10% of a core over a second (start-up work done)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = cpu_by_group(stack, alcove)
        await asyncio.sleep(1)
        after = cpu_by_group(stack, alcove)
        if after["synapse"] - before["synapse"] + after["alcove"] - before["alcove"] < 0.1:
            return


async def timed(
    shape: str,
    rnd: int,
    phase: str,
    stack: WorkerDevStack,
    alcove: AlcoveProcess,
    run: Callable[[], Awaitable[None]],
) -> Result:
    before = cpu_by_group(stack, alcove)
    start = time.perf_counter()
    await run()
    seconds = time.perf_counter() - start
    after = cpu_by_group(stack, alcove)
    return Result(shape, rnd, phase, seconds, {k: after[k] - before[k] for k in after})


async def measure(clients: int, rounds: int, state: Path) -> None:
    stack = WorkerDevStack(state, users=USERS, postgres_dsn=PG_DSN)
    results: list[Result] = []
    load_before = os.getloadavg()
    alcove: AlcoveProcess | None = None
    try:
        for rnd in range(rounds + 1):  # round 0: set-up only (clients and rooms), not timed
            order = list(SHAPES)[rnd % 3 :] + list(SHAPES)[: rnd % 3] if rnd else ["workers-2"]
            for shape in order:
                stack.event_persisters = SHAPES[shape]
                config = stack.prepare()
                t0 = time.perf_counter()
                await asyncio.to_thread(stack.start)
                started = time.perf_counter() - t0
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
                try:
                    await quiet(stack, alcove)
                    print(
                        f"round {rnd} {shape}: homeserver up in {started:.1f} s "
                        f"({len(stack.pids)} processes)",
                        flush=True,
                    )
                    results += await one_shape(stack, alcove, config, clients, shape, rnd, state)
                finally:
                    alcove.terminate()
                    alcove = None
                    await asyncio.to_thread(stack.stop)
    finally:
        if alcove is not None:
            alcove.terminate()
        await asyncio.to_thread(stack.stop)
    report(clients, results, load_before)


async def one_shape(
    stack: WorkerDevStack,
    alcove: AlcoveProcess,
    config: Config,
    clients: int,
    shape: str,
    rnd: int,
    state: Path,
) -> list[Result]:
    url = stack.homeserver_url
    saved = state / "bench-rooms.json"
    async with aiohttp.ClientSession() as http:
        therapist = await MatrixUser(http, url, THERAPIST).login(
            stack.dev_secrets["passwords"]["therapist"]
        )
        mgmt = await management_room(therapist)
        rooms: list[str] = json.loads(saved.read_text()) if saved.exists() else []
        if rnd == 0:
            if len(rooms) < clients:
                t0 = time.perf_counter()
                rooms += await add_clients(therapist, mgmt, len(rooms), clients - len(rooms))
                saved.write_text(json.dumps(rooms))
                print(
                    f"setup: {clients} clients with their rooms in {time.perf_counter() - t0:.0f} s"
                )
            return []
        token = read_doublepuppet_token(config.appservice.doublepuppet_registration)
        assert token is not None

        commands: list[str] = []

        async def blast() -> None:
            command = await therapist.send_text(
                mgmt, f"!blast all Bench blast {secrets.token_hex(3)}"
            )
            commands.append(command)
            await report_accepted(state / "alcove.db", command, timeout=1800)

        async def plain() -> None:
            await baseline(http, url, token, rooms)

        await plain()  # warm-up: Synapse's caches after the restart
        results = [
            await timed(shape, rnd, "blast", stack, alcove, blast),
            await timed(shape, rnd, "baseline", stack, alcove, plain),
        ]
        # Not timed: what Alcove reported, as the therapist reads it.
        with sqlite3.connect(state / "alcove.db") as db:
            (event_id,) = db.execute(
                "SELECT event_id FROM outbox WHERE key = ?", (f"reply:{commands[0]}:1",)
            ).fetchone()
        _, event = await therapist.raw(
            "GET", f"/_matrix/client/v3/rooms/{quote(mgmt)}/event/{quote(event_id)}"
        )
        line = str(event["content"]["body"]).splitlines()[0]
        print(f"   Alcove report: {line}", flush=True)
        if f"Delivered to {clients} of {clients}" not in line:
            raise SystemExit(f"blast incomplete in {shape}: {line}")
        return results


def report(clients: int, results: list[Result], load_before: tuple[float, ...]) -> None:
    print(f"\n{'round':>5} {'shape':10} {'phase':9} {'seconds':>8} {'msg/s':>6}  cpu seconds")
    for r in results:
        cpu = "  ".join(f"{k} {v:5.2f}" for k, v in r.cpu.items())
        print(
            f"{r.round:5} {r.shape:10} {r.phase:9} {r.seconds:8.2f} "
            f"{clients / r.seconds:6.0f}  {cpu}"
        )

    def rate(shape: str, phase: str) -> float:
        secs = [r.seconds for r in results if r.shape == shape and r.phase == phase]
        return clients / statistics.mean(secs)

    print(f"\nmean throughput, {clients} messages per phase (msg/s):")
    print(f"{'shape':10} {'blast':>7} {'baseline':>9} {'blast/baseline':>15}")
    for shape in SHAPES:
        b, p = rate(shape, "blast"), rate(shape, "baseline")
        print(f"{shape:10} {b:7.0f} {p:9.0f} {b / p:14.2f}x")
    for phase in ("blast", "baseline"):
        w2, w1, mono = (rate(s, phase) for s in SHAPES)
        print(
            f"{phase}: 2 persisters / 1 persister {w2 / w1:.2f}x; "
            f"2 persisters / monolith {w2 / mono:.2f}x; 1 persister / monolith {w1 / mono:.2f}x"
        )
    print(
        f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} "
        f"(on {os.cpu_count()} cores; other work on the machine shows up here)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--state", type=Path, help="keep (and reuse) the stack's state here")
    args = parser.parse_args()
    if args.state is not None:
        args.state.mkdir(parents=True, exist_ok=True)
        asyncio.run(measure(args.clients, args.rounds, args.state.resolve()))
        return
    with tempfile.TemporaryDirectory(prefix="alcove-bench-workers-") as tmp:
        stack = WorkerDevStack(Path(tmp), users=USERS, postgres_dsn=PG_DSN)
        try:
            asyncio.run(measure(args.clients, args.rounds, Path(tmp)))
        finally:
            stack.drop_database()


if __name__ == "__main__":
    main()
