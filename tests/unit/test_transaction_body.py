"""bridge/web/transactions.py: reading a transaction body that json.loads cannot decode."""

from __future__ import annotations

import json

from bridge.web.transactions import _events_one_by_one, _nests_within, _top_level_array


def test_elements_are_split_outside_strings_only() -> None:
    raw = (
        b'{"txn": "events", "other": ["[", {"events": [9]}], '
        b'"events": [{"body": "],\\"}{["}, 2, [3, [4]], "s,t"], "after": [5]}'
    )
    elements = _top_level_array(raw, b"events")
    assert elements is not None
    assert [json.loads(e) for e in elements] == [{"body": '],"}{['}, 2, [3, [4]], "s,t"]


def test_absent_or_empty_array() -> None:
    assert _top_level_array(b'{"ephemeral": []}', b"events") is None
    assert _top_level_array(b"[" * 1000, b"events") is None
    assert _top_level_array(b'{"events": []}', b"events") == []


def test_undecodable_elements_are_counted() -> None:
    deep = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    found = _events_one_by_one(b'{"events": [{"ok": 1}, ' + deep + b", {bad}]}")
    assert found == ([{"ok": 1}], 2)


def test_depth_is_measured_without_recursion() -> None:
    value: object = 1
    for _ in range(100_000):
        value = [value]
    assert not _nests_within(value, 64)
    assert _nests_within({"a": [{"b": {}}]}, 4)
    assert not _nests_within({"a": [{"b": {}}]}, 3)
