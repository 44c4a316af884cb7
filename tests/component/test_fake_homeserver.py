"""The whole Alcove (bridge.app.Alcove: start-up checks, web endpoint, inbox, bot, outbox, catch-up)
against the fast fake homeserver that bench/ceiling.py drives it with: every call Alcove makes
is one the fake knows, a pushed `!ping` is answered once, and after a restart catch-up answers a
`!ping` the homeserver never pushed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bridge.app import Alcove
from bridge.devstack import free_port
from tests.support.builders import DOMAIN, make_config
from tests.support.fake_homeserver import FakeHomeserver

THERAPIST = f"@therapist:{DOMAIN}"
ROOM = f"!dm:{DOMAIN}"


async def test_alcove_against_the_fake_homeserver(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    base = make_config(tmp_path)
    fake = FakeHomeserver(
        domain=DOMAIN,
        as_token=base.appservice.as_token,
        hs_token=base.appservice.hs_token,
        bot_user_id=base.bot_user_id,
        appservice_url=f"http://127.0.0.1:{port}",
    )
    await fake.start()
    config = make_config(
        tmp_path,
        homeserver={"address": fake.url, "domain": DOMAIN},
        appservice={
            "address": f"http://127.0.0.1:{port}",
            "hostname": "127.0.0.1",
            "port": port,
            "as_token": base.appservice.as_token,
            "hs_token": base.appservice.hs_token,
        },
        database={"url": db_url},
    )
    for member in (config.bot_user_id, THERAPIST):
        fake.join(ROOM, member)
    alcove = Alcove(config)
    try:
        await alcove.start()
        assert fake.calls["ping"] == 1  # the fake called Alcove back, as Synapse does
        pings = [fake.message(ROOM, THERAPIST, "!ping") for _ in range(3)]
        answered = fake.watch(e["event_id"] for e in pings)
        fake.push(pings)
        await asyncio.wait_for(answered, 30)
        await fake.idle()
        await alcove.inbox.join()
        assert [fake.replies[e["event_id"]] for e in pings] == [1, 1, 1]
        assert fake.pushed == 6  # the pings and the echo of each pong
    finally:
        await alcove.stop()

    dropped = fake.message(ROOM, THERAPIST, "!ping")  # in the timeline, never pushed
    answered = fake.watch([dropped["event_id"]])
    alcove = Alcove(config)
    try:
        await alcove.start()
        await asyncio.wait_for(answered, 30)
        assert fake.calls["messages"] >= 1
        assert all(fake.replies[e["event_id"]] == 1 for e in [*pings, dropped])
    finally:
        await alcove.stop()
        await fake.stop()
    assert not fake.unknown, f"calls the fake homeserver does not know: {dict(fake.unknown)}"
