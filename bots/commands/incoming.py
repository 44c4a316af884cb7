"""A message event's content read the way clients send it, before any command parsing.

- An edit (``m.replace`` with ``m.new_content``) is read from its new content and remembers
  which event it edits.
- A reply's fallback is dropped: leading ``>`` lines and the blank line after them in
  ``body``, ``<mx-reply>…</mx-reply>`` in ``formatted_body``.
- Pills: when the HTML ``formatted_body`` has user links (``https://matrix.to/#/@user:server``
  or ``matrix:u/user:server``), the text comes from it, each link a placeholder for the user
  ID it names (Element puts only the display name in ``body``; that is never looked up).
- A thread (``rel_type: m.thread``) is remembered so the answer goes into it.
``m.mentions`` is not read: it changes nothing here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote

from .parse import Pill, pill_marker, without_markers

HTML = "org.matrix.custom.html"
_MATRIX_TO = re.compile(r"^https?://matrix\.to/#/((?:@|%40)[^/?#]+)", re.IGNORECASE)
_MATRIX_URI = re.compile(r"^matrix:u/([^/?#]+)", re.IGNORECASE)
_USER_ID = re.compile(r"^@[^\s:]+:\S+$")
_BLOCK_END = {"p", "div", "li", "blockquote", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "tr"}


@dataclass
class Incoming:
    """What the command parser reads, and where the answer should go."""

    text: str
    pills: tuple[Pill, ...] = ()
    edit_of: str | None = None
    thread_root: str | None = None
    reply_to: str | None = None
    """The event the answer replies to (the original command for an edit); None: the event."""
    sent_at: int = 0


def user_of_link(href: str) -> str | None:
    """The user ID a pill links to, or None for any other link."""
    href = href.strip()
    found = _MATRIX_TO.match(href)
    if found:
        user = unquote(found[1])
    else:
        found = _MATRIX_URI.match(href)
        if not found:
            return None
        user = "@" + unquote(found[1])
    return user if _USER_ID.match(user) else None


def strip_reply_fallback(body: str) -> str:
    """Drop the quoted lines a client puts before a reply, and the blank line after them."""
    lines = body.split("\n")
    if not lines or not lines[0].startswith(">"):
        return body
    i = 0
    while i < len(lines) and lines[i].startswith(">"):
        i += 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    return "\n".join(lines[i:])


class _PillText(HTMLParser):
    """HTML to text; user links become placeholders, the reply fallback is skipped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.pills: list[Pill] = []
        self._skip = 0
        self._link: tuple[str, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "mx-reply":
            self._skip += 1
        elif self._skip:
            return
        elif tag == "br":
            self._text("\n")
        elif tag == "a" and self._link is None:
            user = user_of_link(dict(attrs).get("href") or "")
            if user is not None:
                self._link = (user, [])

    def handle_endtag(self, tag: str) -> None:
        if tag == "mx-reply":
            self._skip = max(0, self._skip - 1)
        elif self._skip:
            return
        elif tag == "a" and self._link is not None:
            user, seen = self._link
            self._link = None
            self.out.append(pill_marker(len(self.pills)))
            self.pills.append(Pill(user, "".join(seen).strip() or user))
        elif tag in _BLOCK_END:
            self._text("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._text(without_markers(data))

    def _text(self, text: str) -> None:
        if self._link is not None:
            self._link[1].append(text)
        else:
            self.out.append(text)


def pills_from_html(html: str) -> tuple[str, tuple[Pill, ...]] | None:
    """The text of ``formatted_body`` with pill placeholders, or None if it has no user pills
    (or cannot be read: then ``body`` is used)."""
    reader = _PillText()
    try:
        reader.feed(html)
        reader.close()
    except Exception:  # a malformed body is read from `body` instead
        return None
    if reader._link is not None:  # an unclosed link: still a pill
        user, seen = reader._link
        reader.out.append(pill_marker(len(reader.pills)))
        reader.pills.append(Pill(user, "".join(seen).strip() or user))
    if not reader.pills:
        return None
    return "".join(reader.out), tuple(reader.pills)


def read_message(content: dict[str, Any], sent_at: int = 0) -> Incoming | None:
    """The text a command would be parsed from; None if the content has no text body (or is an
    edit without new content)."""
    relates = content.get("m.relates_to")
    relates = relates if isinstance(relates, dict) else {}
    edit_of: str | None = None
    thread_root: str | None = None
    if relates.get("rel_type") == "m.replace":
        new = content.get("m.new_content")
        target = relates.get("event_id")
        if not isinstance(new, dict) or not isinstance(target, str):
            return None
        content, edit_of = new, target
    elif relates.get("rel_type") == "m.thread" and isinstance(relates.get("event_id"), str):
        thread_root = relates["event_id"]
    body = content.get("body")
    if not isinstance(body, str):
        return None
    text = strip_reply_fallback(without_markers(body))
    pills: tuple[Pill, ...] = ()
    html = content.get("formatted_body")
    if content.get("format") == HTML and isinstance(html, str):
        found = pills_from_html(html)
        if found is not None:
            text, pills = found
    return Incoming(
        text,
        pills,
        edit_of=edit_of,
        thread_root=thread_root,
        reply_to=edit_of,
        sent_at=sent_at,
    )
