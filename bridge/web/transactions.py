"""The appservice endpoint Synapse pushes to: authenticate, parse, persist, then answer.

Nothing here handles events: ``Inbox.accept`` persists them and returns; processing happens
later in the inbox workers. Answering fast matters: one slow or failed transaction stalls
every later event (Synapse keeps one in flight and backs off up to 512 s, and retries a
transaction answered with any error, 4xx included). So nothing a user can put into an event
may fail a transaction: an event nested too deep to handle safely is dropped (logged,
counted) and the rest of its transaction is accepted."""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..inbox import Inbox
from ..matrix.gateway import TemporaryError
from ..metrics import Metrics

log = logging.getLogger("alcove.web.transactions")

MAX_EVENT_DEPTH = 64
"""Matrix events nest a few levels deep. Deeper ones are dropped: Python's JSON decoding,
encoding and any code walking the content recurse, and a RecursionError must never fail a
transaction (see the module docstring)."""
_TXN_NUMBER = re.compile(r"[0-9]{1,18}")  # ASCII digits only: '²'.isdigit() but int('²') fails
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},:]', re.DOTALL)


def matrix_error(status: int, errcode: str, error: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": error}, status=status)


class TransactionEndpoint:
    def __init__(
        self,
        hs_token: str,
        inbox: Inbox,
        metrics: Metrics,
        on_homeserver_restart: Callable[[str], None] | None = None,
        *,
        access_token_in_query: bool = False,
        extensions: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> None:
        """``extensions`` takes the appservice encryption extensions of each transaction
        (to-device events, device lists, one-time-key counts: bridge/crypto/machine.py) before
        its room events are persisted."""
        self._hs_token = hs_token.encode()
        self.access_token_in_query = access_token_in_query
        self.inbox = inbox
        self.metrics = metrics
        self.on_homeserver_restart = on_homeserver_restart
        self._last_txn: int | None = None
        self.extensions = extensions

    def routes(self) -> list[web.RouteDef]:
        return [
            web.put("/_matrix/app/v1/transactions/{txn_id}", self.put_transaction),
            web.put("/transactions/{txn_id}", self.put_transaction),  # legacy path
            web.post("/_matrix/app/v1/ping", self.ping),
            web.get("/_matrix/app/v1/users/{user_id}", self.query_not_found),
            web.get("/_matrix/app/v1/rooms/{alias}", self.query_not_found),
        ]

    def check_token(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else None
        if token is None and "access_token" in request.query:
            if not self.access_token_in_query:
                log.warning(
                    "The homeserver sent its hs_token as ?access_token=, which is refused (it "
                    "ends up in proxy logs): set use_appservice_legacy_authorization: false in "
                    "homeserver.yaml, or appservice.access_token_in_query: true in Alcove's config"
                )
                return matrix_error(
                    401, "M_UNAUTHORIZED", "Send hs_token in the Authorization header"
                )
            token = request.query["access_token"]
        if not token:
            return matrix_error(401, "M_UNAUTHORIZED", "Missing hs_token")
        if not hmac.compare_digest(token.encode(), self._hs_token):
            log.warning("Rejected a request with a wrong hs_token from %s", request.remote)
            return matrix_error(403, "M_FORBIDDEN", "Invalid hs_token")
        return None

    async def put_transaction(self, request: web.Request) -> web.Response:
        if (denied := self.check_token(request)) is not None:
            self.metrics.transactions.labels(outcome="unauthorized").inc()
            return denied
        txn_id = request.match_info["txn_id"]
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.metrics.transactions.labels(outcome="too_large").inc()
            log.error("Transaction %s is larger than the configured body limit", txn_id)
            return matrix_error(413, "M_TOO_LARGE", "Transaction body too large")
        try:
            body: Any = json.loads(raw)
        except (ValueError, UnicodeDecodeError):  # json.JSONDecodeError is a ValueError
            self.metrics.transactions.labels(outcome="bad_json").inc()
            return matrix_error(400, "M_NOT_JSON", "Body is not valid JSON")
        except RecursionError:
            found = _events_one_by_one(raw)
            if found is None:
                self.metrics.transactions.labels(outcome="bad_json").inc()
                return matrix_error(400, "M_NOT_JSON", "Body is nested too deep")
            body, undecodable = {"events": found[0]}, found[1]
        else:
            undecodable = 0
        if not isinstance(body, dict) or not isinstance(body.get("events", []), list):
            self.metrics.transactions.labels(outcome="bad_json").inc()
            return matrix_error(400, "M_BAD_JSON", "Body must be an object with an events list")
        given = [e for e in body.get("events", []) if isinstance(e, dict)]
        events = [e for e in given if _nests_within(e, MAX_EVENT_DEPTH)]
        if dropped := undecodable + len(given) - len(events):
            self.metrics.inbox_events.labels(outcome="too_deep").inc(dropped)
            log.warning(
                "Transaction %s: dropped %d events nested deeper than %d levels",
                txn_id,
                dropped,
                MAX_EVENT_DEPTH,
            )
        if self.extensions is not None and isinstance(body, dict):
            try:
                await self.extensions(body)
            except TemporaryError as e:  # only while starting: Synapse sends it again
                self.metrics.transactions.labels(outcome="not_ready").inc()
                return matrix_error(503, "M_NOT_READY", str(e))
        new = await self.inbox.accept(txn_id, events)
        self._watch_txn_ids(txn_id)
        self.metrics.transactions.labels(outcome="accepted").inc()
        log.debug("Transaction %s: %d events, %d new", txn_id, len(events), new)
        return web.json_response({})

    def _watch_txn_ids(self, txn_id: str) -> None:
        """Synapse numbers transactions upwards; a smaller number means it restarted (and may
        have dropped events it had queued in memory)."""
        if not _TXN_NUMBER.fullmatch(txn_id):
            return
        number = int(txn_id)
        if self._last_txn is not None and number < self._last_txn and self.on_homeserver_restart:
            self.on_homeserver_restart(
                f"transaction ids went back from {self._last_txn} to {number}"
            )
        self._last_txn = number

    async def ping(self, request: web.Request) -> web.Response:
        if (denied := self.check_token(request)) is not None:
            return denied
        return web.json_response({})

    async def query_not_found(self, request: web.Request) -> web.Response:
        if (denied := self.check_token(request)) is not None:
            return denied
        return matrix_error(404, "M_NOT_FOUND", "Alcove does not create users or rooms on demand")


def _nests_within(value: Any, limit: int) -> bool:
    """Whether ``value`` nests at most ``limit`` containers deep (level by level: no
    recursion, ~9 µs for a typical message event)."""
    level = [value]
    for _ in range(limit):
        deeper = []
        for item in level:
            for child in item.values() if isinstance(item, dict) else item:
                if isinstance(child, (dict, list)):
                    deeper.append(child)
        if not deeper:
            return True
        level = deeper
    return False


def _events_one_by_one(raw: bytes) -> tuple[list[Any], int] | None:
    """For a body ``json.loads`` cannot decode because something in it nests too deep: the
    elements of the top-level ``events`` array decoded one by one, and how many could not be.
    None if the body is not an object with an ``events`` array."""
    elements = _top_level_array(raw, b"events")
    if elements is None:
        return None
    events: list[Any] = []
    for element in elements:
        try:
            events.append(json.loads(element))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            continue
    return events, len(elements) - len(events)


def _top_level_array(raw: bytes, key: bytes) -> list[bytes] | None:
    """The source bytes of each element of the array under ``key`` in the top-level object,
    found by counting brackets outside strings (no recursion, so any depth is fine)."""
    depth = 0
    last_string: bytes | None = None
    elements: list[bytes] | None = None
    start = -1
    for token in _JSON_TOKEN.finditer(raw):
        char = token.group()
        if char.startswith(b'"'):
            if depth == 1:
                last_string = char[1:-1]  # a key, when an array follows
        elif char in (b"[", b"{"):
            depth += 1
            if depth == 2 and char == b"[" and last_string == key and elements is None:
                elements, start = [], token.end()
        elif char in (b"]", b"}"):
            if elements is not None and start >= 0 and depth == 2:
                if raw[start : token.start()].strip():
                    elements.append(raw[start : token.start()])
                start = -1  # the array is complete
            depth -= 1
        elif char == b"," and elements is not None and start >= 0 and depth == 2:
            elements.append(raw[start : token.start()])
            start = token.end()
    return elements
