"""Declared subcommands and arguments: one matcher, generated usage, one error type."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from bots.commands.args import (
    CLIENT,
    DATE,
    DATETIME,
    DURATION,
    ID,
    REST,
    TITLE,
    WORDS,
    Arg,
    Flag,
    Lit,
    Matched,
    Opt,
    Sub,
    UsageError,
    best_usage,
    match,
    minutes,
)
from bots.commands.context import CommandContext
from bots.commands.parse import ParsedCommand, Pill, parse_command, pill_marker


async def nothing(ctx: CommandContext) -> None:
    return None


SUBS = (
    Sub("add", nothing, (Arg("name", WORDS, "full name"), Flag("--email", "email", label="ADDR"))),
    Sub("create", nothing, (Arg("title", TITLE), Arg("clients", CLIENT, many=True))),
    Sub("in", nothing, (Arg("delay", DURATION), Arg("message", REST))),
    Sub("at", nothing, (Arg("when", DATETIME), Arg("message", REST))),
    Sub("cancel", nothing, (Arg("id", ID),)),
    Sub(
        "on",
        nothing,
        (Opt(Lit("until"), Arg("until", DATE)), Arg("message", REST, "message", optional=True)),
    ),
    Sub(
        None,
        nothing,
        (
            Arg("clients", CLIENT, many=True),
            Lit("now"),
            Opt(Lit("for"), Arg("minutes", minutes(480, "for 1m to 480m"))),
        ),
    ),
)


def parsed(line: str, pills: tuple[Pill, ...] = ()) -> ParsedCommand:
    result = parse_command(f"!x {line}", pills)
    assert isinstance(result, ParsedCommand)
    return result


def run(line: str, pills: tuple[Pill, ...] = ()) -> Matched:
    return match(SUBS, parsed(line, pills))


def test_usage_is_generated_from_the_declaration() -> None:
    assert [s.usage() for s in SUBS] == [
        "add <full name> [--email ADDR]",
        'create "<title>" <client>...',
        "in <N>(s|m|h|d) <message>",
        "at <YYYY-MM-DD HH:MM> <message>",
        "cancel <id>",
        "on [until <YYYY-MM-DD>] [<message>]",
        "<client>... now [for <N>m]",
    ]


def test_words_and_a_flag_anywhere() -> None:
    got = run("add Jane --email jane@example.org O'Neil")
    assert got.sub.name == "add"
    assert got.values == {"name": "Jane O'Neil", "email": "jane@example.org"}
    assert run("ADD Jane Doe").values == {"name": "Jane Doe", "email": None}


def test_a_flag_without_its_value_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        run("add Jane --email")


def test_quoted_title_and_many_clients() -> None:
    assert run('create "Tuesday circle" Ann Bob').values == {
        "title": "Tuesday circle",
        "clients": ["Ann", "Bob"],
    }


def test_rest_of_line_is_exactly_as_typed() -> None:
    got = run('in 10m  See  you "soon"')
    assert got.values == {"delay": timedelta(minutes=10), "message": 'See  you "soon"'}


def test_a_bad_value_says_why() -> None:
    with pytest.raises(UsageError) as err:
        run("in soon hello")
    assert "is not a delay" in err.value.render("!x in <N>(s|m|h|d) <message>")
    with pytest.raises(UsageError) as err:
        run("at 2026-13-01 09:00 hi")
    assert "is not a date and time" in err.value.reason


def test_date_time_takes_two_words() -> None:
    assert run("at 2026-12-01 09:00 Hello").values == {
        "when": ("2026-12-01", "09:00"),
        "message": "Hello",
    }


@pytest.mark.parametrize(("line", "value"), [("cancel 3", 3), ("cancel #12", 12)])
def test_ids(line: str, value: int) -> None:
    assert run(line).values == {"id": value}


@pytest.mark.parametrize("line", ["cancel", "cancel three", "cancel 3 4"])
def test_bad_ids(line: str) -> None:
    with pytest.raises(UsageError):
        run(line)
    assert best_usage(SUBS, parsed(line)) == "cancel <id>"


def test_optional_group_is_taken_when_it_fits() -> None:
    assert run("on until 2099-01-01 Back Monday").values == {
        "until": date(2099, 1, 1),
        "message": "Back Monday",
    }
    assert run("on").values == {"until": None, "message": None}
    assert run("on until").values == {"until": None, "message": "until"}
    with pytest.raises(UsageError):
        run("on until tomorrow")


def test_a_form_without_a_subcommand_word() -> None:
    assert run("Ann Bob now for 30m").values == {"clients": ["Ann", "Bob"], "minutes": 30}
    assert run("Ann now").values == {"clients": ["Ann"], "minutes": None}
    with pytest.raises(UsageError) as err:
        run("Ann now for 481m")
    assert err.value.render("!x …") == "Usage: !x … (for 1m to 480m)"
    for line in ["now", "Ann", "Ann now 30m", "Ann now for 30m please"]:
        with pytest.raises(UsageError):
            run(line)


def test_pills_are_ids_in_client_arguments_and_text_elsewhere() -> None:
    pills = (Pill("@c-1:localhost", "J.D."), Pill("@c-2:localhost", "J.S."))
    got = run(f'create "Pill group" {pill_marker(0)} {pill_marker(1)}', pills)
    assert got.values["clients"] == ["@c-1:localhost", "@c-2:localhost"]
    got = run(f"in 10m Hello {pill_marker(0)}!", pills)
    assert got.values["message"] == "Hello J.D.!"
    # A pill in a quoted title is shown as its text.
    got = run(f'create "with {pill_marker(1)}" {pill_marker(0)}', pills)
    assert got.values == {"title": "with J.S.", "clients": ["@c-1:localhost"]}


def test_usage_error_rendering() -> None:
    assert UsageError().render("!p <name>") == "Usage: !p <name>"
    assert UsageError("Nope.").render("!p <name>") == "Nope. Usage: !p <name>"
    assert UsageError(hint="h").render("!p <name>") == "Usage: !p <name> (h)"
