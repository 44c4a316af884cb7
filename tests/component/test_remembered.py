"""ConversationRepo remembers the rooms and clients it read (every handled message asks for
its room, a client's message for the client): each write is seen by the next read, and a read
that overlapped a write is not kept."""

from __future__ import annotations

from typing import Any

from mautrix.util.async_db import Database

from bots.features.conversations.repo import DM, GROUP, Client, ConversationRepo, Room, Secret

T = "@t:x"
C = "@c-jd:x"


async def test_reads_are_remembered_and_writes_are_seen(db: Database) -> None:
    repo = ConversationRepo(db)
    assert await repo.room("!g:x") is None  # not Alcove's room (yet)
    await repo.add_room(Room("!g:x", GROUP, T, None, "Tuesday group"), 1)
    assert (await repo.room("!g:x")) == Room("!g:x", GROUP, T, None, "Tuesday group")
    await db.execute("UPDATE conv_room SET title = 'behind its back' WHERE room_id = '!g:x'")
    remembered = await repo.room("!g:x")
    assert remembered is not None and remembered.title == "Tuesday group"  # from memory
    await repo.set_title("!g:x", "Thursday group")
    renamed = await repo.room("!g:x")
    assert renamed is not None and renamed.title == "Thursday group"
    await repo.set_archived("!g:x", 5)
    archived = await repo.room("!g:x")
    assert archived is not None and archived.archived_at == 5
    await repo.set_archived("!g:x", None)
    back = await repo.room("!g:x")
    assert back is not None and back.archived_at is None


async def test_clients_are_remembered_and_writes_are_seen(db: Database) -> None:
    repo = ConversationRepo(db)
    assert await repo.client(C) is None  # not a client (yet)
    await repo.add_client(Client(C, T, "Jane Doe", "J.D.", None), "$c", 1)
    added = await repo.client(C)
    assert added is not None and added.email is None
    await db.execute("UPDATE client SET full_name = 'behind its back' WHERE user_id = $1", C)
    remembered = await repo.client(C)
    assert remembered is not None and remembered.full_name == "Jane Doe"  # from memory
    await repo.set_email(C, "jane@example.org")
    changed = await repo.client(C)
    assert changed is not None and changed.email == "jane@example.org"


async def test_erasure_forgets_the_client_and_their_rooms(db: Database) -> None:
    repo = ConversationRepo(db)
    await repo.add_client(Client(C, T, "Jane Doe", "J.D.", None), "$c", 1)
    await repo.add_room(Room("!dm:x", DM, T, C, "Jane Doe"), 1)
    assert await repo.room("!dm:x") is not None
    assert await repo.client(C) is not None
    await repo.forget_client(C)
    assert await repo.room("!dm:x") is None
    assert await repo.client(C) is None


async def test_a_read_overlapping_a_write_is_not_remembered(db: Database, monkeypatch: Any) -> None:
    repo = ConversationRepo(db)
    await repo.add_room(Room("!g:x", GROUP, T, None, "Old"), 1)
    read = db.fetchrow

    async def read_then_rename(*args: Any) -> Any:
        row = await read(*args)  # the old title, read before the rename commits
        await repo.set_title("!g:x", "New")
        return row

    monkeypatch.setattr(db, "fetchrow", read_then_rename)
    stale = await repo.room("!g:x")
    monkeypatch.setattr(db, "fetchrow", read)
    assert stale is not None and stale.title == "Old"
    fresh = await repo.room("!g:x")
    assert fresh is not None and fresh.title == "New"


async def test_a_clients_unredacted_passwords_are_remembered_and_writes_are_seen(
    db: Database,
) -> None:
    repo = ConversationRepo(db)
    assert await repo.secrets(C) == []
    secret = Secret("welcome:1", "!mgmt:x", T, C, 1, 2)
    await repo.add_secret(secret)
    assert await repo.secrets(C) == [secret]
    await repo.delete_secret("welcome:1")
    assert await repo.secrets(C) == []
