"""Prometheus metrics, one registry per running Alcove (no module globals). No content, ever:
labels are outcomes and error kinds, never rooms, users or text."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.inbox_depth = Gauge(
            "alcove_inbox_depth", "Events persisted but not processed yet", registry=r
        )
        self.inbox_oldest_age = Gauge(
            "alcove_inbox_oldest_unprocessed_age_seconds",
            "Age of the oldest unprocessed inbox event (0 when empty)",
            registry=r,
        )
        self.inbox_events = Counter(
            "alcove_inbox_events_total", "Inbox events by outcome", ["outcome"], registry=r
        )
        self.transactions = Counter(
            "alcove_transactions_total",
            "Appservice transactions by outcome",
            ["outcome"],
            registry=r,
        )
        self.handler_seconds = Histogram(
            "alcove_event_handler_seconds", "Time to handle one inbox event", registry=r
        )
        self.outbox_sent = Counter(
            "alcove_outbox_sent_total", "Messages the homeserver accepted", registry=r
        )
        self.outbox_retries = Counter(
            "alcove_outbox_retries_total", "Outbox sends retried after an error", registry=r
        )
        self.outbox_failed = Counter(
            "alcove_outbox_failed_total", "Outbox messages given up on", registry=r
        )
        self.outbox_pending = Gauge(
            "alcove_outbox_pending", "Outbox messages not sent yet", registry=r
        )
        self.matrix_errors = Counter(
            "alcove_matrix_api_errors_total", "Matrix API errors by kind", ["kind"], registry=r
        )
        self.ready = Gauge("alcove_ready", "1 once start-up checks passed", registry=r)
        self.session_purge_failures = Counter(
            "alcove_session_purge_failures_total",
            "Failed attempts to purge an ended text-only session (each is retried)",
            registry=r,
        )
        self.sessions_pending_purge = Gauge(
            "alcove_sessions_pending_purge",
            "Text-only sessions that ended but are not purged yet",
            registry=r,
        )
        self.encrypted_unreadable = Counter(
            "alcove_encrypted_unreadable_total",
            "Encrypted rooms Alcove was invited to, and encrypted events it received, that it "
            "cannot read (it says so once per room)",
            ["source"],
            registry=r,
        )
        self.secrets_withheld = Counter(
            "alcove_secrets_withheld_total",
            "Secrets not delivered because a management room held someone else",
            registry=r,
        )
