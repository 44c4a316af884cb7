"""MatrixGateway on mautrix's AppServiceAPI (the real homeserver)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from json import JSONDecodeError
from typing import Any
from urllib.parse import quote

from aiohttp import ClientError, ClientResponse, ClientSession, ContentTypeError
from mautrix.api import Method, Path, PathBuilder
from mautrix.appservice import AppServiceAPI
from mautrix.errors import MatrixConnectionError, MatrixRequestError, make_request_error
from mautrix.types import JSON, UserID
from mautrix.util.logging import TraceLogger
from yarl import URL

from ..metrics import Metrics
from .gateway import MatrixSendError, PermanentError, TemporaryError

log = logging.getLogger("alcove.matrix")

DEVICE_NAME = "Alcove"


class _RateLimited(MatrixRequestError):
    def __init__(
        self, status: int, errcode: str | None, message: str, retry_after_ms: int | None
    ) -> None:
        super().__init__(message or "rate limited")
        self.http_status = status
        self.errcode = errcode or ""
        self.message = message or ""
        self.retry_after_ms = retry_after_ms


class AlcoveAPI(AppServiceAPI):
    """mautrix's AppServiceAPI, keeping ``retry_after_ms`` of a 429 (mautrix drops the body)."""

    async def _send(
        self,
        method: Method,
        url: URL,
        content: Any,
        query_params: dict[str, str],
        headers: dict[str, str],
    ) -> tuple[JSON, ClientResponse]:
        request = self.session.request(
            str(method), url, data=content, params=query_params, headers=headers
        )
        async with request as response:
            if 200 <= response.status < 300:
                return await response.json(), response
            text = await response.text()
            errcode = message = None
            data: dict[str, Any] = {}
            try:
                data = await response.json(content_type=None)
                errcode = data.get("errcode")
                message = data.get("error")
            except (JSONDecodeError, ContentTypeError, ValueError, AttributeError):
                pass
            if response.status == 429:
                retry = data.get("retry_after_ms") if isinstance(data, dict) else None
                if retry is None and "Retry-After" in response.headers:
                    try:
                        retry = int(float(response.headers["Retry-After"]) * 1000)
                    except ValueError:
                        retry = None
                raise _RateLimited(429, errcode, message or "", retry)
            raise make_request_error(
                http_status=response.status, text=text, errcode=errcode, message=message
            )


class MautrixGateway:
    def __init__(
        self,
        session: ClientSession,
        base_url: str,
        as_token: str,
        bot_user_id: str,
        metrics: Metrics,
        doublepuppet_token: str | None = None,
        client_namespace_prefix: str = "@c-",
    ) -> None:
        self.session = session
        self.base_url = base_url
        self.as_token = as_token
        self._bot_user_id = bot_user_id
        self.doublepuppet_token = doublepuppet_token
        self.client_prefix = client_namespace_prefix
        self.metrics = metrics
        self._base_log: TraceLogger = logging.getLogger("alcove.mau")  # type: ignore[assignment]
        self.bot_api = self.api_for(bot_user_id)
        self.unreachable = False
        self.on_recovered: Callable[[], None] | None = None

    @property
    def bot_user_id(self) -> str:
        return self._bot_user_id

    def owns(self, user_id: str) -> bool:
        """True if the user is in the main registration's namespace (bot or managed client)."""
        return user_id == self._bot_user_id or user_id.startswith(self.client_prefix)

    def api_for(self, user_id: str, device_id: str | None = None) -> AlcoveAPI:
        token = self.as_token
        if not self.owns(user_id):
            if not self.doublepuppet_token:
                raise PermanentError(
                    f"cannot act as {user_id}: the double-puppet registration is not installed"
                )
            token = self.doublepuppet_token
        api = AlcoveAPI(
            self.base_url,
            bot_mxid=UserID(self._bot_user_id),
            token=token,
            identity=UserID(user_id),
            log=self._base_log,
            client_session=self.session,
            child=False,
            default_retry_count=0,
        )
        api.as_device_id = device_id  # type: ignore[assignment]
        return api

    async def call(
        self,
        api: AlcoveAPI,
        method: Method,
        path: str,
        content: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One request; errors become TemporaryError / PermanentError."""
        result = await self.call_raw(api, method, path, content, query)
        return result if isinstance(result, dict) else {}

    async def call_raw(
        self,
        api: AlcoveAPI,
        method: Method,
        path: str,
        content: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
    ) -> Any:
        """``call``, answering the JSON as it came (``/state`` answers a list)."""
        try:
            result = await api.request(
                method, PathBuilder(path), content, query_params=query, retry_count=0
            )
        except _RateLimited as e:
            self.metrics.matrix_errors.labels(kind="429").inc()
            retry = e.retry_after_ms / 1000 if e.retry_after_ms is not None else None
            raise TemporaryError(
                f"rate limited ({e.errcode})", status=429, errcode=e.errcode, retry_after=retry
            ) from None
        except MatrixRequestError as e:
            status = getattr(e, "http_status", None)
            errcode = getattr(e, "errcode", None)
            message = getattr(e, "message", None) or str(e)
            self.metrics.matrix_errors.labels(kind=str(status)).inc()
            if status is not None and status >= 500:
                raise TemporaryError(message, status=status, errcode=errcode) from None
            raise PermanentError(message, status=status, errcode=errcode) from None
        except (MatrixConnectionError, ClientError, TimeoutError, OSError) as e:
            self.metrics.matrix_errors.labels(kind="connection").inc()
            self.unreachable = True
            raise TemporaryError(f"homeserver unreachable: {e}") from None
        if self.unreachable:
            self.unreachable = False
            if self.on_recovered is not None:
                self.on_recovered()
        return result

    # ------------------------------------------------------------------ MatrixGateway

    async def send_event(
        self,
        sender: str,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        txn_id: str,
        device_id: str | None,
    ) -> str:
        api = self.api_for(sender, device_id)
        path = (
            f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/send/"
            f"{quote(event_type, safe='')}/{quote(txn_id, safe='')}"
        )
        result = await self.call(api, Method.PUT, path, content)
        event_id = result.get("event_id")
        if not isinstance(event_id, str):
            raise TemporaryError("homeserver answered without an event_id")
        return event_id

    async def ensure_device(self, user_id: str, device_id: str) -> bool:
        """Create the acting device: Synapse admin API first, then the MSC4190 appservice route."""
        user = quote(user_id, safe="")
        try:
            await self.call(
                self.bot_api,
                Method.POST,
                f"/_synapse/admin/v2/users/{user}/devices",
                {"device_id": device_id},
            )
            return True
        except MatrixSendError as e:
            log.debug("admin device creation for %s failed: %s", user_id, e)
        try:
            await self.call(
                self.api_for(user_id),
                Method.PUT,
                f"/_matrix/client/v3/devices/{quote(device_id, safe='')}",
                {"display_name": DEVICE_NAME},
            )
            return True
        except MatrixSendError as e:
            log.warning(
                "Cannot create device %s for %s (%s): resends may duplicate", device_id, user_id, e
            )
            return False

    async def join_room(self, user_id: str, room_id: str) -> None:
        await self.call(
            self.api_for(user_id),
            Method.POST,
            f"/_matrix/client/v3/join/{quote(room_id, safe='')}",
            {},
        )

    async def leave_room(self, user_id: str, room_id: str) -> None:
        await self.call(
            self.api_for(user_id),
            Method.POST,
            f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/leave",
            {},
        )

    async def recent_events(self, per_room_limit: int) -> list[dict[str, Any]]:
        """The latest timeline events of every room the bot is in, oldest first per room.
        (Synapse refuses /sync for appservice users: /joined_rooms, then /messages per room.)"""
        joined = await self.call(self.bot_api, Method.GET, "/_matrix/client/v3/joined_rooms")
        rooms = [str(r) for r in joined.get("joined_rooms", [])]
        slots = asyncio.Semaphore(8)

        async def one(room_id: str) -> list[dict[str, Any]]:
            async with slots:
                result = await self.call(
                    self.bot_api,
                    Method.GET,
                    f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/messages",
                    query={"dir": "b", "limit": str(per_room_limit)},
                )
            chunk = result.get("chunk", [])
            return [{**e, "room_id": room_id} for e in reversed(chunk) if isinstance(e, dict)]

        per_room = await asyncio.gather(*(one(r) for r in rooms))
        return [event for events in per_room for event in events]

    def can_act_as(self, user_id: str) -> bool:
        return self.owns(user_id) or bool(self.doublepuppet_token)

    async def register_user(self, localpart: str) -> str:
        await self.ensure_registered(localpart)
        return f"@{localpart}:{self._bot_user_id.split(':', 1)[1]}"

    async def set_password(self, user_id: str, password: str) -> None:
        await self.call(
            self.bot_api,
            Method.PUT,
            f"/_synapse/admin/v2/users/{quote(user_id, safe='')}",
            {"password": password, "logout_devices": False},
        )

    async def create_room(self, body: dict[str, Any]) -> str:
        result = await self.call(self.bot_api, Method.POST, "/_matrix/client/v3/createRoom", body)
        room_id = result.get("room_id")
        if not isinstance(room_id, str):
            raise TemporaryError("createRoom answered without a room_id")
        return room_id

    def _room(self, room_id: str) -> str:
        return f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}"

    async def invite(self, room_id: str, user_id: str) -> None:
        try:
            await self.call(
                self.bot_api, Method.POST, f"{self._room(room_id)}/invite", {"user_id": user_id}
            )
        except PermanentError as e:
            if e.status == 403 and "already in the room" in str(e):
                return  # idempotent: already joined
            raise

    async def kick(self, room_id: str, user_id: str, reason: str) -> None:
        await self.call(
            self.bot_api,
            Method.POST,
            f"{self._room(room_id)}/kick",
            {"user_id": user_id, "reason": reason},
        )

    async def forget(self, user_id: str, room_id: str) -> None:
        await self.call(self.api_for(user_id), Method.POST, f"{self._room(room_id)}/forget", {})

    async def deactivate(self, user_id: str, erase: bool) -> None:
        # The admin API, as the bot (a server admin): the client-server
        # /account/deactivate needs user-interactive auth that an appservice user cannot give
        # on Synapse 1.163 unless masquerading, and takes no erasure of another account.
        await self.call(
            self.bot_api,
            Method.POST,
            f"/_synapse/admin/v1/deactivate/{quote(user_id, safe='')}",
            {"erase": erase},
        )

    async def send_state(
        self, sender: str, room_id: str, event_type: str, state_key: str, content: dict[str, Any]
    ) -> str:
        path = (
            f"{self._room(room_id)}/state/{quote(event_type, safe='')}/{quote(state_key, safe='')}"
        )
        result = await self.call(self.api_for(sender), Method.PUT, path, content)
        return str(result.get("event_id", ""))

    async def get_state(
        self, room_id: str, event_type: str, state_key: str = ""
    ) -> dict[str, Any] | None:
        path = (
            f"{self._room(room_id)}/state/{quote(event_type, safe='')}/{quote(state_key, safe='')}"
        )
        try:
            return await self.call(self.bot_api, Method.GET, path)
        except PermanentError as e:
            if e.status == 404:
                return None
            raise

    def _account_data(self, user_id: str, data_type: str) -> str:
        user = quote(user_id, safe="")
        return f"/_matrix/client/v3/user/{user}/account_data/{quote(data_type, safe='')}"

    async def get_account_data(self, user_id: str, data_type: str) -> dict[str, Any] | None:
        try:
            return await self.call(
                self.api_for(user_id), Method.GET, self._account_data(user_id, data_type)
            )
        except PermanentError as e:
            if e.status == 404:
                return None
            raise

    async def set_account_data(self, user_id: str, data_type: str, content: dict[str, Any]) -> None:
        await self.call(
            self.api_for(user_id), Method.PUT, self._account_data(user_id, data_type), content
        )

    async def room_state(self, room_id: str) -> list[dict[str, Any]]:
        raw = await self.call_raw(self.bot_api, Method.GET, f"{self._room(room_id)}/state")
        return [e for e in raw if isinstance(e, dict)] if isinstance(raw, list) else []

    def _tag(self, user_id: str, room_id: str, tag: str) -> str:
        user, room = quote(user_id, safe=""), quote(room_id, safe="")
        return f"/_matrix/client/v3/user/{user}/rooms/{room}/tags/{quote(tag, safe='')}"

    async def set_room_tag(
        self, user_id: str, room_id: str, tag: str, content: dict[str, Any]
    ) -> None:
        await self.call(
            self.api_for(user_id), Method.PUT, self._tag(user_id, room_id, tag), content
        )

    async def delete_room_tag(self, user_id: str, room_id: str, tag: str) -> None:
        await self.call(self.api_for(user_id), Method.DELETE, self._tag(user_id, room_id, tag))

    @staticmethod
    def _push_rule(kind: str, rule_id: str) -> str:
        return (
            f"/_matrix/client/v3/pushrules/global/{quote(kind, safe='')}/{quote(rule_id, safe='')}"
        )

    async def set_push_rule(
        self, user_id: str, kind: str, rule_id: str, rule: dict[str, Any]
    ) -> None:
        await self.call(self.api_for(user_id), Method.PUT, self._push_rule(kind, rule_id), rule)

    async def delete_push_rule(self, user_id: str, kind: str, rule_id: str) -> bool:
        try:
            await self.call(self.api_for(user_id), Method.DELETE, self._push_rule(kind, rule_id))
            return True
        except PermanentError as e:
            if e.status == 404:
                return False
            raise

    async def room_members(self, room_id: str) -> dict[str, str]:
        result = await self.call(self.bot_api, Method.GET, f"{self._room(room_id)}/members")
        members: dict[str, str] = {}
        for event in result.get("chunk", []):
            if isinstance(event, dict) and isinstance(event.get("state_key"), str):
                members[event["state_key"]] = str((event.get("content") or {}).get("membership"))
        return members

    async def redact(self, room_id: str, event_id: str, reason: str) -> None:
        txn = f"alcove.redact.{event_id}"
        await self.call(
            self.bot_api,
            Method.PUT,
            f"{self._room(room_id)}/redact/{quote(event_id, safe='')}/{quote(txn, safe='')}",
            {"reason": reason},
        )

    async def room_events(self, room_id: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        token: str | None = None
        for _ in range(1000):  # 1000 pages of 500: far beyond any session
            query = {"dir": "b", "limit": "500"}
            if token:
                query["from"] = token
            result = await self.call(
                self.bot_api, Method.GET, f"{self._room(room_id)}/messages", query=query
            )
            chunk = [e for e in result.get("chunk", []) if isinstance(e, dict)]
            events.extend(chunk)
            token = result.get("end")
            if not chunk or not token:
                break
        return list(reversed(events))

    async def upload(self, data: bytes, filename: str, content_type: str) -> str:
        try:
            result = await self.bot_api.request(
                Method.POST,
                PathBuilder("/_matrix/media/v3/upload"),
                data,
                headers={"Content-Type": content_type},
                query_params={"filename": filename},
                retry_count=0,
            )
        except MatrixRequestError as e:
            raise PermanentError(
                f"upload failed: {e}", status=getattr(e, "http_status", None)
            ) from None
        except (MatrixConnectionError, ClientError, TimeoutError, OSError) as e:
            raise TemporaryError(f"homeserver unreachable: {e}") from None
        uri = result.get("content_uri") if isinstance(result, dict) else None
        if not isinstance(uri, str):
            raise TemporaryError("upload answered without a content_uri")
        return uri

    async def delete_media(self, mxc: str) -> bool:
        server, _, media_id = mxc.removeprefix("mxc://").partition("/")
        try:
            await self.call(
                self.bot_api,
                Method.DELETE,
                f"/_synapse/admin/v1/media/{quote(server, safe='')}/{quote(media_id, safe='')}",
            )
            return True
        except PermanentError as e:
            if e.status == 404:
                return False
            raise

    async def delete_room(self, room_id: str) -> str:
        result = await self.call(
            self.bot_api,
            Method.DELETE,
            f"/_synapse/admin/v2/rooms/{quote(room_id, safe='')}",
            {"block": True, "purge": True, "message": "This session has ended."},
        )
        delete_id = result.get("delete_id")
        if not isinstance(delete_id, str):
            raise TemporaryError("room delete answered without a delete_id")
        return delete_id

    async def delete_status(self, delete_id: str) -> str:
        result = await self.call(
            self.bot_api,
            Method.GET,
            f"/_synapse/admin/v2/rooms/delete_status/{quote(delete_id, safe='')}",
        )
        return str(result.get("status", "unknown"))

    async def purge_history(self, room_id: str, up_to_event_id: str) -> str:
        """Purge-history admin API: every non-state event before ``up_to_event_id``, local
        senders included; the room's current state (memberships) stays."""
        result = await self.call(
            self.bot_api,
            Method.POST,
            f"/_synapse/admin/v1/purge_history/{quote(room_id, safe='')}"
            f"/{quote(up_to_event_id, safe='')}",
            {"delete_local_events": True},
        )
        purge_id = result.get("purge_id")
        if not isinstance(purge_id, str):
            raise TemporaryError("purge history answered without a purge_id")
        return purge_id

    async def purge_status(self, purge_id: str) -> str:
        result = await self.call(
            self.bot_api,
            Method.GET,
            f"/_synapse/admin/v1/purge_history_status/{quote(purge_id, safe='')}",
        )
        return str(result.get("status", "unknown"))

    async def email_owner(self, email: str) -> str | None:
        try:
            result = await self.call(
                self.bot_api,
                Method.GET,
                f"/_synapse/admin/v1/threepid/email/users/{quote(email, safe='')}",
            )
        except PermanentError as e:
            if e.status == 404:
                return None
            raise
        owner = result.get("user_id")
        return str(owner) if owner else None

    async def set_email(self, user_id: str, email: str | None) -> None:
        threepids = [] if email is None else [{"medium": "email", "address": email}]
        await self.call(
            self.bot_api,
            Method.PUT,
            f"/_synapse/admin/v2/users/{quote(user_id, safe='')}",
            {"threepids": threepids},
        )

    async def set_email_pusher(self, user_id: str, email: str | None) -> None:
        api = self.api_for(user_id)
        current = await self.call(api, Method.GET, "/_matrix/client/v3/pushers")
        for pusher in current.get("pushers", []):
            if not isinstance(pusher, dict) or pusher.get("kind") != "email":
                continue
            if pusher.get("pushkey") != email:
                await self.call(
                    api,
                    Method.POST,
                    "/_matrix/client/v3/pushers/set",
                    {"kind": None, "app_id": pusher.get("app_id"), "pushkey": pusher["pushkey"]},
                )
        if email is not None:
            await self.call(
                api,
                Method.POST,
                "/_matrix/client/v3/pushers/set",
                {
                    "kind": "email",
                    "app_id": "m.email",
                    "pushkey": email,
                    "app_display_name": "Email notifications",
                    "device_display_name": email,
                    "lang": "en",
                    "data": {},
                },
            )

    async def unredacted_event(self, room_id: str, event_id: str) -> dict[str, Any]:
        path = f"{self._room(room_id)}/event/{quote(event_id, safe='')}"
        # Synapse answers the unredacted event without its redaction: ask for both.
        current = await self.call(self.bot_api, Method.GET, path)
        original = await self.call(
            self.bot_api,
            Method.GET,
            path,
            query={"fi.mau.msc2815.include_unredacted_content": "true"},
        )
        redacted_because = (current.get("unsigned") or {}).get("redacted_because")
        if redacted_because:
            unsigned = original.get("unsigned") or {}
            original["unsigned"] = {**unsigned, "redacted_because": redacted_because}
        return original

    async def user_devices(self, user_id: str) -> list[dict[str, Any]]:
        result = await self.call(
            self.bot_api, Method.GET, f"/_synapse/admin/v2/users/{quote(user_id, safe='')}/devices"
        )
        return [d for d in result.get("devices", []) if isinstance(d, dict)]

    # ------------------------------------------------------------------ start-up probes

    async def versions(self) -> dict[str, Any]:
        return await self.call(self.bot_api, Method.GET, str(Path.versions))

    async def whoami(self) -> str:
        result = await self.call(self.bot_api, Method.GET, "/_matrix/client/v3/account/whoami")
        return str(result.get("user_id", ""))

    async def ping(self, appservice_id: str, transaction_id: str) -> dict[str, Any]:
        return await self.call(
            self.bot_api,
            Method.POST,
            f"/_matrix/client/v1/appservice/{quote(appservice_id, safe='')}/ping",
            {"transaction_id": transaction_id},
        )

    async def ensure_registered(self, localpart: str) -> None:
        """Register an appservice user (idempotent: an existing account is fine)."""
        try:
            await self.call(
                self.bot_api,
                Method.POST,
                "/_matrix/client/v3/register",
                {
                    "type": "m.login.application_service",
                    "username": localpart,
                    "inhibit_login": True,
                },
            )
        except PermanentError as e:
            if e.errcode != "M_USER_IN_USE":
                raise

    async def set_displayname(self, user_id: str, name: str) -> None:
        if user_id != self._bot_user_id and self.owns(user_id):
            # A managed client's name is set by a server admin (the bot): the homeserver module
            # (alcove_synapse) accepts only admin-made profile changes for managed clients.
            await self.call(
                self.bot_api,
                Method.PUT,
                f"/_synapse/admin/v2/users/{quote(user_id, safe='')}",
                {"displayname": name},
            )
            return
        await self.call(
            self.api_for(user_id),
            Method.PUT,
            f"/_matrix/client/v3/profile/{quote(user_id, safe='')}/displayname",
            {"displayname": name},
        )

    async def get_displayname(self, user_id: str) -> str | None:
        try:
            result = await self.call(
                self.bot_api,
                Method.GET,
                f"/_matrix/client/v3/profile/{quote(user_id, safe='')}/displayname",
            )
        except PermanentError:
            return None
        name = result.get("displayname")
        return str(name) if name else None

    async def is_server_admin(self, user_id: str) -> bool | None:
        """True/False, or None if the admin API is not reachable to say."""
        try:
            result = await self.call(
                self.bot_api,
                Method.GET,
                f"/_synapse/admin/v1/users/{quote(user_id, safe='')}/admin",
            )
            return bool(result.get("admin"))
        except PermanentError as e:
            if e.status == 403:
                return False
            return None

    async def user_exists(self, user_id: str) -> bool | None:
        """Through the admin API; None when it cannot say."""
        try:
            await self.call(
                self.bot_api, Method.GET, f"/_synapse/admin/v2/users/{quote(user_id, safe='')}"
            )
            return True
        except PermanentError as e:
            if e.status == 404:
                return False
            return None
