"""Turning a message body into a command name and arguments. Errors are values."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

PREFIX = "!"


@dataclass(frozen=True)
class ParsedCommand:
    name: str
    args: tuple[str, ...]
    raw_args: str


@dataclass(frozen=True)
class ParseError:
    name: str
    reason: str


def split_args(text: str) -> tuple[str, ...]:
    """Shell-style words where double quotes group ("two words") and a backslash escapes.
    An apostrophe is an ordinary letter, so names like O'Neil need no quoting."""
    text = text.replace("\u201c", '"').replace("\u201d", '"')  # typographic quotes
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.quotes = '"'
    lexer.commenters = ""
    return tuple(lexer)


def parse_command(body: str) -> ParsedCommand | ParseError | None:
    """None when the message is not a command at all."""
    text = body.strip()
    if not text.startswith(PREFIX) or len(text) < 2 or text[1].isspace():
        return None
    head, _, rest = text[1:].partition(" ")
    name = head.strip().lower()
    if "\n" in name:
        name, _, more = name.partition("\n")
        rest = more + " " + rest
    rest = rest.strip()
    try:
        args = split_args(rest)
    except ValueError as e:  # unbalanced quotes
        return ParseError(name, f"could not read the arguments ({e}); check your quotes")
    return ParsedCommand(name, args, rest)
