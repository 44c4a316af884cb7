"""The cost of end-to-end encryption (issue 11), same run, same Synapse: `!ping` round trip in
an encrypted DM against a plain DM (goal <= 1.2x), and blast throughput to N encrypted 1:1
rooms against N plain ones.

One throwaway Synapse with the appservice encryption extensions, Alcove with
``encryption.enabled``, and each therapist as matrix-nio with end-to-end encryption.

- Ping: both DMs are created by nio the way Element X creates one (the plain one without
  ``m.room.encryption``); pings alternate between them after a warm-up, each timed from the
  send until nio's /sync shows the pong (decrypted, in the encrypted DM).
- Blast: one therapist adds N clients with ``encryption.rooms.dm`` on (encrypted 1:1s), and each
  client signs in once with an end-to-end device (nio: login and key upload), so nothing waits
  for a first device; another therapist adds N clients with it off (Alcove restarted with
  ``ALCOVE__ENCRYPTION__ROOMS__DM=false``: plain 1:1s). Each then sends ``!blast all`` twice,
  timed from the command until Alcove's report "Delivered to N of N" (every send accepted by
  Synapse; the encrypted ones each encrypted, the first blast after the welcomes reusing their
  Megolm sessions).

Usage: python -m bench.encrypted_rtt [--tries N] [--rooms N]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

from nio import AsyncClient, AsyncClientConfig, LoginResponse, RoomSendResponse

from bridge.devstack import DevStack, DevUser
from tests.support.alcove_process import AlcoveProcess
from tests.support.nio_e2ee import E2EEUser, encrypted_dm, management_room, ping, wait_for_text
from tests.support.scenario import BOT, parse_added

USERS = (
    DevUser("therapist", "therapist", "Dr Bench"),
    DevUser("plain", "therapist", "Dr Plain"),
)
THERAPIST = "@therapist:localhost"
PLAIN_THERAPIST = "@plain:localhost"


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


async def say(nio: E2EEUser, room_id: str, text: str) -> None:
    await nio.sync()
    sent = await nio.client.room_send(
        room_id,
        "m.room.message",
        {"msgtype": "m.text", "body": text},
        ignore_unverified_devices=True,
    )
    assert isinstance(sent, RoomSendResponse), sent


def store_dir(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


async def sign_in_once(homeserver: str, user_id: str, password: str, store: Path) -> None:
    """A client's first device: login and key upload (then closed, not logged out)."""
    client = AsyncClient(
        homeserver,
        user_id,
        store_path=store_dir(store),
        config=AsyncClientConfig(encryption_enabled=True),
    )
    try:
        response = await client.login(password, device_name="bench client")
        assert isinstance(response, LoginResponse), response
        await client.keys_upload()
    finally:
        await client.close()


def pending(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        row = conn.execute("SELECT COUNT(*) FROM outbox WHERE status = 'pending'").fetchone()
    return int(row[0])


async def blast_throughput(
    stack: DevStack, nio: E2EEUser, db: Path, prefix: str, rooms: int, devices: bool, state: Path
) -> list[float]:
    """Add ``rooms`` clients (signing each in once when ``devices``), wait until the outbox is
    empty, then time two ``!blast all``; returns their messages per second."""
    mgmt = await management_room(nio)
    nio.trust(BOT)
    for i in range(rooms):
        if i % 10 == 0:
            print(f"{prefix}: {i} of {rooms} clients added", file=sys.stderr, flush=True)
        await say(nio, mgmt, f"!client add {prefix}{i} Bench")
        added = parse_added((await wait_for_text(nio, mgmt, f"Added {prefix}{i} Bench")).body)
        if devices:
            await sign_in_once(
                stack.homeserver_url, added.user_id, added.password, state / added.user_id
            )
    deadline = time.monotonic() + 300
    while pending(db):  # the welcomes (held for the first devices) are out
        assert time.monotonic() < deadline, f"{pending(db)} messages still pending"
        await asyncio.sleep(0.5)
    rates = []
    for n in (1, 2):
        started = time.perf_counter()
        await say(nio, mgmt, f"!blast all Bench blast {n}")
        report = await wait_for_text(nio, mgmt, "Delivered to")
        elapsed = time.perf_counter() - started
        assert f"Delivered to {rooms} of {rooms} clients" in report.body, report.body
        rates.append(rooms / elapsed)
    return rates


async def measure(tries: int, rooms: int, state: Path) -> dict[str, list[float]]:
    stack = DevStack(state / "stack", users=USERS, encryption=True)
    config = stack.prepare()
    stack.start()
    alcove: AlcoveProcess | None = None
    users: list[E2EEUser] = []
    db = state / "alcove.db"

    def alcove_with(extra_env: dict[str, str]) -> AlcoveProcess:
        return AlcoveProcess(
            stack.config_path,
            stack.homeserver_url,
            f"sqlite:{db}",
            stack.dev_secrets["as_port"],
            state / "alcove.log",
            log_level="INFO",
            extra_env=extra_env,
        )

    try:
        await stack.bootstrap(config)
        alcove = alcove_with({})
        await alcove.start()
        passwords = stack.dev_secrets["passwords"]
        nio = await E2EEUser(stack.homeserver_url, THERAPIST, state / "nio").login(
            passwords["therapist"]
        )
        users.append(nio)
        dms = {"encrypted": await encrypted_dm(nio), "plain": await encrypted_dm(nio, False)}
        for kind, room in dms.items():  # warm-up: sessions shared, caches filled
            await ping(nio, room, kind == "encrypted")
        results: dict[str, list[float]] = {kind: [] for kind in dms}
        for _ in range(tries):
            for kind, room in dms.items():
                results[kind].append(await ping(nio, room, kind == "encrypted"))
        report_pings(results)  # now: the blast part takes long
        if rooms:
            results["blast encrypted"] = await blast_throughput(
                stack, nio, db, "Enc", rooms, True, state / "clients"
            )
            alcove.terminate()
            alcove = alcove_with({"ALCOVE__ENCRYPTION__ROOMS__DM": "false"})
            await alcove.start()
            other = await E2EEUser(stack.homeserver_url, PLAIN_THERAPIST, state / "nio2").login(
                passwords["plain"]
            )
            users.append(other)
            results["blast plain"] = await blast_throughput(
                stack, other, db, "Plain", rooms, False, state / "clients"
            )
        return results
    finally:
        for user in users:
            await user.close()
        if alcove is not None:
            alcove.terminate()
        stack.stop()


def report_pings(results: dict[str, list[float]]) -> None:
    pings = {kind: summary(results[kind]) for kind in ("encrypted", "plain")}
    for kind, (median, p95) in pings.items():
        print(f"!ping {kind:>9}: median {median * 1000:6.1f} ms, p95 {p95 * 1000:6.1f} ms")
    ratio = pings["encrypted"][0] / pings["plain"][0]
    print(f"!ping encrypted / plain (median): {ratio:.2f}x (goal <= 1.2x)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=30)
    parser.add_argument("--rooms", type=int, default=100, help="1:1 rooms per blast (0: none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alcove-bench-e2ee-") as tmp:
        results = asyncio.run(measure(args.tries, args.rooms, Path(tmp)))
    if args.rooms:
        for kind in ("blast encrypted", "blast plain"):
            first, second = results[kind]
            print(f"{kind:>15} to {args.rooms} 1:1s: {first:6.1f} and {second:6.1f} messages/s")
        ratio = statistics.mean(results["blast plain"]) / statistics.mean(
            results["blast encrypted"]
        )
        print(f"blast time encrypted / plain: {ratio:.2f}x")


if __name__ == "__main__":
    main()
