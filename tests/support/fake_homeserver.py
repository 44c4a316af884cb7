"""A fast fake homeserver for driving Alcove at full speed (bench/ceiling.py, and tests that need
Alcove's real HTTP surface without Synapse's cost).

It answers every client-server and admin call Alcove makes at start-up, for commands and for
catch-up — immediately, from memory — and pushes events to Alcove the way Synapse does: one
appservice transaction in flight at a time, up to 100 events each, retried until Alcove answers
200. Like Synapse, it also pushes Alcove's own sent events back (the bot is in the room), so
the inbox carries the echo load it carries in production.

It keeps each room's timeline (for /messages, i.e. catch-up), its state, who joined, and which
event each message Alcove sent answers (``m.in_reply_to``), so a bench can count replies.
Unknown routes get 404 M_UNRECOGNIZED and are counted in ``unknown``: a bench should show them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp import web

MAX_EVENTS_PER_TRANSACTION = 100  # synapse/appservice/scheduler.py
TIMELINE_KEEP = 200  # per room, for /messages


def _error(status: int, errcode: str, error: str = "") -> web.Response:
    return web.json_response({"errcode": errcode, "error": error or errcode}, status=status)


class FakeHomeserver:
    def __init__(
        self,
        *,
        domain: str,
        as_token: str,
        hs_token: str,
        bot_user_id: str,
        appservice_url: str,
        appservice_id: str = "alcove",
        other_tokens: Iterable[str] = (),
        echo: bool = True,
    ) -> None:
        self.domain = domain
        self.as_token = as_token
        self.hs_token = hs_token
        self.bot = bot_user_id
        self.appservice_url = appservice_url.rstrip("/")
        self.appservice_id = appservice_id
        self.tokens = {as_token, *other_tokens}
        self.echo = echo
        self.users: set[str] = {bot_user_id}
        self.members: dict[str, set[str]] = defaultdict(set)
        self.state: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.timelines: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.calls: Counter[str] = Counter()
        self.unknown: Counter[str] = Counter()
        self.replies: Counter[str] = Counter()  # event id answered → how many answers
        self.sent_txns: dict[tuple[str, str], str] = {}  # (sender, txn id) → event id
        self.sent = 0
        self.pushed = 0
        self.transactions = 0
        self.push_failures = 0
        self.push_seconds = 0.0  # time with a transaction in flight (Alcove taking it)
        self.last_messages_at = 0.0
        self.first_joined_rooms_at = 0.0
        self._ids = itertools.count(1)
        self._txn = itertools.count(int(time.time()))
        self._queue: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._pusher: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._watch: tuple[set[str], asyncio.Future[float]] | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> str:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=120),
            connector=aiohttp.TCPConnector(limit=4),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._route)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        self._pusher = asyncio.create_task(self._push_loop(), name="fake-hs-push")
        return self.url

    async def stop(self) -> None:
        if self._pusher is not None:
            self._pusher.cancel()
            await asyncio.gather(self._pusher, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    # ------------------------------------------------------------------ what a bench does

    def event_id(self) -> str:
        return f"$fake{next(self._ids)}"

    def add_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """Put an event into its room's timeline (without pushing it)."""
        timeline = self.timelines[event["room_id"]]
        timeline.append(event)
        if len(timeline) > TIMELINE_KEEP * 2:
            del timeline[:TIMELINE_KEEP]
        return event

    def message(self, room_id: str, sender: str, body: str, **content: Any) -> dict[str, Any]:
        """A new m.text event in the room's timeline (not pushed: see ``push``)."""
        return self.add_event(
            {
                "type": "m.room.message",
                "room_id": room_id,
                "sender": sender,
                "event_id": self.event_id(),
                "origin_server_ts": int(time.time() * 1000),
                "content": {"msgtype": "m.text", "body": body, **content},
            }
        )

    def push(self, events: Iterable[dict[str, Any]]) -> None:
        """Queue events for Alcove, delivered in order in transactions as Synapse does."""
        self._queue.extend(events)
        if self._queue:
            self._idle.clear()
            self._wake.set()

    async def idle(self) -> None:
        """Until everything queued has been pushed and taken by Alcove."""
        await self._idle.wait()

    def join(self, room_id: str, user_id: str) -> None:
        self.members[room_id].add(user_id)

    def answered(self, event_ids: Iterable[str]) -> int:
        return sum(1 for e in event_ids if self.replies[e])

    def watch(self, event_ids: Iterable[str]) -> asyncio.Future[float]:
        """A future resolved with time.perf_counter() once every one of ``event_ids`` has been
        answered by a message from Alcove (one watch at a time)."""
        waiting = {e for e in event_ids if not self.replies[e]}
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if not waiting:
            fut.set_result(time.perf_counter())
        else:
            self._watch = (waiting, fut)
        return fut

    # ------------------------------------------------------------------ pushing to Alcove

    async def _push_loop(self) -> None:
        assert self._http is not None
        delay = 0.1
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
            batch = self._queue[:MAX_EVENTS_PER_TRANSACTION]
            body = json.dumps({"events": batch}).encode()
            url = f"{self.appservice_url}/_matrix/app/v1/transactions/{next(self._txn)}"
            started = time.perf_counter()
            while True:  # the same transaction until Alcove takes it, as Synapse does
                try:
                    async with self._http.put(
                        url,
                        data=body,
                        headers={
                            "Authorization": f"Bearer {self.hs_token}",
                            "Content-Type": "application/json",
                        },
                    ) as resp:
                        await resp.read()
                        if resp.status == 200:
                            break
                except (aiohttp.ClientError, OSError, TimeoutError):
                    pass
                self.push_failures += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            delay = 0.1
            self.push_seconds += time.perf_counter() - started
            del self._queue[: len(batch)]
            self.transactions += 1
            self.pushed += len(batch)

    # ------------------------------------------------------------------ answering Alcove

    async def _route(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        if header[7:] not in self.tokens and not request.path.endswith("/versions"):
            return _error(401, "M_UNKNOWN_TOKEN")
        user = request.query.get("user_id") or self.bot
        parts = request.path.strip("/").split("/")
        method = request.method
        body: dict[str, Any] = {}
        if request.can_read_body and method in ("PUT", "POST", "DELETE"):
            raw = await request.read()
            if raw and request.content_type == "application/json":
                body = json.loads(raw)
        handler = self._handler(method, parts)
        if handler is None:
            self.unknown[f"{method} {'/'.join(parts[:4])}"] += 1
            return _error(404, "M_UNRECOGNIZED", "Unrecognized request")
        name, fn = handler
        self.calls[name] += 1
        result = fn(user, parts, body, request)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, web.Response)
        return result

    def _handler(self, method: str, p: list[str]) -> tuple[str, Any] | None:
        n = len(p)
        if p[:2] == ["_matrix", "client"] and n >= 4:
            api = p[3:]
            head = api[0]
            if head == "rooms" and len(api) >= 3:
                what = api[2]
                if what == "send" and method == "PUT":
                    return "send", self._send
                if what == "state" and method == "GET" and len(api) == 3:
                    return "room_state", self._room_state
                if what == "state":
                    return (
                        ("put_state", self._put_state)
                        if method == "PUT"
                        else (
                            "get_state",
                            self._get_state,
                        )
                    )
                if what == "members":
                    return "members", self._members
                if what == "messages":
                    return "messages", self._messages
                if what in ("invite", "kick", "leave", "forget"):
                    return what, self._membership
                if what == "redact":
                    return "redact", self._redact
            if head == "join":
                return "join", self._membership
            if head == "profile":
                return (
                    ("set_profile", self._ok)
                    if method == "PUT"
                    else (
                        "get_profile",
                        self._get_profile,
                    )
                )
            if head == "joined_rooms":
                return "joined_rooms", self._joined_rooms
            if head == "createRoom":
                return "create_room", self._create_room
            if head == "register":
                return "register", self._register
            if head == "account" and api[1:] == ["whoami"]:
                return "whoami", self._whoami
            if head == "devices":
                return "device", self._ok
            if head == "user" and "account_data" in api:
                return (
                    ("set_account_data", self._ok)
                    if method == "PUT"
                    else (
                        "get_account_data",
                        self._not_found,
                    )
                )
            if head == "appservice" and api[-1:] == ["ping"]:
                return "ping", self._ping
        if p[:3] == ["_matrix", "client", "versions"]:
            return "versions", self._versions
        if p[:2] == ["_synapse", "admin"] and n >= 4:
            if p[3] == "users" and n == 6 and p[5] == "admin":
                return "admin_check", self._is_admin
            if p[3] == "users" and n == 6 and p[5] == "devices":
                return "admin_device", self._ok
            if p[3] == "users" and n == 5:
                return (
                    ("admin_user_put", self._admin_user_put)
                    if method == "PUT"
                    else (
                        "admin_user_get",
                        self._admin_user_get,
                    )
                )
            if p[3] == "media":
                return "delete_media", self._ok
            if p[3] == "rooms" and method == "DELETE":
                return "delete_room", self._delete_room
            if p[3] == "rooms" and "delete_status" in p:
                return "delete_status", self._delete_status
        if p[:3] == ["_matrix", "media", "v3"] and p[3:4] == ["upload"]:
            return "upload", self._upload
        return None

    def _ok(self, *_: Any) -> web.Response:
        return web.json_response({})

    def _not_found(self, *_: Any) -> web.Response:
        return _error(404, "M_NOT_FOUND")

    def _versions(self, *_: Any) -> web.Response:
        return web.json_response({"versions": ["v1.11", "v1.12"]})

    def _whoami(self, user: str, *_: Any) -> web.Response:
        return web.json_response({"user_id": user, "device_id": "FAKE"})

    def _register(self, _user: str, _p: list[str], body: dict[str, Any], *_: Any) -> web.Response:
        user_id = f"@{body.get('username')}:{self.domain}"
        if user_id in self.users:
            return _error(400, "M_USER_IN_USE")
        self.users.add(user_id)
        return web.json_response({"user_id": user_id})

    def _is_admin(self, *_: Any) -> web.Response:
        return web.json_response({"admin": True})

    def _admin_user_put(self, _user: str, p: list[str], *_: Any) -> web.Response:
        self.users.add(p[4])
        return web.json_response({"name": p[4]})

    def _admin_user_get(self, _user: str, p: list[str], *_: Any) -> web.Response:
        return web.json_response({"name": p[4]}) if p[4] in self.users else self._not_found()

    def _get_profile(self, _user: str, p: list[str], *_: Any) -> web.Response:
        return web.json_response({"displayname": "Alcove" if p[4] == self.bot else p[4]})

    async def _ping(self, *_: Any) -> web.Response:
        """Like Synapse: call the appservice's ping endpoint now, answer with the round trip."""
        assert self._http is not None
        start = time.perf_counter()
        async with self._http.post(
            f"{self.appservice_url}/_matrix/app/v1/ping",
            json={"transaction_id": "fake"},
            headers={"Authorization": f"Bearer {self.hs_token}"},
        ) as resp:
            await resp.read()
            if resp.status != 200:
                return _error(502, "M_BAD_STATUS")
        return web.json_response({"duration_ms": int((time.perf_counter() - start) * 1000)})

    def _send(
        self, user: str, p: list[str], body: dict[str, Any], request: web.Request
    ) -> web.Response:
        room_id, event_type, txn = p[4], p[6], p[7]
        known = self.sent_txns.get((user, txn))
        if known is not None:
            return web.json_response({"event_id": known})
        event = self.add_event(
            {
                "type": event_type,
                "room_id": room_id,
                "sender": user,
                "event_id": self.event_id(),
                "origin_server_ts": int(time.time() * 1000),
                "content": body,
                "unsigned": {"transaction_id": txn},
            }
        )
        self.sent_txns[(user, txn)] = event["event_id"]
        self.sent += 1
        answers = ((body.get("m.relates_to") or {}).get("m.in_reply_to") or {}).get("event_id")
        if isinstance(answers, str):
            self.replies[answers] += 1
            if self._watch is not None and answers in self._watch[0]:
                self._watch[0].discard(answers)
                if not self._watch[0] and not self._watch[1].done():
                    self._watch[1].set_result(time.perf_counter())
        if self.echo and self.bot in self.members[room_id]:
            self.push((event,))
        return web.json_response({"event_id": event["event_id"]})

    def _state_event(self, user: str, room_id: str, etype: str, key: str, content: Any) -> str:
        self.state[(room_id, etype, key)] = content
        event = self.add_event(
            {
                "type": etype,
                "state_key": key,
                "room_id": room_id,
                "sender": user,
                "event_id": self.event_id(),
                "origin_server_ts": int(time.time() * 1000),
                "content": content,
            }
        )
        return str(event["event_id"])

    def _put_state(self, user: str, p: list[str], body: dict[str, Any], *_: Any) -> web.Response:
        key = p[7] if len(p) > 7 else ""
        return web.json_response({"event_id": self._state_event(user, p[4], p[6], key, body)})

    def _get_state(self, _user: str, p: list[str], *_: Any) -> web.Response:
        found = self.state.get((p[4], p[6], p[7] if len(p) > 7 else ""))
        return web.json_response(found) if found is not None else self._not_found()

    def _room_state(self, _user: str, p: list[str], *_: Any) -> web.Response:
        return web.json_response(
            [
                {"type": t, "state_key": k, "content": c, "room_id": r}
                for (r, t, k), c in self.state.items()
                if r == p[4]
            ]
        )

    def _members(self, _user: str, p: list[str], *_: Any) -> web.Response:
        chunk = [
            {"type": "m.room.member", "state_key": k, "content": c}
            for (r, t, k), c in self.state.items()
            if r == p[4] and t == "m.room.member"
        ]
        return web.json_response({"chunk": chunk})

    def _create_room(self, user: str, _p: list[str], body: dict[str, Any], *_: Any) -> web.Response:
        room_id = f"!fake{next(self._ids)}:{self.domain}"
        self.join(room_id, user)
        levels = {"users": {user: 100}, **(body.get("power_level_content_override") or {})}
        self._state_event(user, room_id, "m.room.power_levels", "", levels)
        for invitee in body.get("invite", []):
            self._state_event(user, room_id, "m.room.member", invitee, {"membership": "invite"})
        return web.json_response({"room_id": room_id})

    def _membership(self, user: str, p: list[str], body: dict[str, Any], *_: Any) -> web.Response:
        if p[3] == "join":
            room_id, what, target = p[4], "join", user
        else:
            room_id, what = p[4], p[5]
            target = str(body.get("user_id", user))
        membership = {"invite": "invite", "kick": "leave", "leave": "leave", "join": "join"}
        if what in ("join",):
            self.join(room_id, target)
        elif what in ("kick", "leave"):
            self.members[room_id].discard(target)
        if what in membership:
            self._state_event(
                user, room_id, "m.room.member", target, {"membership": membership[what]}
            )
        return web.json_response({"room_id": room_id} if what == "join" else {})

    def _redact(self, *_: Any) -> web.Response:
        return web.json_response({"event_id": self.event_id()})

    def _joined_rooms(self, user: str, *_: Any) -> web.Response:
        if not self.first_joined_rooms_at:
            self.first_joined_rooms_at = time.perf_counter()
        rooms = [room for room, members in self.members.items() if user in members]
        return web.json_response({"joined_rooms": rooms})

    def _messages(self, _user: str, p: list[str], _b: Any, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "10"))
        timeline = self.timelines.get(p[4], [])
        chunk = list(reversed(timeline[-limit:]))  # dir=b: newest first
        self.last_messages_at = time.perf_counter()
        return web.json_response({"chunk": chunk, "start": "s0"})

    def _upload(self, *_: Any) -> web.Response:
        return web.json_response({"content_uri": f"mxc://{self.domain}/fake{next(self._ids)}"})

    def _delete_room(self, *_: Any) -> web.Response:
        return web.json_response({"delete_id": f"del{next(self._ids)}"})

    def _delete_status(self, *_: Any) -> web.Response:
        return web.json_response({"status": "complete"})
