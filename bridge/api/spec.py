"""The API's operations, declared once: each names its path, scope, and the pydantic models of
its parameters, body and answer. The server validates with these (``bridge.api.server``) and
the OpenAPI 3.1 document is generated from them (``openapi_document``); nothing is written
twice. ``python -m bridge.api.spec`` prints the document (checked in as docs/openapi.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from . import models as m

PREFIX = "/_alcove/v1"
API_VERSION = "1.0.0"


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    """Below PREFIX, with {name} parameters (aiohttp's syntax, and OpenAPI's)."""
    name: str
    """The operationId, and the name of its handler method in ``ApiHandlers``."""
    summary: str
    scope: str | None
    """The bearer token's scope it needs; None: the secret is in the URL (calendar feeds)."""
    response: type[BaseModel] | None
    """The answer's model; None: text/calendar."""
    status: int = 200
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    params: type[BaseModel] | None = None
    header: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    """The 4xx answers it may give besides 400/401/403/422 (which every one may)."""


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST",
        "/clients",
        "create_client",
        "Add a client: a managed account, their 1:1 with the therapist and its welcome",
        "clients:write",
        m.ClientCreated,
        status=201,
        body=m.ClientCreate,
        header=m.OptionalIdempotencyHeader,
        errors=(409,),
    ),
    Operation(
        "GET",
        "/clients",
        "list_clients",
        "A therapist's clients",
        "read",
        m.ClientList,
        query=m.TherapistQuery,
    ),
    Operation(
        "GET",
        "/clients/{client_id}",
        "get_client",
        "One client",
        "read",
        m.ClientOut,
        params=m.ClientPath,
        errors=(404,),
    ),
    Operation(
        "PATCH",
        "/clients/{client_id}",
        "update_client_email",
        "Change (or remove, with null) a client's email address",
        "clients:write",
        m.ClientOut,
        params=m.ClientPath,
        body=m.ClientEmail,
        errors=(404, 409),
    ),
    Operation(
        "DELETE",
        "/clients/{client_id}",
        "erase_client",
        "Erase a client for good (the right to be forgotten): removed from every room, the "
        "account deactivated with erasure on the homeserver, deleted from Alcove's database; "
        "the audit log keeps ID-only rows",
        "clients:write",
        m.ErasureOut,
        params=m.ClientPath,
        errors=(404, 409),
    ),
    Operation(
        "POST",
        "/bookings",
        "create_booking",
        "Book a text-only session (for a new client: the client, their 1:1 and its welcome "
        "first). Needs an Idempotency-Key",
        "bookings:write",
        m.BookingOut,
        status=201,
        body=m.BookingCreate,
        header=m.IdempotencyHeader,
        errors=(409,),
    ),
    Operation(
        "GET",
        "/bookings",
        "list_bookings",
        "A therapist's sessions that have not ended",
        "read",
        m.BookingList,
        query=m.TherapistQuery,
    ),
    Operation(
        "DELETE",
        "/bookings/{booking_id}",
        "cancel_booking",
        "Cancel a session that has not started",
        "bookings:write",
        m.BookingOut,
        params=m.BookingPath,
        errors=(404, 409),
    ),
    Operation(
        "GET",
        "/bookings/{booking_id}/receipt",
        "get_receipt",
        "The deletion receipt of an ended session (what was deleted; never what was said)",
        "read",
        m.ReceiptOut,
        params=m.BookingPath,
        errors=(404, 409),
    ),
    Operation(
        "GET",
        "/calendar/{token}",
        "calendar_feed",
        "A therapist's upcoming sessions as iCalendar (initials only), at a secret URL",
        None,
        None,
        params=m.CalendarPath,
        errors=(404,),
    ),
)

_ERROR_TEXT = {
    400: "The body is not JSON",
    401: "No valid bearer token",
    403: "The token lacks the scope",
    404: "Not found",
    409: "Conflicts with the current state",
    413: "The body is larger than 64 KiB",
    422: "Invalid: the details say what and where",
}


def _parameters(model: type[BaseModel], where: str, defs: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs.update(schema.pop("$defs", {}))
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        param: dict[str, Any] = {
            "name": name,
            "in": where,
            "required": where == "path" or name in required,
            "schema": prop,
        }
        if description:
            param["description"] = description
        out.append(param)
    return out


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document, generated from OPERATIONS and their models."""
    used: list[tuple[type[BaseModel], JsonSchemaMode]] = [(m.ErrorResponse, "serialization")]
    for op in OPERATIONS:
        if op.body is not None:
            used.append((op.body, "validation"))
        if op.response is not None:
            used.append((op.response, "serialization"))
    refs, top = models_json_schema(used, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        parameters: list[dict[str, Any]] = []
        for model, where in ((op.params, "path"), (op.query, "query"), (op.header, "header")):
            if model is not None:
                parameters += _parameters(model, where, schemas)
        error_ref = refs[(m.ErrorResponse, "serialization")]
        errors = sorted(
            {400, 422, *op.errors}
            | ({401, 403} if op.scope else set())
            | ({413} if op.body else set())
        )
        responses: dict[str, Any] = {
            str(code): {
                "description": _ERROR_TEXT[code],
                "content": {"application/json": {"schema": error_ref}},
            }
            for code in errors
        }
        if op.response is not None:
            ok = {"application/json": {"schema": refs[(op.response, "serialization")]}}
        else:
            ok = {"text/calendar": {"schema": {"type": "string"}}}
        responses[str(op.status)] = {"description": "Done", "content": ok}
        operation: dict[str, Any] = {
            "operationId": op.name,
            "summary": op.summary,
            "responses": dict(sorted(responses.items())),
            "security": [{"bearer": []}] if op.scope else [],
        }
        if op.scope:
            operation["description"] = f"Needs a token with the scope `{op.scope}`."
        if parameters:
            operation["parameters"] = parameters
        if op.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": refs[(op.body, "validation")]},
                },
            }
        paths.setdefault(PREFIX + op.path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Alcove API",
            "version": API_VERSION,
            "description": "Clients, text-only session bookings, deletion receipts and "
            "calendar feeds of an Alcove practice. Every 4xx answer is JSON: "
            '{"error": {"code", "message", "details": [{"loc", "msg", "type"}]}}.',
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def openapi_json() -> str:
    """The document as checked in: stable key order, two-space indent, final newline."""
    return json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(openapi_json(), end="")
