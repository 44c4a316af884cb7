"""The appservice endpoint Synapse pushes to: authenticate, parse, persist, then answer.

Nothing here handles events: ``Inbox.accept`` persists them and returns; processing happens
later in the inbox workers. Answering fast matters: one slow or failed transaction stalls
every later event (Synapse keeps one in flight and backs off up to 512 s)."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..inbox import Inbox
from ..metrics import Metrics

log = logging.getLogger("alcove.web.transactions")


def matrix_error(status: int, errcode: str, error: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": error}, status=status)


class TransactionEndpoint:
    def __init__(
        self,
        hs_token: str,
        inbox: Inbox,
        metrics: Metrics,
        on_homeserver_restart: Callable[[str], None] | None = None,
    ) -> None:
        self._hs_token = hs_token.encode()
        self.inbox = inbox
        self.metrics = metrics
        self.on_homeserver_restart = on_homeserver_restart
        self._last_txn: int | None = None

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
        token = header[7:] if header.startswith("Bearer ") else request.query.get("access_token")
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
            body: Any = await request.json()
        except web.HTTPRequestEntityTooLarge:
            self.metrics.transactions.labels(outcome="too_large").inc()
            log.error("Transaction %s is larger than the configured body limit", txn_id)
            return matrix_error(413, "M_TOO_LARGE", "Transaction body too large")
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.metrics.transactions.labels(outcome="bad_json").inc()
            return matrix_error(400, "M_NOT_JSON", "Body is not valid JSON")
        if not isinstance(body, dict) or not isinstance(body.get("events", []), list):
            self.metrics.transactions.labels(outcome="bad_json").inc()
            return matrix_error(400, "M_BAD_JSON", "Body must be an object with an events list")
        events = [e for e in body.get("events", []) if isinstance(e, dict)]
        new = await self.inbox.accept(txn_id, events)
        self._watch_txn_ids(txn_id)
        self.metrics.transactions.labels(outcome="accepted").inc()
        log.debug("Transaction %s: %d events, %d new", txn_id, len(events), new)
        return web.json_response({})

    def _watch_txn_ids(self, txn_id: str) -> None:
        """Synapse numbers transactions upwards; a smaller number means it restarted (and may
        have dropped events it had queued in memory)."""
        if not txn_id.isdigit():
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
