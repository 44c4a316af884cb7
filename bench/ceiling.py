"""Alcove's own ceiling: how fast Alcove itself goes when the homeserver costs nothing, against
how fast a real single Synapse creates events, in the same run.

Synapse:  concurrent sends (4 senders, 32 requests in flight, distinct rooms) to a throwaway
          Synapse (bridge/devstack.DevStack): its event creation rate, events/s.
Alcove:   a real Alcove process (`python -m bridge run`, as in production: its own event loop
          and core) against a fake homeserver in this process (tests/support/fake_homeserver.py)
          that answers every call at once and pushes transactions as Synapse does (one in flight,
          up to 100 events, Alcove's own messages echoed back). Load: `!ping` from the therapists
          and clients of 2,000 rooms; a command counts once its `pong` reached the fake
          homeserver. Each command is one event in → inbox → router → outbox → one send (plus
          the echo of the pong through the inbox). On SQLite and on PostgreSQL.
Rounds alternate Synapse, Alcove/SQLite, Alcove/PostgreSQL (S A A S A A ... S) after uncounted
warm-ups, so the shared machine's noise hits all alike; the figures are medians.

Also: start-up (spawn → /ready) with an empty database and with 10,000 clients and 2,000 rooms;
catch-up after a restart, when the homeserver dropped one `!ping` in each of the 2,000 rooms
(joined_rooms + /messages per room → every missed `!ping` answered); memory (RSS) of the
Alcove process with 10,000 clients, idle and after the load.

Usage: python -m bench.ceiling [--rounds 3] [--pings 5000] [--synapse-events 800]
       [--clients 10000] [--rooms 2000] [--db sqlite,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.blast import Meter, baseline
from bots.features.conversations.repo import DM, Client, ConversationRepo, Room
from bridge.app import SETTLE_SECONDS
from bridge.config import DatabaseConfig, load_config
from bridge.db.database import open_database, transaction
from bridge.devstack import DevStack, DevUser, free_port
from bridge.registration import dump_yaml, read_doublepuppet_token, write_registrations
from tests.support.alcove_process import AlcoveProcess
from tests.support.fake_homeserver import FakeHomeserver

DOMAIN = "localhost"
SENDERS = tuple(DevUser(f"sender{i}", "therapist", f"Sender {i}") for i in range(4))
THERAPISTS = 10


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


@dataclass
class Instance:
    """One Alcove (subprocess) with its own fake homeserver and database."""

    name: str
    db_url: str
    state: Path
    config_path: Path
    fake: FakeHomeserver
    process: AlcoveProcess
    rooms: list[Room] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    rates: list[float] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid

    async def start(self) -> float:
        """Spawn → /ready, in seconds."""
        t0 = time.perf_counter()
        await self.process.start()
        return time.perf_counter() - t0

    async def settled(self) -> None:
        """Until start-up's second catch-up (SETTLE_SECONDS after start) has had its turn: with
        events in the inbox it sweeps every room, one-off work measured apart (``catch_up``)
        that would otherwise land in a round. (The sweep of 2,000 rooms takes under a
        second.)"""
        await asyncio.sleep(SETTLE_SECONDS + 3.0)


def write_config(state: Path, port: int, db_url: str) -> Path:
    state.mkdir(parents=True, exist_ok=True)
    staff = [
        {"user_id": f"@t{i:02d}:{DOMAIN}", "displayname": f"Dr T{i:02d}", "role": "therapist"}
        for i in range(THERAPISTS)
    ] + [{"user_id": f"@care:{DOMAIN}", "displayname": "Care", "role": "care"}]
    config = {
        "homeserver": {"address": "http://127.0.0.1:1", "domain": DOMAIN},
        "appservice": {
            "id": "alcove",
            "address": f"http://127.0.0.1:{port}",
            "hostname": "127.0.0.1",
            "port": port,
            "bot_localpart": "alcove",
            "bot_displayname": "Alcove",
        },
        "database": {"url": db_url},
        "practice": {"name": "Bench Practice", "timezone": "Europe/London"},
        "staff": staff,
        "logging": {"level": "INFO", "file": "alcove.log"},
    }
    path = state / "config.yaml"
    path.write_text(dump_yaml(config))
    write_registrations(load_config(path, environ={}, need_tokens=False))
    return path


async def make_instance(name: str, db_url: str, state: Path) -> Instance:
    port = free_port()
    path = write_config(state, port, db_url)
    config = load_config(path, environ={})
    dp = read_doublepuppet_token(config.appservice.doublepuppet_registration)
    fake = FakeHomeserver(
        domain=DOMAIN,
        as_token=config.appservice.as_token,
        hs_token=config.appservice.hs_token,
        bot_user_id=config.bot_user_id,
        appservice_url=config.appservice.address,
        other_tokens=[dp] if dp else [],
    )
    await fake.start()
    fake.users.update(m.user_id for m in config.staff)
    process = AlcoveProcess(path, fake.url, db_url, port, state / "alcove.log", log_level="INFO")
    return Instance(name, db_url, state, path, fake, process)


async def seed(inst: Instance, clients: int, rooms: int) -> float:
    """Clients and their 1:1 rooms written straight into Alcove's database (set-up, not
    measured: `!client add` would make each through the homeserver), joined on the fake."""
    t0 = time.perf_counter()
    db = await open_database(DatabaseConfig(url=inst.db_url))
    repo = ConversationRepo(db)
    now = int(time.time() * 1000)
    bot = inst.fake.bot
    try:
        async with transaction(db):
            for i in range(clients):
                therapist = f"@t{i % THERAPISTS:02d}:{DOMAIN}"
                client = Client(
                    f"@c-bench{i:05d}:{DOMAIN}", therapist, f"Bench{i:05d} Client", "B.C.", None
                )
                await repo.add_client(client, f"$seed-client-{i}", now)
                inst.fake.users.add(client.user_id)
                if i < rooms:
                    room = Room(f"!dm{i:05d}:{DOMAIN}", DM, therapist, client.user_id, None)
                    await repo.add_room(room, now, f"$seed-room-{i}")
                    inst.rooms.append(room)
                    for member in (bot, therapist, client.user_id):
                        inst.fake.join(room.room_id, member)
    finally:
        await db.stop()
    return time.perf_counter() - t0


def ping_events(inst: Instance, count: int, offset: int = 0) -> list[dict[str, Any]]:
    """`!ping` across the rooms: three from the therapist for one from the client."""
    events = []
    for i in range(offset, offset + count):
        room = inst.rooms[i % len(inst.rooms)]
        sender = room.client_id if i % 4 == 3 else room.therapist_id
        assert sender is not None
        events.append(inst.fake.message(room.room_id, sender, "!ping"))
    return events


async def drain(fake: FakeHomeserver, settle: float = 0.3) -> None:
    """Until the fake has pushed everything queued (the pongs' echoes) and a little after."""
    await fake.idle()
    await asyncio.sleep(settle)


async def alcove_round(inst: Instance, count: int, offset: int, timeout: float = 600) -> float:
    """Push ``count`` `!ping`s; commands/s until every one was answered."""
    events = ping_events(inst, count, offset)
    done = inst.fake.watch(e["event_id"] for e in events)
    meter = Meter({"alcove": inst.pid, "bench": os.getpid()})
    pushing = inst.fake.push_seconds
    result: list[float] = []

    async def run() -> None:
        t0 = time.perf_counter()
        inst.fake.push(events)
        end = await asyncio.wait_for(done, timeout)
        result.append(count / (end - t0))

    phase = await meter.phase(inst.name, run)
    inst.cpu.append(
        {
            "alcove_ms": phase.cpu["alcove"] * 1000 / count,  # CPU per command
            "alcove": phase.cpu["alcove"] / phase.seconds,  # share of one core
            "bench": phase.cpu["bench"] / phase.seconds,
            # share of the time a transaction was in flight (Synapse keeps one at a time)
            "pushing": (inst.fake.push_seconds - pushing) / phase.seconds,
        }
    )
    await drain(inst.fake)
    return result[0]


SynapseRound = Callable[[], Awaitable[tuple[float, float]]]
"""One round: (events/s, Synapse's CPU milliseconds per event)."""


@asynccontextmanager
async def synapse_load(state: Path, events: int) -> AsyncIterator[SynapseRound | None]:
    """A throwaway Synapse with rooms for the senders, warmed up; yields one round's runner
    (None with ``events`` 0: Alcove only, e.g. while profiling)."""
    if events <= 0:
        yield None
        return
    stack = DevStack(state, users=SENDERS)
    config = stack.prepare()
    stack.start()
    try:
        await stack.bootstrap(config)
        token = read_doublepuppet_token(
            load_config(stack.config_path, environ={}).appservice.doublepuppet_registration
        )
        assert token is not None
        async with aiohttp.ClientSession() as http:
            url = stack.homeserver_url
            rooms = await synapse_rooms(http, url, token, 16)
            assert stack._process is not None
            meter = Meter({"synapse": stack._process.pid})
            await synapse_round(http, url, token, rooms, events, meter)  # warm-up, not counted
            yield lambda: synapse_round(http, url, token, rooms, events, meter)
    finally:
        stack.stop()


async def synapse_rooms(
    http: aiohttp.ClientSession, url: str, token: str, per_sender: int
) -> dict[str, list[str]]:
    rooms: dict[str, list[str]] = {}
    for user in SENDERS:
        sender = f"@{user.localpart}:{DOMAIN}"
        rooms[sender] = []
        for _ in range(per_sender):
            async with http.post(
                f"{url}/_matrix/client/v3/createRoom",
                params={"user_id": sender},
                json={"preset": "private_chat"},
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"createRoom: {resp.status} {await resp.text()}")
                rooms[sender].append(str((await resp.json())["room_id"]))
    return rooms


async def synapse_round(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    rooms: dict[str, list[str]],
    events: int,
    meter: Meter,
) -> tuple[float, float]:
    """Events/s Synapse creates from concurrent senders (32 requests in flight in all), and
    its CPU milliseconds per event."""
    per = events // len(rooms)
    share = 32 // len(rooms)

    async def run() -> None:
        await asyncio.gather(
            *(
                baseline(
                    http, url, token, (r * (per // len(r) + 1))[:per], sender=s, concurrency=share
                )
                for s, r in rooms.items()
            )
        )

    phase = await meter.phase("synapse", run)
    sent = per * len(rooms)
    return sent / phase.seconds, phase.cpu["synapse"] * 1000 / sent


async def catch_up(inst: Instance, timeout: float = 600) -> None:
    """Stop Alcove; the homeserver "drops" one `!ping` in each room (in the timeline, never
    pushed); start Alcove and time until every dropped `!ping` is answered."""
    usage = rss_kib(inst.pid)
    inst.figures["rss_after_load"] = usage["VmRSS"] / 1024
    inst.figures["hwm_after_load"] = usage["VmHWM"] / 1024
    inst.process.terminate()
    log = inst.state / "alcove.log"
    log_start = log.stat().st_size
    missed = [
        inst.fake.message(room.room_id, room.therapist_id or "", "!ping") for room in inst.rooms
    ]
    done = inst.fake.watch(e["event_id"] for e in missed)
    inst.fake.first_joined_rooms_at = 0.0
    t0 = time.perf_counter()
    inst.figures["startup_after_load"] = await inst.start()
    end = await asyncio.wait_for(done, timeout)
    inst.figures["catchup_total"] = end - t0
    inst.figures["catchup_sweep"] = inst.fake.last_messages_at - inst.fake.first_joined_rooms_at
    inst.figures["catchup_answered"] = end - inst.fake.first_joined_rooms_at
    found = re.findall(r"Catch-up found (\d+) events", log.read_text()[log_start:])
    inst.figures["catchup_found"] = float(sum(int(n) for n in found))
    await drain(inst.fake)
    inst.figures["rss_after_catchup"] = rss_kib(inst.pid)["VmRSS"] / 1024


async def measure(args: argparse.Namespace, state: Path) -> None:
    from tests.conftest import create_pg_database, drop_pg_database

    pg_urls: list[str] = []
    instances: list[Instance] = []
    synapse_rates: list[tuple[float, float]] = []
    try:
        for name in args.db:
            if name == "sqlite":
                url = f"sqlite:{state / 'alcove-sqlite' / 'alcove.db'}"
            else:
                url = await create_pg_database()
                pg_urls.append(url)
            inst = await make_instance(name, url, state / f"alcove-{name}")
            instances.append(inst)
            inst.figures["startup_empty"] = await inst.start()
            inst.figures["rss_empty"] = rss_kib(inst.pid)["VmRSS"] / 1024
            inst.process.terminate()
            inst.figures["seed_seconds"] = await seed(inst, args.clients, args.rooms)
            inst.figures["startup_seeded"] = await inst.start()
            inst.figures["rss_seeded"] = rss_kib(inst.pid)["VmRSS"] / 1024
            print(
                f"{name}: start-up {inst.figures['startup_empty']:.2f} s empty, "
                f"{inst.figures['startup_seeded']:.2f} s with {args.clients} clients / "
                f"{args.rooms} rooms (seeded in {inst.figures['seed_seconds']:.1f} s)",
                flush=True,
            )
        async with synapse_load(state / "synapse", args.synapse_events) as synapse:
            offset = 0
            for inst in instances:  # warm-up (every room once), then start-up's late catch-up
                await alcove_round(inst, max(500, len(inst.rooms)), offset)
            for inst in instances:
                await inst.settled()
            offset += args.pings
            for r in range(args.rounds + 1):  # S A A S A A ... S
                if synapse is not None:
                    rate, cpu_ms = await synapse()
                    synapse_rates.append((rate, cpu_ms))
                    print(
                        f"  synapse   {rate:8.0f} events/s   {cpu_ms:5.2f} ms CPU each", flush=True
                    )
                if r == args.rounds:
                    break
                for inst in instances:
                    rate = await alcove_round(inst, args.pings, offset)
                    inst.rates.append(rate)
                    print(
                        f"  {inst.name:9} {rate:8.0f} commands/s "
                        f"{inst.cpu[-1]['alcove_ms']:5.2f} ms CPU each",
                        flush=True,
                    )
                offset += args.pings
        for inst in instances:
            await catch_up(inst)
        report(args, instances, synapse_rates)
        for inst in instances:
            if inst.fake.unknown:
                print(
                    f"{inst.name}: calls the fake homeserver did not know: "
                    f"{dict(inst.fake.unknown)}"
                )
    finally:
        for inst in instances:
            inst.process.terminate()
            await inst.fake.stop()
        for url in pg_urls:
            await drop_pg_database(url)


def report(
    args: argparse.Namespace, instances: list[Instance], synapse: list[tuple[float, float]]
) -> None:
    syn = statistics.median(r for r, _ in synapse) if synapse else float("nan")
    syn_cpu = statistics.median(c for _, c in synapse) if synapse else float("nan")
    print()
    print(
        f"Synapse event creation, concurrent senders: median {syn:.0f} events/s, "
        f"{syn_cpu:.2f} ms of Synapse CPU per event "
        f"(rounds: {', '.join(f'{r:.0f}' for r, _ in synapse)})"
    )
    for inst in instances:
        f = inst.figures
        rate = statistics.median(inst.rates)
        cpu_ms = statistics.median(c["alcove_ms"] for c in inst.cpu)
        alcove_busy = statistics.median(c["alcove"] for c in inst.cpu)
        bench_busy = statistics.median(c["bench"] for c in inst.cpu)
        pushing = statistics.median(c["pushing"] for c in inst.cpu)
        print(
            f"Alcove/{inst.name}: median {rate:.0f} commands/s, {cpu_ms:.2f} ms of Alcove CPU "
            f"per command (rounds: {', '.join(f'{r:.0f}' for r in inst.rates)}); busy: Alcove "
            f"{alcove_busy:.0%} of a core, fake homeserver + load {bench_busy:.0%}; a "
            f"transaction in flight to Alcove {pushing:.0%} of the time"
        )
        print(
            f"  ceiling ratio, same run: Alcove/{inst.name} commands/s / Synapse events/s = "
            f"{rate / syn:.1f}x (goal >= 20x); counting events on both sides (a command is "
            f"two of the homeserver's events: the `!ping` Alcove handles and the `pong` it "
            f"sends) = {2 * rate / syn:.1f}x; CPU per event, Synapse / Alcove = "
            f"{syn_cpu / (cpu_ms / 2):.1f}x"
        )
        print(
            f"  start-up to ready: {f['startup_empty']:.2f} s empty database, "
            f"{f['startup_seeded']:.2f} s with {args.clients} clients and {args.rooms} rooms, "
            f"{f['startup_after_load']:.2f} s after the load"
        )
        print(
            f"  catch-up of {args.rooms} rooms: joined_rooms + /messages sweep "
            f"{f['catchup_sweep']:.2f} s; every dropped !ping answered "
            f"{f['catchup_answered']:.2f} s after the sweep began "
            f"({f['catchup_total']:.2f} s after spawn); catch-up found "
            f"{f['catchup_found']:.0f} of {len(inst.rooms)}"
        )
        print(
            f"  RSS: {f['rss_empty']:.0f} MiB empty, {f['rss_seeded']:.0f} MiB with "
            f"{args.clients} clients, {f['rss_after_load']:.0f} MiB after the load "
            f"(peak {f['hwm_after_load']:.0f}), {f['rss_after_catchup']:.0f} MiB after catch-up"
        )
        dupes = sum(1 for n in inst.fake.replies.values() if n > 1)
        print(f"  commands answered more than once: {dupes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pings", type=int, default=5000, help="commands per Alcove round")
    parser.add_argument("--synapse-events", type=int, default=800, help="sends per Synapse round")
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rooms", type=int, default=2_000)
    parser.add_argument("--db", type=lambda s: s.split(","), default=["sqlite", "postgres"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alcove-ceiling-") as tmp:
        asyncio.run(measure(args, Path(tmp)))


if __name__ == "__main__":
    main()
