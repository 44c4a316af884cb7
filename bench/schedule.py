"""10,000 pending scheduled messages: start-up re-arm time, memory, and firing lateness.

The real ScheduleService, Timers (APScheduler) and Outbox on a real database; the Matrix side is
a recording fake (this measures Alcove's scheduler, not Synapse). Lateness = when the outbox row
was committed minus when the message was due. Baseline in the same process: bare asyncio timers
(loop.call_at) for the same due times, i.e. what the event loop alone achieves.

Usage: python -m bench.schedule [--count 10000] [--spread 20] [--db sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

from bots.features.schedule.service import ScheduleService
from bots.features.voice import TherapistVoice
from bridge.clock import SystemClock
from bridge.config import DatabaseConfig
from bridge.db.database import open_database, transaction
from bridge.db.outbox_repo import DeviceRepo, OutboxRepo
from bridge.matrix.outbox import Outbox
from bridge.metrics import Metrics
from bridge.timers import Timers
from tests.support.builders import make_config
from tests.support.fakes import RecordingGateway

THERAPIST = "@therapist:test.local"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def baseline(dues: list[float]) -> list[float]:
    loop = asyncio.get_running_loop()
    late: list[float] = []
    done = asyncio.Event()
    offset = time.time() - loop.time()

    def fire(due: float) -> None:
        late.append(time.time() - due)
        if len(late) == len(dues):
            done.set()

    for due in dues:
        loop.call_at(due - offset, fire, due)
    await done.wait()
    return late


async def measure(count: int, spread: float, db_url: str, state: Path) -> None:
    config = make_config(state)
    db = await open_database(DatabaseConfig(url=db_url))
    clock = SystemClock()
    gateway = RecordingGateway(existing_users={THERAPIST})
    outbox = Outbox(OutboxRepo(db), DeviceRepo(db), gateway, clock, Metrics())
    timers = Timers()

    async def no_room(_: str) -> None:
        return None

    service = ScheduleService(
        config, db, outbox, TherapistVoice(config, gateway), timers, clock, no_room
    )
    start_at = time.time() + 8.0
    dues = [start_at + spread * i / count for i in range(count)]
    content = json.dumps({"msgtype": "m.text", "body": "Bench reminder"})
    async with transaction(db) as conn:
        for i, due in enumerate(dues):
            await conn.execute(
                "INSERT INTO scheduled_message (therapist_id, room_id, content, rule, due_at,"
                " status, origin_event, created_at)"
                " VALUES ($1, $2, $3, NULL, $4, 'pending', $5, 0)",
                THERAPIST,
                f"!room{i % 500}:test.local",
                content,
                int(due * 1000),
                f"$bench{i}",
            )
    rss_before = rss_mib()
    t0 = time.perf_counter()
    timers.start()
    rearmed = await service.start()
    rearm_s = time.perf_counter() - t0
    rss_after = rss_mib()
    await outbox.start()
    deadline = time.monotonic() + spread + 120
    while service.fired < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {service.fired} of {count} fired")
        await asyncio.sleep(0.05)
    await outbox.join()
    rows = await db.fetch("SELECT key, created_at FROM outbox WHERE key LIKE 'sched:%'")
    late = [(r["created_at"] - int(r["key"].rsplit(":", 1)[1])) / 1000 for r in rows]
    timers.stop()
    await outbox.stop()
    await db.stop()

    base_dues = [time.time() + 2.0 + spread * i / count for i in range(count)]
    base = await baseline(base_dues)
    print(f"scheduled messages: {count} over {spread:.0f} s, database {db_url.split(':', 1)[0]}")
    print(f"re-arm at start-up: {rearmed} timers in {rearm_s * 1000:.0f} ms")
    print(f"memory: max RSS {rss_before:.0f} MiB before re-arm, {rss_after:.0f} MiB after")
    print(f"sent exactly once: {len(rows)} outbox rows, {len(gateway.sent)} sends")
    print(
        f"lateness Alcove:   p50 {statistics.median(late) * 1000:6.1f} ms  "
        f"p99 {pct(late, 0.99) * 1000:6.1f} ms  max {max(late) * 1000:6.1f} ms"
    )
    print(
        f"lateness baseline: p50 {statistics.median(base) * 1000:6.1f} ms  "
        f"p99 {pct(base, 0.99) * 1000:6.1f} ms  max {max(base) * 1000:6.1f} ms (bare loop timers)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--spread", type=float, default=20.0, help="seconds the due times span")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alcove-bench-") as tmp:
        if args.db == "sqlite":
            url = f"sqlite:{Path(tmp) / 'alcove.db'}"
            asyncio.run(measure(args.count, args.spread, url, Path(tmp)))
        else:
            from tests.conftest import create_pg_database, drop_pg_database

            async def run_pg() -> None:
                url = await create_pg_database()
                try:
                    await measure(args.count, args.spread, url, Path(tmp))
                finally:
                    await drop_pg_database(url)

            asyncio.run(run_pg())


if __name__ == "__main__":
    main()
