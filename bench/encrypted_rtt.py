"""`!ping` round trip in an encrypted DM against a plain DM, same run, same client (issue 11;
goal <= 1.2x).

One throwaway Synapse with the appservice encryption extensions, Alcove with
``encryption.enabled``, and the therapist as matrix-nio with end-to-end encryption. Both DMs are
created by nio the way Element X creates one (the plain one without ``m.room.encryption``); pings
alternate between them after a warm-up, each timed from the send until nio's /sync shows the
pong (decrypted, in the encrypted DM). Prints median and p95 of each and the ratio.

Usage: python -m bench.encrypted_rtt [--tries N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from bridge.devstack import DevStack, DevUser
from tests.support.alcove_process import AlcoveProcess
from tests.support.nio_e2ee import E2EEUser, encrypted_dm, ping

USERS = (DevUser("therapist", "therapist", "Dr Bench"),)
THERAPIST = "@therapist:localhost"


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


async def measure(tries: int, state: Path) -> dict[str, tuple[float, float]]:
    stack = DevStack(state / "stack", users=USERS, encryption=True)
    config = stack.prepare()
    stack.start()
    alcove: AlcoveProcess | None = None
    nio: E2EEUser | None = None
    try:
        await stack.bootstrap(config)
        alcove = AlcoveProcess(
            stack.config_path,
            stack.homeserver_url,
            f"sqlite:{state / 'alcove.db'}",
            stack.dev_secrets["as_port"],
            state / "alcove.log",
            log_level="INFO",
        )
        await alcove.start()
        password = stack.dev_secrets["passwords"]["therapist"]
        nio = await E2EEUser(stack.homeserver_url, THERAPIST, state / "nio").login(password)
        rooms = {"encrypted": await encrypted_dm(nio), "plain": await encrypted_dm(nio, False)}
        for kind, room in rooms.items():  # warm-up: sessions shared, caches filled
            await ping(nio, room, kind == "encrypted")
        samples: dict[str, list[float]] = {kind: [] for kind in rooms}
        for _ in range(tries):
            for kind, room in rooms.items():
                samples[kind].append(await ping(nio, room, kind == "encrypted"))
        return {kind: summary(values) for kind, values in samples.items()}
    finally:
        if nio is not None:
            await nio.close()
        if alcove is not None:
            alcove.terminate()
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alcove-bench-e2ee-") as tmp:
        results = asyncio.run(measure(args.tries, Path(tmp)))
    for kind, (median, p95) in results.items():
        print(f"{kind:>9}: median {median * 1000:6.1f} ms, p95 {p95 * 1000:6.1f} ms")
    ratio = results["encrypted"][0] / results["plain"][0]
    print(f"encrypted / plain (median): {ratio:.2f}x (goal <= 1.2x)")


if __name__ == "__main__":
    main()
