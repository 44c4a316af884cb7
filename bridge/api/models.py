"""The HTTP API's requests and answers, declared once: pydantic validates with them and the
OpenAPI document is generated from them (``bridge.api.openapi``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)


def _has_letter(name: str) -> str:
    if not any(ch.isalpha() for ch in name):
        raise ValueError("a name needs at least one letter")
    return name.strip()


MatrixUserId = Annotated[
    str,
    StringConstraints(pattern=r"^@[a-z0-9._=\-/+]+:[A-Za-z0-9.\-]+(:[0-9]+)?$", max_length=255),
    Field(description="A Matrix user ID, e.g. @therapist:example.org"),
]
Email = Annotated[
    str,
    # No control characters (PostgreSQL refuses NUL in text; none belongs in an address).
    StringConstraints(
        pattern=r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s.\x00-\x1f\x7f]+$",
        max_length=254,
    ),
    Field(description="An email address"),
]
FullName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$"),
    AfterValidator(lambda v: _has_letter(v)),
    Field(description="The client's full name (with at least one letter); kept by Alcove only"),
]
ExternalId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$"),
    Field(description="Your system's id for this client (printable ASCII, no spaces)"),
]


class Request(BaseModel):
    """A request body: strict types, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    loc: list[str | int] = Field(description='Where: e.g. ["body", "client", "email"]')
    msg: str = Field(description="What is wrong there")
    type: str = Field(description="A machine-readable kind, e.g. missing, string_too_long")


class Error(BaseModel):
    code: str = Field(description="e.g. invalid_request, unauthorized, not_found, conflict")
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    """Every 4xx answer: what is wrong and where."""

    error: Error


# --------------------------------------------------------------------------- clients


class ClientCreate(Request):
    full_name: FullName
    therapist: MatrixUserId = Field(description="A therapist under staff in Alcove's config")
    email: Email | None = None
    external_id: ExternalId | None = None


class ClientEmail(Request):
    email: Email | None = Field(description="The new address, or null to remove it")


class ClientOut(BaseModel):
    """A managed client. Their full name is not returned (your system has it; Alcove shows it
    only in the therapist's management room)."""

    client_id: str = Field(description="The client's opaque Matrix ID")
    therapist: str
    initials: str
    email: str | None
    external_id: str | None
    room_id: str | None = Field(description="The 1:1 room of the client and their therapist")


class ClientCreated(ClientOut):
    initial_password_sent: bool = Field(
        description="Whether the initial password went to the therapist's management room "
        "(not while that room holds anyone but the therapist and the bot)"
    )


class ClientList(BaseModel):
    clients: list[ClientOut]


class ErasureOut(BaseModel):
    client_id: str
    erased: Literal[True] = True
    rooms_left: int = Field(description="How many rooms the client was removed from")


class TherapistQuery(Query):
    therapist: MatrixUserId


class ClientPath(BaseModel):
    client_id: MatrixUserId


# --------------------------------------------------------------------------- bookings


class BookingCreate(Request):
    therapist: MatrixUserId
    client_id: MatrixUserId | None = Field(
        default=None, description="An existing client of this therapist (or give new_client)"
    )
    new_client: NewClient | None = Field(
        default=None, description="A new client: created with their 1:1 and its welcome first"
    )
    start: AwareDatetime = Field(description="RFC 3339 with an offset; in the future")
    duration_minutes: int = Field(ge=1, le=480)

    @model_validator(mode="after")
    def one_client(self) -> BookingCreate:
        if (self.client_id is None) == (self.new_client is None):
            raise ValueError("give exactly one of client_id and new_client")
        return self


class NewClient(Request):
    full_name: FullName
    email: Email | None = None
    external_id: ExternalId | None = None


class BookingOut(BaseModel):
    booking_id: int
    therapist: str
    clients: list[str]
    start: datetime
    end: datetime
    status: str = Field(description="scheduled, prepared, open, ending, ended or cancelled")
    room_id: str | None


class BookingList(BaseModel):
    bookings: list[BookingOut]


class BookingPath(BaseModel):
    booking_id: int = Field(ge=1, le=2**62)


class IdempotencyHeader(BaseModel):
    idempotency_key: str = Field(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="Your unique key for this booking: the same key and body again get the "
        "same answer; the same key with another body is refused (422)",
    )


class OptionalIdempotencyHeader(BaseModel):
    idempotency_key: str | None = Field(
        default=None,
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="Optional: the same key and body again get the same answer (a retry after "
        "a timeout creates nothing twice); the same key with another body is refused (422)",
    )


class ReceiptOut(BaseModel):
    """The deletion receipt of an ended session: what was deleted, never what was said."""

    booking_id: int
    room_id: str | None
    start: datetime
    end: datetime
    ended_at: datetime
    reason: str
    messages_purged: int
    files_purged: int
    purge_id: str | None
    status: str


BookingCreate.model_rebuild()


class CalendarPath(BaseModel):
    token: str = Field(min_length=1, max_length=200, description="The feed's secret token")
