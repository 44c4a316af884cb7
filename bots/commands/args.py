"""Declared arguments: what a command's words mean, read once, with the usage line generated
from the same declaration.

A command has one or more *forms* (``Sub``): a literal subcommand word or none, then items —
``Arg`` (a value of a ``Kind``), ``Lit`` (a fixed word), ``Opt`` (an optional group) and
``Flag`` (``--email ADDR``, anywhere in the line). The matcher finds the first form whose
shape fits the words, then converts each value; a value that does not convert is a
``UsageError``. Pills become user IDs in client arguments and their visible text elsewhere."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..features.schedule.timeparse import TimeError, parse_delay
from .parse import ParsedCommand, Word, pill_ids, show_pills

if TYPE_CHECKING:
    from .context import CommandContext

Handler = Callable[["CommandContext"], Awaitable[None]]


class UserError(Exception):
    """Something the sender can fix; shown to them as it is. The command did not run.
    ``private``: the text names a client, so it is said only in the sender's management room."""

    def __init__(self, message: str = "", *, private: bool = False) -> None:
        super().__init__(message)
        self.private = private


class UsageError(UserError):
    """Wrong use of a command: shown with the usage line (``reason. Usage: … (hint)``)."""

    def __init__(self, reason: str = "", hint: str = "", *, private: bool = False) -> None:
        super().__init__(reason, private=private)
        self.reason = reason
        self.hint = hint

    def render(self, usage_line: str) -> str:
        text = f"Usage: {usage_line}"
        if self.hint:
            text += f" ({self.hint})"
        return f"{self.reason.rstrip('.')}. {text}" if self.reason else text


@dataclass(frozen=True)
class Kind:
    """How words become a value. ``width`` words are taken (joined by a space), or with
    ``tail`` the rest of the line: ``"raw"`` exactly as typed, ``"words"`` the words joined."""

    label: str
    """Shown in the usage line; empty: the argument's key."""
    convert: Callable[[str], Any] = str
    width: int = 1
    tail: str = ""
    pills_as_ids: bool = False
    quoted_label: bool = False


def _id(text: str) -> int:
    digits = text.removeprefix("#")
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        raise UsageError()
    return int(digits)


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise UsageError() from None


_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{1,2}:\d{2}$", re.ASCII)


def _datetime(text: str) -> tuple[str, str]:
    """'YYYY-MM-DD HH:MM' as its two parts; the time zone is applied by the feature."""
    try:
        if not _DATETIME.match(text):
            raise ValueError
        datetime.strptime(text, "%Y-%m-%d %H:%M")
    except ValueError:
        raise UsageError(f"{text} is not a date and time like 2026-12-01 09:00") from None
    day, hhmm = text.split(" ")
    return day, hhmm


def _duration(text: str) -> timedelta:
    try:
        return parse_delay(text)
    except TimeError as e:
        raise UsageError(str(e)) from None


def minutes(most: int, hint: str) -> Kind:
    """``<N>m`` from 1 to ``most`` minutes, as an int."""

    def convert(text: str) -> int:
        match = re.fullmatch(r"(\d{1,4})m", text.lower(), re.ASCII)
        if match is None or not 0 < int(match[1]) <= most:
            raise UsageError(hint=hint)
        return int(match[1])

    return Kind("<N>m", convert)


WORD = Kind("")
CLIENT = Kind("client", pills_as_ids=True)
ID = Kind("id", _id)
DATE = Kind("YYYY-MM-DD", _date)
DATETIME = Kind("YYYY-MM-DD HH:MM", _datetime, width=2)
DURATION = Kind("<N>(s|m|h|d)", _duration)
TITLE = Kind("title", quoted_label=True)
REST = Kind("", tail="raw")
WORDS = Kind("", tail="words")


@dataclass(frozen=True)
class Arg:
    key: str
    kind: Kind = WORD
    label: str = ""
    optional: bool = False
    many: bool = False

    def usage(self) -> str:
        label = self.label or self.kind.label or self.key
        text = label if label.startswith("<") else f"<{label}>"
        if self.kind.quoted_label:
            text = f'"{text}"'
        if self.many:
            text += "..."
        return f"[{text}]" if self.optional else text


@dataclass(frozen=True)
class Lit:
    word: str

    def usage(self) -> str:
        return self.word


@dataclass(frozen=True)
class Opt:
    items: tuple[Arg | Lit, ...]

    def __init__(self, *items: Arg | Lit) -> None:
        object.__setattr__(self, "items", items)

    def usage(self) -> str:
        return "[" + " ".join(i.usage() for i in self.items) + "]"


@dataclass(frozen=True)
class Flag:
    name: str
    key: str
    kind: Kind = WORD
    label: str = "VALUE"

    def usage(self) -> str:
        return f"[{self.name} {self.label}]"


Item = Arg | Lit | Opt | Flag


@dataclass(frozen=True)
class Sub:
    """One form of a command: an optional subcommand word, its items, and its handler."""

    name: str | None
    handler: Handler | None
    items: tuple[Item, ...] = ()

    def usage(self) -> str:
        parts = ([self.name] if self.name else []) + [i.usage() for i in self.items]
        return " ".join(parts)

    def keys(self) -> list[str]:
        keys: list[str] = []
        for item in self.items:
            inner = item.items if isinstance(item, Opt) else (item,)
            keys += [i.key for i in inner if isinstance(i, Arg | Flag)]
        return keys


@dataclass(frozen=True)
class Matched:
    sub: Sub
    values: dict[str, Any]


def _flat_forms(items: Sequence[Item]) -> list[list[Arg | Lit]]:
    """Every way to read the optional groups, taking them before leaving them out."""
    forms: list[list[Arg | Lit]] = [[]]
    for item in items:
        if isinstance(item, Flag):
            continue
        if isinstance(item, Opt):
            forms = [f + list(item.items) for f in forms] + forms
        else:
            forms = [[*f, item] for f in forms]
    return forms


Span = tuple[Arg, int, int]


def _shape(items: list[Arg | Lit], words: Sequence[Word]) -> list[Span] | None:
    """Assign words to items (backtracking); None if the words do not have this shape."""
    n = len(words)

    def go(ii: int, wi: int) -> list[Span] | None:
        if ii == len(items):
            return [] if wi == n else None
        item = items[ii]
        if isinstance(item, Lit):
            if wi < n and not words[wi].quoted and words[wi].text.lower() == item.word:
                return go(ii + 1, wi + 1)
            return None
        if item.kind.tail:
            if wi == n:
                return [] if item.optional and ii == len(items) - 1 else None
            return [(item, wi, n)] if ii == len(items) - 1 else None
        width = item.kind.width
        counts = range((n - wi) // width, 0, -1) if item.many else [1]
        for count in counts:
            end = wi + count * width
            if end > n:
                continue
            rest = go(ii + 1, end)
            if rest is not None:
                return [(item, wi, end), *rest]
        if item.optional:
            return go(ii + 1, wi)
        return None

    return go(0, 0)


def _convert(arg: Arg, parsed: ParsedCommand, start: int, end: int) -> Any:
    words = parsed.words[start:end]
    pills = parsed.pills

    def text_of(raw: str) -> str:
        return pill_ids(raw, pills) if arg.kind.pills_as_ids else show_pills(raw, pills)

    if arg.kind.tail == "raw":
        return text_of(parsed.line[words[0].start :].strip())
    if arg.kind.tail == "words":
        return text_of(" ".join(w.text for w in words)).strip()
    width = arg.kind.width
    values = [
        arg.kind.convert(text_of(" ".join(w.text for w in words[i : i + width])))
        for i in range(0, len(words), width)
    ]
    return values if arg.many else values[0]


def _take_flags(sub: Sub, parsed: ParsedCommand, values: dict[str, Any]) -> tuple[Word, ...] | None:
    """The words without the form's flags (their values go into ``values``)."""
    words = list(parsed.words)
    for flag in (i for i in sub.items if isinstance(i, Flag)):
        for at, word in enumerate(words):
            if not word.quoted and word.text.lower() == flag.name:
                if at + 1 >= len(words):
                    return None
                raw = words[at + 1].text
                shown = pill_ids(raw, parsed.pills) if flag.kind.pills_as_ids else raw
                values[flag.key] = flag.kind.convert(show_pills(shown, parsed.pills))
                del words[at : at + 2]
                break
    return tuple(words)


def match(subs: Sequence[Sub], parsed: ParsedCommand) -> Matched:
    """The first form the words fit, with converted values. UsageError if none fits."""
    for sub in subs:
        values: dict[str, Any] = dict.fromkeys(sub.keys())
        lead = parsed.words[:1]
        if sub.name is not None and (
            not lead or lead[0].quoted or lead[0].text.lower() != sub.name
        ):
            continue
        skip = 1 if sub.name is not None else 0
        words = _take_flags(sub, replace(parsed, words=parsed.words[skip:]), values)
        if words is None:
            raise UsageError()
        body = replace(parsed, words=words)
        for items in _flat_forms(sub.items):
            spans = _shape(items, words)
            if spans is None:
                continue
            for arg, start, end in spans:
                values[arg.key] = _convert(arg, body, start, end)
            return Matched(sub, values)
    raise UsageError()


def best_usage(subs: Sequence[Sub], parsed: ParsedCommand | None) -> str:
    """The usage of the form the sender was trying (by its subcommand word), else all forms."""
    if parsed is not None and parsed.words:
        first = parsed.words[0].text.lower()
        named = [s for s in subs if s.name is not None and s.name == first]
        if len(named) == 1:
            return named[0].usage()
    return " | ".join(u for u in (s.usage() for s in subs) if u)
