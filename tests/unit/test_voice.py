"""bots/features/voice.py: who speaks for a therapist."""

from __future__ import annotations

from pathlib import Path

from bots.features.voice import AUTOMATED, TherapistVoice
from tests.support.builders import make_config
from tests.support.fakes import RecordingGateway

THERAPIST = "@therapist:test.local"


async def test_an_account_created_later_is_spoken_for_then(tmp_path: Path) -> None:
    gateway = RecordingGateway()
    voice = TherapistVoice(make_config(tmp_path), gateway)
    assert await voice.speaker(THERAPIST) == gateway.bot_user_id  # no account yet
    gateway.existing_users.add(THERAPIST)
    assert await voice.speaker(THERAPIST) == THERAPIST


async def test_without_the_double_puppet_the_bot_speaks_on_behalf(tmp_path: Path) -> None:
    gateway = RecordingGateway(doublepuppet=False, existing_users={THERAPIST})
    voice = TherapistVoice(make_config(tmp_path), gateway)
    speaker = await voice.speaker(THERAPIST)
    assert speaker == gateway.bot_user_id
    content = voice.content(THERAPIST, speaker, {"msgtype": "m.text", "body": "Hi"}, automated=True)
    assert content == {"msgtype": "m.text", "body": "On behalf of Dr T: Hi", AUTOMATED: True}


async def test_in_an_encrypted_room_the_bot_speaks_on_behalf(tmp_path: Path) -> None:
    """Issue 11's trust model: Alcove cannot encrypt as a device the therapist cross-signed, so
    in an encrypted room the bot (whose device the bot cross-signed) speaks on their behalf;
    in a plain room the therapist's double puppet still does."""
    gateway = RecordingGateway(existing_users={THERAPIST})
    asked: list[str] = []

    class Crypto:
        async def is_encrypted(self, room_id: str) -> bool:
            asked.append(room_id)
            return room_id == "!secret:test.local"

        async def has_devices(self, user_id: str) -> bool:
            return False

    voice = TherapistVoice(make_config(tmp_path), gateway, Crypto())
    assert await voice.speaker(THERAPIST) == THERAPIST  # no room: who may act for them (joins)
    assert await voice.speaker(THERAPIST, "!plain:test.local") == THERAPIST
    speaker = await voice.speaker(THERAPIST, "!secret:test.local")
    assert speaker == gateway.bot_user_id
    content = voice.content(THERAPIST, speaker, {"msgtype": "m.text", "body": "Hi"})
    assert content["body"] == "On behalf of Dr T: Hi"
    assert await voice.in_room(THERAPIST, "!secret:test.local") == gateway.bot_user_id
    assert asked == ["!plain:test.local", "!secret:test.local", "!secret:test.local"]
