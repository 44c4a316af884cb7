"""Turning a command line into a name and words. Errors are values.

Words follow the shell: double quotes group ("two words", typographic quotes too), a backslash
escapes, an apostrophe is an ordinary letter (O'Neil). Each word keeps its offset, so an argument
that is "the rest of the line" is the text exactly as typed. A pill (a user link, see
``incoming.py``) stands in the text as a placeholder; arguments resolve it to the user ID or
show its visible text, depending on their kind (``args.py``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PREFIX = "!"
QUOTES = '"\u201c\u201d'
PILL_OPEN = "\ue000"
PILL_CLOSE = "\ue001"
_PILL = re.compile(f"{PILL_OPEN}(\\d+){PILL_CLOSE}")


@dataclass(frozen=True)
class Pill:
    """A user link in ``formatted_body``: who it names, and the text the sender saw."""

    user_id: str
    text: str


def pill_marker(index: int) -> str:
    return f"{PILL_OPEN}{index}{PILL_CLOSE}"


def without_markers(text: str) -> str:
    """Text from the sender with the placeholder characters removed (they are ours)."""
    return text.replace(PILL_OPEN, "").replace(PILL_CLOSE, "")


def show_pills(text: str, pills: tuple[Pill, ...]) -> str:
    """The text as the sender saw it: each pill as its visible text."""
    return _PILL.sub(lambda m: _pill(pills, m).text, text)


def pill_ids(text: str, pills: tuple[Pill, ...]) -> str:
    """The text with each pill as the user ID it links to."""
    return _PILL.sub(lambda m: _pill(pills, m).user_id, text)


def _pill(pills: tuple[Pill, ...], match: re.Match[str]) -> Pill:
    index = int(match[1])
    return pills[index] if index < len(pills) else Pill("", "")


@dataclass(frozen=True)
class Word:
    text: str
    start: int
    """Offset of the word's first character in the argument text."""
    quoted: bool


@dataclass(frozen=True)
class ParsedCommand:
    name: str
    args: tuple[str, ...]
    raw_args: str
    words: tuple[Word, ...] = field(default=(), compare=False)
    line: str = field(default="", compare=False)
    """The argument text the word offsets refer to (pills as placeholders)."""
    pills: tuple[Pill, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class ParseError:
    name: str
    reason: str


def split_words(text: str) -> tuple[Word, ...]:
    """Shell-style words with their offsets. ValueError for an unclosed quote or a trailing
    backslash."""
    words: list[Word] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        start, buf, quoted = i, [], False
        while i < n and not text[i].isspace():
            ch = text[i]
            if ch in QUOTES:
                quoted = True
                i += 1
                while True:
                    if i >= n:
                        raise ValueError("No closing quotation")
                    c = text[i]
                    if c in QUOTES:
                        i += 1
                        break
                    if c == "\\" and i + 1 < n and (text[i + 1] in QUOTES or text[i + 1] == "\\"):
                        c = text[i + 1]
                        i += 1
                    buf.append(c)
                    i += 1
            elif ch == "\\":
                if i + 1 >= n:
                    raise ValueError("No escaped character")
                buf.append(text[i + 1])
                i += 2
            else:
                buf.append(ch)
                i += 1
        words.append(Word("".join(buf), start, quoted))
    return tuple(words)


def parse_command(body: str, pills: tuple[Pill, ...] = ()) -> ParsedCommand | ParseError | None:
    """None when the message is not a command at all."""
    text = body.strip()
    if not text.startswith(PREFIX) or len(text) < 2 or text[1].isspace():
        return None
    end = 1
    while end < len(text) and not text[end].isspace():
        end += 1
    name = show_pills(text[1:end], pills).lower()
    rest = text[end:].strip()
    try:
        words = split_words(rest)
    except ValueError as e:  # unbalanced quotes
        return ParseError(name, f"could not read the arguments ({e}); check your quotes")
    args = tuple(show_pills(w.text, pills) for w in words)
    return ParsedCommand(name, args, show_pills(rest, pills), words, rest, pills)
