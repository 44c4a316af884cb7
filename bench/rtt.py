"""Round trips on one throwaway Synapse, in one run:

(a) baseline: a plain message from one user to another (send → the other's /sync sees it)
(b) Alcove:   `!ping` → `pong` through Synapse's appservice push, the durable inbox, the
              command router and the outbox (send → the sender's /sync sees the pong)
(c) floor:    the same `!ping` → `pong` through a minimal appservice with no persistence
              (bench/minimal_bot.py) on Alcove's registration, while Alcove is stopped

Prints median and p95 of each and the ratios. Usage: python -m bench.rtt [--tries N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from mautrix.types import RoomID

from bench.minimal_bot import MinimalBot
from bridge.devstack import DevStack, DevUser
from tests.support.alcove_process import AlcoveProcess
from tests.support.matrix_client import MatrixUser, body_is, wait_joined

USERS = (DevUser("therapist", "therapist", "Dr Bench"), DevUser("care", "care", "Care Bench"))


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


async def measure(tries: int, state: Path) -> dict[str, tuple[float, float]]:
    stack = DevStack(state, users=USERS)
    config = stack.prepare()
    stack.start()
    alcove = None
    try:
        await stack.bootstrap(config)
        pw = stack.dev_secrets["passwords"]
        alcove = AlcoveProcess(
            stack.config_path,
            stack.homeserver_url,
            f"sqlite:{state / 'alcove.db'}",
            stack.dev_secrets["as_port"],
            state / "alcove.log",
            log_level="INFO",  # DEBUG logging would slow Alcove down and skew the figure
        )
        await alcove.start()
        async with aiohttp.ClientSession() as http:
            url = stack.homeserver_url
            # Both observers ignore their own echo: /sync wakes once, for the other side's event.
            a = MatrixUser(http, url, "@therapist:localhost", ignore_own_messages=True)
            await a.login(pw["therapist"])
            b = MatrixUser(http, url, "@care:localhost", ignore_own_messages=True)
            await b.login(pw["care"])
            room = await a.create_dm(b.user_id)
            await b.api.join_room_by_id(RoomID(room))
            await wait_joined(a, room, b.user_id)
            dm = await a.create_dm(config.bot_user_id)
            await wait_joined(a, dm, config.bot_user_id)

            plain: list[float] = []
            for i in range(tries):
                text = f"plain {i}"
                start = time.perf_counter()
                await a.send_text(room, text)
                await b.wait_for(body_is(room, a.user_id, text))
                plain.append(time.perf_counter() - start)

            bot = await ping_rounds(a, dm, config.bot_user_id, tries)
            alcove.terminate()
            minimal = MinimalBot(
                url, config.appservice.as_token, config.appservice.hs_token, config.bot_user_id
            )
            runner = await minimal.start("127.0.0.1", config.appservice.port)
            try:
                floor = await ping_rounds(a, dm, config.bot_user_id, tries)
            finally:
                await minimal.stop(runner)
        return {"plain": summary(plain), "bot": summary(bot), "floor": summary(floor)}
    finally:
        if alcove is not None:
            alcove.terminate()
        stack.stop()


async def ping_rounds(user: MatrixUser, room: str, bot: str, tries: int) -> list[float]:
    samples: list[float] = []
    already = pong_count(user, room, bot)
    for i in range(tries):
        start = time.perf_counter()
        await user.send_text(room, "!ping")
        target = already + i + 1

        def arrived(_event: dict[str, Any], target: int = target) -> bool:
            return pong_count(user, room, bot) >= target

        await user.wait_for(arrived)
        samples.append(time.perf_counter() - start)
    return samples


def pong_count(user: MatrixUser, room: str, bot: str) -> int:
    return sum(e["content"].get("body") == "pong" for e in user.messages_in(room, bot))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tries", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="alcove-bench-") as tmp:
        result = asyncio.run(measure(args.tries, Path(tmp)))
    (pm, pp), (bm, bp), (fm, fp) = result["plain"], result["bot"], result["floor"]
    print(f"tries: {args.tries} each, same Synapse, same run")
    print(f"plain message round trip  median {pm * 1000:6.1f} ms   p95 {pp * 1000:6.1f} ms")
    print(f"!ping -> pong via Alcove  median {bm * 1000:6.1f} ms   p95 {bp * 1000:6.1f} ms")
    print(f"!ping -> pong, floor bot  median {fm * 1000:6.1f} ms   p95 {fp * 1000:6.1f} ms")
    print(f"ratio Alcove / plain      median {bm / pm:5.2f}x       p95 {bp / pp:5.2f}x")
    print(f"ratio floor / plain       median {fm / pm:5.2f}x       p95 {fp / pp:5.2f}x")
    print(f"ratio Alcove / floor      median {bm / fm:5.2f}x       p95 {bp / fp:5.2f}x")


if __name__ == "__main__":
    main()
