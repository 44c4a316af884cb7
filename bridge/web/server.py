"""The aiohttp application: appservice endpoints, /health, /ready and /metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..metrics import Metrics
from .transactions import TransactionEndpoint

READY = web.AppKey("ready", dict)


def build_web_app(
    transactions: TransactionEndpoint,
    metrics: Metrics,
    refresh_metrics: Callable[[], Awaitable[None]],
    max_body_mib: int,
) -> web.Application:
    app = web.Application(client_max_size=max_body_mib * 1024 * 1024)
    app[READY] = {"ready": False, "reason": "starting"}
    app.add_routes(transactions.routes())

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(request: web.Request) -> web.Response:
        state = request.app[READY]
        if state["ready"]:
            return web.json_response({"ready": True})
        return web.json_response({"ready": False, "reason": state["reason"]}, status=503)

    async def metrics_view(_: web.Request) -> web.Response:
        await refresh_metrics()
        return web.Response(
            body=generate_latest(metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    app.add_routes(
        [web.get("/health", health), web.get("/ready", ready), web.get("/metrics", metrics_view)]
    )
    return app
