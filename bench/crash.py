"""The crash suite (issue 14): Alcove's exactly-once promise under SIGKILLs, a Synapse restart
and a misbehaving network, counted afterwards the way the recipients see it.

A real Synapse (DevStack) and Alcove as separate processes, with a FaultProxy between Alcove and
Synapse that injects short bursts of 429s, 503s, dropped connections and lost answers (Synapse
did it, Alcove never heard). The therapist drives a workload of inline and two-step blasts,
one-off scheduled messages (and one recurring one), phrases (`!p`), group changes (`!group
add/remove` + `!yes`) and text-only sessions ended with `!end`. Alcove is SIGKILLed at random
moments of that workload (right after a command, while a blast is part delivered, right after
`!yes`, as a scheduled message fires, right after `!end` — during the session's purge — and
during start-up) and Synapse is restarted once mid-traffic. Afterwards every expected message is
counted in every target room through the client-server API, as its recipient: the run fails
(exit 1) unless 0 are lost, 0 duplicated, every session is purged and every command answered
exactly once.

Usage: python -m bench.crash [--kills 20] [--seed 1] [--clients 8] [--state DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import secrets
import sqlite3
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from bridge.config import load_config
from bridge.devstack import DevStack, DevUser
from tests.support.alcove_process import AlcoveProcess
from tests.support.matrix_client import Event, MatrixUser
from tests.support.proxy import HTTP429, HTTP503, PASS, SWALLOW, FaultProxy
from tests.support.scenario import BOT, THERAPIST, Added, add_many, login, management_room

USERS = (DevUser("therapist", "therapist", "Dr Crash"),)
NAMES = [
    f"{first} {last}"
    for first, last in zip(
        "Ada Bo Cy Di Ed Flo Gus Hal Ivy Jo Kit Lu Max Ned Oz Pia".split(),
        "Ash Birch Cedar Dale Elm Fir Gale Hay Ives Jay Kerr Lane Moss Nash Oak Pine".split(),
        strict=True,
    )
]
PHRASE = "crashhi"
PHRASE_TEXT = "Hello from a saved phrase"
REPLY_TIMEOUT = 90.0


@dataclass
class Tally:
    kills: int = 0
    kill_points: Counter[str] = field(default_factory=Counter)
    synapse_restarts: int = 0
    bursts: int = 0
    expected: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    sessions: int = 0
    sessions_purged: int = 0
    commands: int = 0
    commands_answered_once: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and self.sessions_purged == self.sessions
            and self.commands_answered_once == self.commands
            and not self.problems
        )

    def line(self) -> str:
        return (
            f"crash suite: kills={self.kills} synapse_restarts={self.synapse_restarts} "
            f"fault_bursts={self.bursts} expected={self.expected} delivered={self.delivered} "
            f"lost={self.lost} duplicated={self.duplicated} "
            f"sessions_purged={self.sessions_purged}/{self.sessions} "
            f"commands_answered_once={self.commands_answered_once}/{self.commands}"
        )


def in_reply_to(event: Event) -> str | None:
    relates = event.get("content", {}).get("m.relates_to") or {}
    target = (relates.get("m.in_reply_to") or {}).get("event_id")
    return str(target) if target else None


def reply_to(room: str, event_id: str) -> Any:
    def match(e: Event) -> bool:
        return e.get("room_id") == room and e.get("sender") == BOT and in_reply_to(e) == event_id

    return match


class CrashRun:
    def __init__(self, stack: DevStack, state: Path, kills: int, seed: int, clients: int) -> None:
        self.stack = stack
        self.state = state
        self.target_kills = kills
        self.rng = random.Random(seed)
        self.n_clients = clients
        self.tag = secrets.token_hex(3)
        self.tally = Tally()
        self.db_path = state / "alcove.db"
        self.proxy = FaultProxy(stack.dev_secrets["hs_port"])
        self.alcove: AlcoveProcess | None = None
        self.expected: Counter[tuple[str, str]] = Counter()
        self.commands: list[tuple[str, str, str]] = []  # (room, event id, what)
        self.session_rooms: list[str] = []
        self.faults_on = False
        self.mgmt = self.group = ""
        self.in_group = False
        self.people: list[Added] = []

    # ------------------------------------------------------------------ Alcove's life

    def db_count(self, query: str) -> int:
        with contextlib.closing(sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)) as db:
            return int(db.execute(query).fetchone()[0])

    async def start_alcove(self) -> None:
        assert self.alcove is not None
        for attempt in range(5):
            try:
                await self.alcove.start(timeout=120)
                return
            except RuntimeError as e:  # exited during start-up (e.g. a burst of 503s)
                self.tally.problems.append(f"Alcove exited during start-up: {str(e)[-300:]}")
                if attempt == 4:
                    raise
                await asyncio.sleep(1)

    async def kill(self, where: str) -> None:
        """SIGKILL Alcove; sometimes again while it starts up; then start it for good."""
        assert self.alcove is not None
        self.alcove.kill9()
        self.tally.kills += 1
        self.tally.kill_points[where] += 1
        if self.tally.kills < self.target_kills and self.rng.random() < 0.3:
            starting = asyncio.create_task(self.alcove.start(timeout=120))
            await asyncio.sleep(self.rng.uniform(0.05, 0.7))
            assert self.alcove.proc is not None
            if self.alcove.proc.poll() is None:
                self.alcove.kill9()
                self.tally.kills += 1
                self.tally.kill_points["start-up" if not starting.done() else "just ready"] += 1
            with contextlib.suppress(RuntimeError, TimeoutError):
                await starting
        await self.start_alcove()

    async def kill_point(
        self, where: str, blast_sent_before: int | None = None, now: bool = False
    ) -> None:
        """Kill (if kills remain) within 0.4 s, or once part of a blast went out, or ``now``:
        ``where`` says which moment this is."""
        if self.tally.kills >= self.target_kills:
            return
        if now:
            pass
        elif blast_sent_before is not None:  # wait until part of the blast went out
            goal = blast_sent_before + self.rng.randint(0, max(0, self.n_clients - 2))
            deadline = time.monotonic() + 20
            query = "SELECT COUNT(*) FROM outbox WHERE key LIKE 'blast:%' AND status = 'sent'"
            while time.monotonic() < deadline:
                if self.db_count(query) >= goal:
                    break
                await asyncio.sleep(0.01)
        else:
            await asyncio.sleep(self.rng.uniform(0.0, 0.4))
        await self.kill(where)

    async def bursts(self) -> None:
        """Short bursts between Alcove and Synapse: 429s, 503s, dropped connections, and requests
        Synapse carried out whose answers were lost (then the connections are dropped)."""
        while True:
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
            if not self.faults_on:
                continue
            self.tally.bursts += 1
            kind = self.rng.choice((HTTP429, HTTP503, "drop", SWALLOW))
            if kind == "drop":
                self.proxy.drop_connections()
                continue
            self.proxy.mode = kind
            await asyncio.sleep(self.rng.uniform(0.1, 0.8))
            self.proxy.mode = PASS
            if kind == SWALLOW:  # Synapse did it, the answer was lost: Alcove must resend
                self.proxy.drop_connections()

    # ------------------------------------------------------------------ the therapist's steps

    async def command(self, room: str, text: str, what: str, *, answered: bool = True) -> str:
        event_id = await self.therapist.send_text(room, text)
        if answered:
            self.commands.append((room, event_id, what))
        return event_id

    async def answer(self, room: str, event_id: str, what: str) -> Event | None:
        try:
            return await self.therapist.wait_for(reply_to(room, event_id), REPLY_TIMEOUT)
        except TimeoutError:
            self.tally.problems.append(f"no answer to {what} ({event_id}) in {REPLY_TIMEOUT:.0f} s")
            return None

    def blast_sent(self) -> int:
        return self.db_count(
            "SELECT COUNT(*) FROM outbox WHERE key LIKE 'blast:%' AND status = 'sent'"
        )

    def expect_everyone(self, text: str) -> None:
        for person in self.people:
            self.expected[(person.room_id, text)] += 1

    async def inline_blast(self, k: int) -> None:
        text = f"Inline blast {k} {self.tag}"
        before = self.blast_sent()
        command = await self.command(self.mgmt, f"!blast all {text}", "inline blast")
        self.expect_everyone(text)
        if self.rng.random() < 0.7:
            await self.kill_point("during a blast", blast_sent_before=before)
        else:
            await self.kill_point("after a command")
        await self.answer(self.mgmt, command, "inline blast")

    async def two_step_blast(self, k: int) -> None:
        text = f"Two-step blast {k} {self.tag}"
        where = self.rng.choice(("blast", "message", "yes"))
        first = await self.command(self.mgmt, "!blast all", "!blast all (two-step)")
        if where == "blast":
            await self.kill_point("after a command")
        await self.answer(self.mgmt, first, "!blast all (two-step)")
        message = await self.command(self.mgmt, text, "the two-step blast's message")
        if where == "message":
            await self.kill_point("after a command")
        await self.answer(self.mgmt, message, "the two-step blast's message")
        before = self.blast_sent()
        yes = await self.command(self.mgmt, "!yes", "!yes (two-step blast)")
        self.expect_everyone(text)
        if where == "yes":
            await self.kill_point("right after !yes", blast_sent_before=before)
        await self.answer(self.mgmt, yes, "!yes (two-step blast)")

    async def schedule(self, k: int) -> None:
        person = self.rng.choice(self.people)
        text = f"Reminder {k} {self.tag}"
        seconds = self.rng.randint(2, 8)
        command = await self.command(person.room_id, f"!schedule in {seconds}s {text}", "!schedule")
        self.expected[(person.room_id, text)] += 1
        if self.rng.random() < 0.4:  # as it fires (in the background while other steps run)
            await self.answer(person.room_id, command, "!schedule")
            due = time.monotonic() + seconds - 1.0  # the command went out ~1 s ago at most
            await asyncio.sleep(max(0.0, due - time.monotonic() + self.rng.uniform(0, 1.5)))
            await self.kill_point("as a scheduled message fires", now=True)
            return
        await self.kill_point("after a command")
        await self.answer(person.room_id, command, "!schedule")

    async def phrase(self, k: int) -> None:
        person = self.rng.choice(self.people)
        await self.command(person.room_id, f"!p {PHRASE}", "!p", answered=False)
        self.expected[(person.room_id, PHRASE_TEXT)] += 1
        await self.kill_point("after a command")

    async def group_change(self, k: int) -> None:
        first_name = NAMES[2].split()[0]
        verb = "remove" if self.in_group else "add"
        ask = await self.command(self.group, f"!group {verb} {first_name}", f"!group {verb}")
        if self.rng.random() < 0.3:
            await self.kill_point("after a command")
        await self.answer(self.group, ask, f"!group {verb}")
        yes = await self.command(self.group, "!yes", f"!yes (group {verb})")
        self.in_group = not self.in_group
        await self.kill_point("right after !yes")
        await self.answer(self.group, yes, f"!yes (group {verb})")

    async def session(self, k: int) -> None:
        person = self.people[3 + len(self.session_rooms) % (len(self.people) - 3)]
        first_name = NAMES[self.people.index(person)].split()[0]
        book = await self.command(self.mgmt, f"!session {first_name} now for 30m", "!session")
        reply = await self.answer(self.mgmt, book, "!session")
        found = re.search(r"matrix\.to/#/(!\S+)", str((reply or {}).get("content", {}).get("body")))
        if found is None:
            self.tally.problems.append(f"no session room in {reply}")
            return
        room = found[1]
        self.session_rooms.append(room)
        with contextlib.suppress(Exception):
            await self.therapist.send_text(room, f"Said in session {k} {self.tag}")
        await self.command(room, "!end", "!end", answered=False)
        await self.kill_point("during a session's purge")

    async def synapse_restart(self, k: int) -> None:
        """Synapse stops and starts while a blast is under way."""
        text = f"Blast across a Synapse restart {k} {self.tag}"
        command = await self.command(self.mgmt, f"!blast all {text}", "blast (Synapse restart)")
        self.expect_everyone(text)
        await asyncio.sleep(self.rng.uniform(0.05, 0.5))
        await asyncio.to_thread(self.stack.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(self.stack.start)
        self.tally.synapse_restarts += 1
        await self.answer(self.mgmt, command, "blast (Synapse restart)")

    # ------------------------------------------------------------------ the run

    async def setup(self, http: aiohttp.ClientSession) -> None:
        self.therapist = await MatrixUser(http, self.stack.homeserver_url, THERAPIST).login(
            self.stack.dev_secrets["passwords"]["therapist"]
        )
        self.mgmt = await management_room(self.therapist)
        self.people = await add_many(self.therapist, self.mgmt, NAMES[: self.n_clients])
        first_names = " ".join(n.split()[0] for n in NAMES[:2])
        create = await self.command(
            self.mgmt, f'!group create "Crash circle {self.tag}" {first_names}', "!group create"
        )
        created = await self.answer(self.mgmt, create, "!group create")
        body = str((created or {}).get("content", {}).get("body"))
        found = re.search(r"matrix\.to/#/(!\S+)", body)
        assert found, created
        self.group = found[1]
        add = await self.command(self.mgmt, f"!phrase add {PHRASE} {PHRASE_TEXT}", "!phrase add")
        await self.answer(self.mgmt, add, "!phrase add")

    async def recurring(self) -> float:
        """`!schedule every day HH:MM` for the next whole minute at least 40 s away (in the
        practice's time zone); returns when it is due. It must arrive exactly once."""
        tz = load_config(self.stack.config_path, environ={}).practice.timezone
        due = (datetime.now(tz) + timedelta(seconds=100)).replace(second=0, microsecond=0)
        person = self.people[1]
        text = f"Daily {self.tag}"
        command = await self.command(
            person.room_id, f"!schedule every day {due:%H:%M} {text}", "!schedule every"
        )
        self.expected[(person.room_id, text)] += 1
        await self.answer(person.room_id, command, "!schedule every")
        return due.timestamp()

    def plan(self, synapse_restarts: int) -> list[Any]:
        base = [self.inline_blast, self.two_step_blast, self.schedule, self.phrase]
        base += [self.group_change, self.session]
        self.rng.shuffle(base)
        steps: list[Any] = list(base)
        weighted = [self.inline_blast, self.inline_blast, self.two_step_blast, self.two_step_blast]
        weighted += [self.schedule, self.schedule]
        weighted += [self.phrase, self.group_change, self.session]
        while len(steps) < self.target_kills:
            steps.append(self.rng.choice(weighted))
        for _ in range(synapse_restarts):
            steps.insert(len(steps) // 2, self.synapse_restart)
        return steps

    async def quiesce(self, until: float, timeout: float = 180.0) -> None:
        """Faults off: wait until Alcove has nothing pending and the recurring message is due."""
        deadline = time.monotonic() + timeout + max(0.0, until - time.time())
        queries = (
            "SELECT COUNT(*) FROM outbox WHERE status = 'pending'",
            "SELECT COUNT(*) FROM inbox_event WHERE status = 'pending'",
            "SELECT COUNT(*) FROM scheduled_message WHERE status = 'pending' AND rule IS NULL",
            "SELECT COUNT(*) FROM scheduled_message WHERE rule IS NOT NULL AND fired_count = 0",
            "SELECT COUNT(*) FROM text_session WHERE status NOT IN ('ended', 'cancelled')",
        )
        while time.monotonic() < deadline:
            if time.time() > until + 5 and all(self.db_count(q) == 0 for q in queries):
                await asyncio.sleep(2.0)  # would a late duplicate still arrive?
                return
            await asyncio.sleep(0.5)
        self.tally.problems.append("Alcove still had work pending at the end")

    async def count(self, http: aiohttp.ClientSession) -> None:
        tally = self.tally
        readers = {p.room_id: await login(http, self.stack, p) for p in self.people}
        histories: dict[str, list[Event]] = {}
        for room in {room for room, _ in self.expected}:
            histories[room] = await readers[room].room_messages(room, limit=1000)
        for (room, text), want in self.expected.items():
            got = sum(
                1
                for e in histories[room]
                if e.get("sender") == THERAPIST and e.get("content", {}).get("body") == text
            )
            tally.expected += want
            tally.delivered += min(want, got)
            tally.lost += max(0, want - got)
            tally.duplicated += max(0, got - want)
            if got != want:
                tally.problems.append(f"{room}: {text!r} arrived {got} times, expected {want}")
        seen: dict[str, list[Event]] = {}
        for room, event_id, what in self.commands:
            if room not in seen:
                seen[room] = await self.therapist.room_messages(room, limit=1000)
            answers = [e for e in seen[room] if e.get("sender") == BOT]
            n = sum(1 for e in answers if in_reply_to(e) == event_id)
            tally.commands += 1
            if n == 1:
                tally.commands_answered_once += 1
            else:
                tally.problems.append(f"{what} ({event_id}) answered {n} times")
        if self.group:
            path = f"/_matrix/client/v3/rooms/{self.group}/state/m.room.member/"
            _, member = await self.therapist.raw("GET", path + self.people[2].user_id)
            joined = member.get("membership") == "join"
            if joined != self.in_group:
                tally.problems.append(f"group membership is {member.get('membership')}")
        tally.sessions = self.db_count("SELECT COUNT(*) FROM text_session")
        tally.sessions_purged = self.db_count(
            "SELECT COUNT(*) FROM text_session WHERE status = 'ended' AND purge_error IS NULL"
            " AND messages_purged IS NOT NULL"
        )
        for room in self.session_rooms:
            status, body = await self.therapist.raw(
                "GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"
            )
            if status == 200 and "Said in session" in str(body):
                tally.sessions_purged -= 1
                tally.problems.append(f"session room {room} still readable after its end")

    async def run(self, synapse_restarts: int, recurring: bool) -> Tally:
        config = load_config(self.stack.config_path, environ={})
        await self.proxy.start()
        self.alcove = AlcoveProcess(
            self.stack.config_path,
            self.proxy.url,
            f"sqlite:{self.db_path}",
            config.appservice.port,
            self.state / "alcove.log",
            log_level="INFO",
        )
        bursts = asyncio.create_task(self.bursts())
        try:
            await self.start_alcove()
            async with aiohttp.ClientSession() as http:
                await self.setup(http)
                due = await self.recurring() if recurring else 0.0
                self.faults_on = True
                for k, step in enumerate(self.plan(synapse_restarts)):
                    await step(k)
                    print(f"step {k}: {step.__name__}, kills so far {self.tally.kills}", flush=True)
                self.faults_on = False
                self.proxy.mode = PASS
                await self.quiesce(due)
                await self.count(http)
        finally:
            bursts.cancel()
            self.alcove.terminate()
            await self.proxy.stop()
        return self.tally


async def crash_suite(
    state: Path,
    kills: int,
    seed: int,
    clients: int = 8,
    synapse_restarts: int = 1,
    recurring: bool = True,
    stack: DevStack | None = None,
) -> Tally:
    """The whole suite; with ``stack`` (running, bootstrapped) it reuses that Synapse."""
    own = stack is None
    if stack is None:
        stack = DevStack(state / "stack", users=USERS)
        config = stack.prepare()
        stack.start()
    try:
        if own:
            await stack.bootstrap(config)
        run = CrashRun(stack, state, kills, seed, clients)
        return await run.run(synapse_restarts, recurring)
    finally:
        if own:
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--no-recurring", action="store_true")
    parser.add_argument("--state", type=Path, help="keep the stack's state and logs here")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="alcove-crash-") as tmp:
        state = args.state.resolve() if args.state else Path(tmp)
        state.mkdir(parents=True, exist_ok=True)
        tally = asyncio.run(
            crash_suite(state, args.kills, args.seed, args.clients, 1, not args.no_recurring)
        )
    for problem in tally.problems:
        print("problem:", problem)
    print("kill points:", ", ".join(f"{k} {v}" for k, v in sorted(tally.kill_points.items())))
    print(f"took {time.monotonic() - started:.0f} s (seed {args.seed})")
    print(tally.line())
    raise SystemExit(0 if tally.ok else 1)


if __name__ == "__main__":
    main()
