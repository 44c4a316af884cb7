"""Read indicators for therapists only: clients do not see when staff read their messages;
staff see when clients read theirs.

Synapse offers no module hook for receipts, so Alcove sets what clients themselves honour:
Element Web/Desktop's account-level "Send read receipts" setting (``sendReadReceipts`` in the
``im.vector.web.settings`` account data; off, Element sends private ``m.read.private``
receipts, which the homeserver shows to nobody else), written as each staff member through the
double-puppet registration at every start. Clients' own receipts are untouched, so staff see
them. Clients that keep this setting on the device instead (Element X) are not covered: the
README says so."""

from __future__ import annotations

import logging

from bridge.config import Config
from bridge.matrix.gateway import MatrixGateway, MatrixSendError

log = logging.getLogger("alcove.read_receipts")

SETTINGS = "im.vector.web.settings"
SEND_READ_RECEIPTS = "sendReadReceipts"


async def hide_staff_read_receipts(config: Config, gateway: MatrixGateway) -> list[str]:
    """Turn "Send read receipts" off for every staff member Alcove can act as (idempotent;
    their other settings are kept). Returns the staff members it changed."""
    changed = []
    for member in config.staff:
        staff = member.user_id
        if not gateway.can_act_as(staff):
            log.warning(
                "Cannot turn off public read receipts for %s: no double-puppet registration", staff
            )
            continue
        try:
            if await gateway.user_exists(staff) is False:
                continue
            current = await gateway.get_account_data(staff, SETTINGS) or {}
            if current.get(SEND_READ_RECEIPTS) is False:
                continue
            await gateway.set_account_data(staff, SETTINGS, {**current, SEND_READ_RECEIPTS: False})
        except MatrixSendError as e:
            log.error("Could not turn off public read receipts for %s: %s", staff, e)
            continue
        log.info("Public read receipts off for %s (clients will not see when they read)", staff)
        changed.append(staff)
    return changed
