"""The last `!consent` of a transcript handled again (it failed or was killed after the
transcript went out, before the request was forgotten): one file, one upload, the same reply.
Uses the sessions component harness (real database, both engines)."""

from __future__ import annotations

import pytest

from tests.component.test_sessions_service import (  # noqa: F401  (fixtures)
    MGMT,
    World,
    build,
    open_session,
    seed_room,
    world,
)


class Crash(BaseException):
    pass


async def test_the_last_consent_handled_again_sends_one_transcript(
    world: World,  # noqa: F811  (the imported fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session, jane, sam = await open_session(world)
    assert session.room_id is not None
    seed_room(world, session.room_id, jane.client.user_id, sam.client.user_id)
    await world.transcripts.request(session)
    await world.transcripts.answer(session, jane.client.user_id, consent=True)

    drop = world.service.repo.drop_transcript_request

    async def killed(session_id: int) -> None:
        raise Crash

    monkeypatch.setattr(world.service.repo, "drop_transcript_request", killed)
    with pytest.raises(Crash):  # the transcript went out; then Alcove died
        await world.transcripts.answer(session, sam.client.user_id, consent=True)
    monkeypatch.setattr(world.service.repo, "drop_transcript_request", drop)
    assert len(world.gateway.uploads) == 1

    # More was said meanwhile, and the request's deadline passed before the restart.
    world.gateway.events[session.room_id].append(
        {
            "type": "m.room.message",
            "sender": jane.client.user_id,
            "origin_server_ts": 1,
            "content": {"msgtype": "m.text", "body": "one more thing"},
        }
    )
    world.clock.advance(24 * 3600)
    again = await world.transcripts.answer(session, sam.client.user_id, consent=True)

    assert again == "Everyone agreed: the transcript was sent to the therapist."
    assert len(world.gateway.uploads) == 1  # no second copy in the media store
    files = [s for s in await world.sent_to(MGMT) if s.content.get("msgtype") == "m.file"]
    assert len(files) == 1
    assert await world.repo.transcript_request(session.id) is None
