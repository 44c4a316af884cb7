"""Edits of commands (issue 9), judged by the command_run record on SQLite and PostgreSQL: an
edit within 10 minutes of a command that did not run (unknown, wrong use, a client not found)
runs the new text; an edit of one that ran, or a late one, is answered and not applied."""

from __future__ import annotations

from mautrix.util.async_db import Database

from bots.commands.args import CLIENT, Arg, UserError
from bots.commands.context import CommandContext
from bots.commands.incoming import Incoming, read_message
from bots.commands.registry import CommandRegistry
from bots.commands.router import EDIT_NOT_APPLIED, CommandRouter
from bots.commands.runs import KEEP_MS, CommandRuns
from bots.commands.spec import CommandSpec
from bots.features.core.commands import COMMANDS

SENDER = "@therapist:test.local"
ROOM = "!mgmt:test.local"
MINUTE = 60_000


class World:
    def __init__(self, db: Database) -> None:
        self.runs = CommandRuns(db)
        self.ran: list[str] = []
        self.replies: list[str] = []
        greet = CommandSpec("greet", self.greet, "greet a client", (Arg("client", CLIENT),))
        self.router = CommandRouter(CommandRegistry([*COMMANDS, greet]), runs=self.runs)

    async def greet(self, ctx: CommandContext) -> None:
        client = ctx.values["client"]
        if client == "nobody":
            raise UserError("No client of yours matches 'nobody'.")
        self.ran.append(client)
        await ctx.reply(f"hello {client}")

    async def send(
        self,
        event_id: str,
        body: str,
        at: int,
        *,
        edit_of: str | None = None,
        thread: str | None = None,
        sender: str = SENDER,
    ) -> tuple[bool, Incoming]:
        content: dict[str, object] = {"msgtype": "m.text", "body": body}
        if edit_of is not None:
            content = {
                "msgtype": "m.text",
                "body": f"* {body}",
                "m.new_content": {"msgtype": "m.text", "body": body},
                "m.relates_to": {"rel_type": "m.replace", "event_id": edit_of},
            }
        elif thread is not None:
            content["m.relates_to"] = {
                "rel_type": "m.thread",
                "event_id": thread,
                "is_falling_back": True,
                "m.in_reply_to": {"event_id": thread},
            }
        incoming = read_message(content, sent_at=at)
        assert incoming is not None

        async def reply(text: str) -> None:
            self.replies.append(text)

        handled = await self.router.handle(
            incoming, sender=sender, role="therapist", room_id=ROOM, event_id=event_id, reply=reply
        )
        return handled, incoming


async def test_a_typo_fixed_by_an_edit_runs(db: Database) -> None:
    world = World(db)
    await world.send("$1", "!pnig", 0)
    assert world.replies == ["Unknown command !pnig. Send !help for the commands you can use."]
    handled, incoming = await world.send("$2", "!ping", 2 * MINUTE, edit_of="$1")
    assert handled
    assert world.replies[-1] == "pong"
    assert incoming.reply_to == "$1"  # the answer points at the (edited) command
    record = await world.runs.get("$1")
    assert record is not None and record.ran_by == "$2"
    # A second edit of the same command no longer runs.
    await world.send("$3", "!help", 3 * MINUTE, edit_of="$1")
    assert world.replies[-1] == EDIT_NOT_APPLIED


async def test_an_edit_of_a_command_that_ran_is_not_applied(db: Database) -> None:
    world = World(db)
    await world.send("$1", "!greet ann", 0)
    await world.send("$2", "!greet bob", MINUTE, edit_of="$1")
    assert world.ran == ["ann"]
    assert world.replies == ["hello ann", EDIT_NOT_APPLIED]


async def test_an_edit_fixing_wrong_use_or_a_client_runs(db: Database) -> None:
    world = World(db)
    await world.send("$1", "!greet", 0)
    assert world.replies == ["Usage: !greet <client>"]
    await world.send("$2", "!greet nobody", MINUTE, edit_of="$1")
    assert world.replies[-1] == "No client of yours matches 'nobody'."
    await world.send("$3", "!greet ann", 2 * MINUTE, edit_of="$1")
    assert world.ran == ["ann"]
    assert world.replies[-1] == "hello ann"


async def test_an_edit_after_ten_minutes_is_not_applied(db: Database) -> None:
    world = World(db)
    await world.send("$1", "!pnig", 0)
    await world.send("$2", "!ping", 10 * MINUTE + 1, edit_of="$1")
    assert world.replies[-1] == EDIT_NOT_APPLIED


async def test_the_same_edit_replayed_runs_again_for_the_outbox_to_deduplicate(
    db: Database,
) -> None:
    world = World(db)
    await world.send("$1", "!greet", 0)
    await world.send("$2", "!greet ann", MINUTE, edit_of="$1")
    await world.send("$2", "!greet ann", MINUTE, edit_of="$1")
    assert world.ran == ["ann", "ann"]  # same event id: same outbox keys, one message


async def test_edits_of_unknown_or_other_peoples_events_are_ignored(db: Database) -> None:
    world = World(db)
    handled, _ = await world.send("$2", "!ping", 0, edit_of="$never-seen")
    assert not handled
    await world.send("$1", "!pnig", 0)
    handled, _ = await world.send("$3", "!ping", MINUTE, edit_of="$1", sender="@other:test.local")
    assert not handled
    assert world.replies == ["Unknown command !pnig. Send !help for the commands you can use."]


async def test_an_edit_is_answered_in_the_thread_of_its_command(db: Database) -> None:
    world = World(db)
    await world.send("$1", "!pnig", 0, thread="$root")
    _, incoming = await world.send("$2", "!ping", MINUTE, edit_of="$1")
    assert incoming.thread_root == "$root"
    assert world.replies[-1] == "pong"


async def test_only_ids_and_times_are_kept(db: Database) -> None:
    world = World(db)
    await world.send("$1", "!greet ann", 0)
    row = await db.fetchrow("SELECT * FROM command_run")
    assert row is not None
    assert "ann" not in " ".join(str(v) for v in dict(row).values())


async def test_runs_older_than_a_day_are_dropped(db: Database) -> None:
    runs = CommandRuns(db)
    day = KEEP_MS
    await runs.record("$old", "!r:x", "@t:x", 0, None, True)
    await runs.record("$a", "!r:x", "@t:x", day - MINUTE, None, True)
    await runs.record("$b", "!r:x", "@t:x", day + MINUTE, None, True)
    assert await runs.get("$old") is None
    await runs.record("$c", "!r:x", "@t:x", day + MINUTE + 1000, None, True)  # within a minute
    await runs.record("$d", "!r:x", "@t:x", 2 * day + MINUTE, None, True)
    assert await runs.get("$a") is None
    assert [await runs.get(e) is not None for e in ("$b", "$c", "$d")] == [True, True, True]
