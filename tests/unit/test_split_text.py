"""Long replies are split at line breaks so no event exceeds what Synapse accepts."""

from __future__ import annotations

from bots.bot_types import MAX_BODY_BYTES, split_text


def test_short_text_is_one_part() -> None:
    assert split_text("one\ntwo") == ["one\ntwo"]
    assert split_text("") == [""]


def test_splits_at_line_breaks_and_loses_nothing() -> None:
    lines = [f"• Client {i:04d} (@c-{i:08x}:localhost): not accepted" for i in range(2000)]
    text = "\n".join(lines)
    parts = split_text(text)
    assert len(parts) > 1
    assert all(len(p.encode()) <= MAX_BODY_BYTES for p in parts)
    assert "\n".join(parts) == text  # every line, in order, none cut


def test_counts_bytes_not_characters() -> None:
    line = "é" * 10  # 20 bytes
    parts = split_text("\n".join([line] * 10), limit=45)
    assert all(len(p.encode()) <= 45 for p in parts)
    assert parts[0] == f"{line}\n{line}"


def test_a_line_longer_than_the_limit_is_cut_at_a_character() -> None:
    parts = split_text("ab" + "é" * 5 + "\nend", limit=5)
    assert all(len(p.encode()) <= 5 for p in parts)
    assert "".join(parts[:-1]) + "\n" + parts[-1] == "ab" + "é" * 5 + "\nend"
