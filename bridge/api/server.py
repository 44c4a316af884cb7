"""The HTTP API under /_alcove/v1/ on its own listener: bearer tokens with scopes (compared in
constant time, never logged), requests validated by the models of ``bridge.api.spec``, and the
same services the bot commands use (ConversationService, SessionService)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from mautrix.util.async_db import Database
from pydantic import BaseModel, ValidationError

from bots.features.conversations.repo import Client
from bots.features.conversations.service import ConversationService, normalise_email
from bots.features.sessions.repo import CANCELLED, PREPARED, SCHEDULED, Session
from bots.features.sessions.service import SessionService

from ..clock import Clock, ms
from ..config import ApiToken, Config
from ..db.audit_repo import AuditLog
from ..matrix.gateway import MatrixSendError
from . import models as m
from .calendar import calendar_feed
from .idempotency import IdempotencyRepo
from .spec import OPERATIONS, PREFIX, Operation, openapi_json

log = logging.getLogger("alcove.api")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[m.ErrorDetail] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []

    def response(self) -> web.Response:
        body = m.ErrorResponse(
            error=m.Error(code=self.code, message=self.message, details=self.details)
        )
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return web.json_response(body.model_dump(mode="json"), status=self.status, headers=headers)


def invalid(where: list[str | int], message: str, kind: str = "value_error") -> ApiError:
    """A 422 naming the field."""
    return ApiError(
        422,
        "invalid_request",
        f"{'.'.join(map(str, where))}: {message}",
        [m.ErrorDetail(loc=where, msg=message, type=kind)],
    )


def _from_pydantic(e: ValidationError, where: str) -> ApiError:
    details = [
        m.ErrorDetail(
            loc=[where, *(p if isinstance(p, int) else str(p) for p in err["loc"])],
            msg=err["msg"],
            type=err["type"],
        )
        for err in e.errors(include_url=False, include_input=False)
    ]
    if where == "body" and any(d.type == "json_invalid" for d in details):
        return ApiError(400, "invalid_json", "The request body is not valid JSON", details)
    first = details[0] if details else None
    summary = f"{'.'.join(map(str, first.loc))}: {first.msg}" if first else "invalid"
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return ApiError(422, "invalid_request", summary + more, details)


@dataclass
class Call:
    """One validated request."""

    token: ApiToken | None
    body: Any = None
    query: Any = None
    params: Any = None
    header: Any = None

    @property
    def actor(self) -> str:
        return f"api:{self.token.name}" if self.token else "api"


Handler = Callable[[Call], Awaitable[tuple[int, BaseModel | str]]]


def _time(at_ms: int) -> datetime:
    return datetime.fromtimestamp(at_ms / 1000, UTC)


class ApiHandlers:
    """One method per operation (named by its operationId)."""

    def __init__(
        self,
        config: Config,
        db: Database,
        conversations: ConversationService,
        sessions: SessionService,
        audit: AuditLog,
        clock: Clock,
    ) -> None:
        self.config = config
        self.conversations = conversations
        self.sessions = sessions
        self.audit = audit
        self.clock = clock
        self.idempotency = IdempotencyRepo(db)

    # ------------------------------------------------------------------ helpers

    def _therapist(self, user_id: str, where: list[str | int]) -> str:
        member = self.config.staff_member(user_id)
        if member is None or member.role != "therapist":
            raise invalid(where, f"{user_id} is not a therapist in Alcove's staff list")
        return user_id

    async def _client(self, client_id: str) -> Client:
        client = await self.conversations.client(client_id)
        if client is None:
            raise ApiError(404, "not_found", f"No client {client_id}")
        return client

    async def _client_out(self, client: Client) -> m.ClientOut:
        room = await self.conversations.dm_of(client.therapist_id, client.user_id)
        return m.ClientOut(
            client_id=client.user_id,
            therapist=client.therapist_id,
            initials=client.initials,
            email=client.email,
            external_id=client.external_id,
            room_id=room.room_id if room else None,
        )

    async def _by_external_id(self, therapist: str, external_id: str | None) -> Client | None:
        if external_id is None:
            return None
        for client in await self.conversations.clients_of(therapist):
            if client.external_id == external_id:
                return client
        return None

    async def _session(self, booking_id: int) -> Session:
        session = await self.sessions.repo.get(booking_id)
        if session is None:
            raise ApiError(404, "not_found", f"No booking {booking_id}")
        return session

    @staticmethod
    def _booking(s: Session) -> m.BookingOut:
        return m.BookingOut(
            booking_id=s.id,
            therapist=s.therapist_id,
            clients=list(s.clients),
            start=_time(s.start_at),
            end=_time(s.end_at),
            status=s.status,
            room_id=s.room_id,
        )

    # ------------------------------------------------------------------ clients

    async def _email(
        self, email: str | None, where: list[str | int], client_id: str | None = None
    ) -> str | None:
        """The address as the homeserver keeps it, checked before anything is created: 422 if
        it is not one address, 409 if it is another account's."""
        if email is None:
            return None
        try:
            email = normalise_email(email)
        except ValueError as e:
            raise invalid(where, str(e)) from e
        if problem := await self.conversations.email_problem(email, client_id):
            raise ApiError(
                409, "conflict", problem, [m.ErrorDetail(loc=where, msg=problem, type="conflict")]
            )
        return email

    async def create_client(self, call: Call) -> tuple[int, BaseModel]:
        body: m.ClientCreate = call.body
        therapist = self._therapist(body.therapist, ["body", "therapist"])
        email = await self._email(body.email, ["body", "email"])
        existing = await self._by_external_id(therapist, body.external_id)
        if existing is not None:
            raise ApiError(
                409,
                "conflict",
                f"This therapist already has a client with this external_id: {existing.user_id}",
                [m.ErrorDetail(loc=["body", "external_id"], msg="already used", type="conflict")],
            )
        key = call.header.idempotency_key or str(uuid.uuid4())
        origin = f"{call.actor}:{key}"
        new = await self.conversations.add_client(
            therapist, body.full_name, email, origin, body.external_id
        )
        problem = await self.conversations.introduce(therapist, new, f"secret:{origin}")
        out = await self._client_out(new.client)
        return 201, m.ClientCreated(**out.model_dump(), initial_password_sent=problem is None)

    async def list_clients(self, call: Call) -> tuple[int, BaseModel]:
        therapist = self._therapist(call.query.therapist, ["query", "therapist"])
        clients = await self.conversations.clients_of(therapist)
        return 200, m.ClientList(clients=[await self._client_out(c) for c in clients])

    async def get_client(self, call: Call) -> tuple[int, BaseModel]:
        return 200, await self._client_out(await self._client(call.params.client_id))

    async def update_client_email(self, call: Call) -> tuple[int, BaseModel]:
        client = await self._client(call.params.client_id)
        email = await self._email(call.body.email, ["body", "email"], client.user_id)
        client = await self.conversations.set_client_email(client, email, call.actor)
        return 200, await self._client_out(client)

    async def erase_client(self, call: Call) -> tuple[int, BaseModel]:
        client = await self._client(call.params.client_id)
        if live := await self.sessions.live_with(client.user_id):
            raise ApiError(
                409,
                "conflict",
                f"The client is in booking(s) {', '.join(map(str, live))} that have not ended: "
                "cancel them (DELETE /bookings/{id}) or wait for their end, then erase",
            )
        rooms = await self.conversations.erase_client(client, call.actor)
        return 200, m.ErasureOut(client_id=client.user_id, rooms_left=rooms)

    # ------------------------------------------------------------------ bookings

    async def create_booking(self, call: Call) -> tuple[int, BaseModel]:
        body: m.BookingCreate = call.body
        therapist = self._therapist(body.therapist, ["body", "therapist"])
        if body.start <= self.clock.now():
            raise invalid(["body", "start"], "must be in the future")
        origin = f"{call.actor}:{call.header.idempotency_key}"
        if body.client_id is not None:
            client = await self.conversations.client(body.client_id)
            if client is None or client.therapist_id != therapist:
                raise invalid(["body", "client_id"], "no client of this therapist has this ID")
        else:
            new_client = body.new_client
            assert new_client is not None
            client = await self._by_external_id(therapist, new_client.external_id)
            if client is None:
                email = await self._email(new_client.email, ["body", "new_client", "email"])
                new = await self.conversations.add_client(
                    therapist,
                    new_client.full_name,
                    email,
                    f"{origin}:client",
                    new_client.external_id,
                )
                await self.conversations.introduce(therapist, new, f"secret:{origin}:client")
                client = new.client
        session = await self.sessions.book(
            therapist, [client], body.start, body.duration_minutes, origin
        )
        return 201, self._booking(session)

    async def list_bookings(self, call: Call) -> tuple[int, BaseModel]:
        therapist = self._therapist(call.query.therapist, ["query", "therapist"])
        sessions = await self.sessions.of_therapist(therapist)
        return 200, m.BookingList(bookings=[self._booking(s) for s in sessions])

    async def cancel_booking(self, call: Call) -> tuple[int, BaseModel]:
        session = await self._session(call.params.booking_id)
        if session.status not in (SCHEDULED, PREPARED, CANCELLED):
            raise ApiError(409, "conflict", f"Booking {session.id} has started ({session.status})")
        await self.sessions.cancel(session.therapist_id, session.id)
        return 200, self._booking(await self._session(session.id))

    async def get_receipt(self, call: Call) -> tuple[int, BaseModel]:
        session = await self._session(call.params.booking_id)
        for entry in await self.audit.entries("session.purged", session.therapist_id):
            d = entry.detail
            if d.get("session") != session.id:
                continue
            return 200, m.ReceiptOut(
                booking_id=session.id,
                room_id=entry.room_id,
                start=_time(int(d["start"])),
                end=_time(int(d["end"])),
                ended_at=_time(entry.at),
                reason=str(d.get("reason", "")),
                messages_purged=int(d.get("messages_purged", 0)),
                files_purged=int(d.get("files_purged", 0)),
                purge_id=d.get("purge_id"),
                status=str(d.get("status", "")),
            )
        raise ApiError(
            409,
            "conflict",
            f"Booking {session.id} has no deletion receipt ({session.status}): a session gets "
            "one when it has ended and its room was purged",
        )

    # ------------------------------------------------------------------ calendar

    async def calendar_feed(self, call: Call) -> tuple[int, str]:
        therapist = None
        for feed in self.config.api.calendars:  # every one compared: constant time
            if hmac.compare_digest(feed.token.encode(), call.params.token.encode()):
                therapist = feed.therapist
        if therapist is None:
            raise ApiError(404, "not_found", "No such calendar")
        sessions = await self.sessions.of_therapist(therapist)  # not ended, not cancelled
        initials: dict[str, str] = {}
        for s in sessions:
            for cid in s.clients:
                client = await self.conversations.client(cid)
                initials[cid] = client.initials if client else "?"
        return 200, calendar_feed(self.config, sessions, initials, self.clock.now())


# --------------------------------------------------------------------------- the application


def _combined(errors: list[ApiError]) -> ApiError:
    """One answer for every invalid part (a body that is not JSON: 400, else 422)."""
    if len(errors) == 1:
        return errors[0]
    details = [d for e in errors for d in e.details]
    status = 400 if any(e.status == 400 for e in errors) else 422
    code = "invalid_json" if status == 400 else "invalid_request"
    summary = "; ".join(e.message for e in errors)
    return ApiError(status, code, summary, details)


def _route(request: web.Request) -> str:
    """The route's template, for logs: a calendar feed's path holds its secret token."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


def _authenticate(request: web.Request, tokens: tuple[ApiToken, ...]) -> ApiToken:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(401, "unauthorized", "Send Authorization: Bearer <token>")
    found = None
    for token in tokens:  # every one compared, so the time says nothing about which matched
        if hmac.compare_digest(token.token.encode(), given.strip().encode()):
            found = token
    if found is None:
        raise ApiError(401, "unauthorized", "The bearer token is not valid")
    return found


def _validate(model: type[BaseModel] | None, data: Any, where: str) -> Any:
    if model is None:
        return None
    try:
        if where == "body":
            return model.model_validate_json(data)
        return model.model_validate(data)
    except ValidationError as e:
        raise _from_pydantic(e, where) from None


def _query(request: web.Request, model: type[BaseModel] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in request.query:
        values = request.query.getall(name)
        if len(values) > 1:
            raise invalid(["query", name], "given more than once")
        out[name] = values[0]
    return out


def _header(request: web.Request, model: type[BaseModel] | None) -> dict[str, str]:
    if model is None:
        return {}
    names = [f.alias or n for n, f in model.model_fields.items()]
    return {n: request.headers[n] for n in names if n in request.headers}


class Api:
    def __init__(self, config: Config, handlers: ApiHandlers) -> None:
        self.config = config
        self.handlers = handlers
        self.document = openapi_json()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024, middlewares=[self._errors])
        for op in OPERATIONS:
            app.router.add_route(op.method, PREFIX + op.path, self._endpoint(op))
        app.router.add_get(f"{PREFIX}/openapi.json", self._openapi)
        return app

    async def _openapi(self, _: web.Request) -> web.Response:
        return web.Response(text=self.document, content_type="application/json")

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as e:
            return e.response()
        except web.HTTPException as e:
            if e.status >= 400:
                code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}
                return ApiError(
                    e.status, code.get(e.status, "invalid_request"), e.reason
                ).response()
            raise
        except MatrixSendError as e:
            log.warning("API %s %s: the homeserver failed: %s", request.method, _route(request), e)
            return web.json_response(
                {"error": {"code": "homeserver_unavailable", "message": "Try again later"}},
                status=503,
                headers={"Retry-After": "5"},
            )
        except Exception:  # a bug: logged (no request body), answered in JSON
            log.exception("API %s %s failed", request.method, _route(request))
            return web.json_response(
                {"error": {"code": "internal", "message": "Alcove failed; see its log"}},
                status=500,
            )

    def _endpoint(self, op: Operation) -> Callable[[web.Request], Awaitable[web.Response]]:
        method: Handler = getattr(self.handlers, op.name)

        async def endpoint(request: web.Request) -> web.Response:
            token = None
            if op.scope is not None:
                token = _authenticate(request, self.config.api.tokens)
                if op.scope not in token.scopes:
                    raise ApiError(403, "forbidden", f"This token lacks the scope {op.scope}")
            call = Call(token)
            if op.query is None and request.query:
                raise invalid(["query", next(iter(request.query))], "unknown parameter")
            raw = await request.read() if op.body is not None else b""
            errors: list[ApiError] = []  # every part checked: all that is wrong, at once
            parts = (
                ("params", op.params, dict(request.match_info), "path"),
                ("query", op.query, _query(request, op.query), "query"),
                ("header", op.header, _header(request, op.header), "header"),
                ("body", op.body, raw, "body"),
            )
            for attribute, model, data, where in parts:
                try:
                    setattr(call, attribute, _validate(model, data, where))
                except ApiError as e:
                    errors.append(e)
            if errors:
                raise _combined(errors)
            if getattr(call.header, "idempotency_key", None) is not None:
                return await self._idempotent(op, call, method)
            status, result = await method(call)
            return _respond(status, result)

        return endpoint

    async def _idempotent(self, op: Operation, call: Call, method: Handler) -> web.Response:
        assert call.token is not None
        key = call.header.idempotency_key
        canonical = json.dumps(call.body.model_dump(mode="json"), sort_keys=True)
        request_hash = hashlib.sha256(f"{op.name}\n{canonical}".encode()).hexdigest()
        repo = self.handlers.idempotency
        stored = await repo.claim(call.token.name, key, request_hash, ms(self.handlers.clock))
        if stored.request_hash != request_hash:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "This Idempotency-Key was used for a different request: use a new key",
                [
                    m.ErrorDetail(
                        loc=["header", "Idempotency-Key"],
                        msg="used before with another body",
                        type="idempotency_key_reused",
                    )
                ],
            )
        if stored.status is not None and stored.response is not None:
            return web.json_response(
                text=stored.response, status=stored.status, headers={"Idempotent-Replayed": "true"}
            )
        # New, or an earlier attempt that did not finish: (re)run; the services key every
        # step on the same origin, so nothing is created twice.
        try:
            status, result = await method(call)
        except ApiError:
            await repo.release(call.token.name, key)
            raise
        response = _respond(status, result)
        assert isinstance(result, BaseModel)
        await repo.answer(call.token.name, key, status, result.model_dump_json())
        return response


def _respond(status: int, result: BaseModel | str) -> web.Response:
    if isinstance(result, str):
        return web.Response(text=result, status=status, content_type="text/calendar")
    return web.json_response(text=result.model_dump_json(), status=status)
