"""Issue 14's crash suite, small: the code of `python -m bench.crash` with a fixed seed and a few
SIGKILLs of Alcove, one Synapse restart and the proxy's fault bursts, on the suite's Synapse
(Alcove on SQLite: the suite reads Alcove's database file to time its kills)."""

from __future__ import annotations

from pathlib import Path

from bench.crash import crash_suite
from bridge.devstack import DevStack


async def test_crash_suite_small_loses_and_duplicates_nothing(
    synapse: DevStack, tmp_path: Path
) -> None:
    tally = await crash_suite(tmp_path, kills=4, seed=7, clients=4, recurring=False, stack=synapse)
    assert tally.kills >= 4
    assert tally.synapse_restarts == 1
    assert tally.expected > 0
    assert tally.problems == [], tally.problems
    assert (tally.lost, tally.duplicated) == (0, 0), tally.line()
    assert tally.sessions > 0 and tally.sessions_purged == tally.sessions, tally.line()
    assert tally.commands_answered_once == tally.commands, tally.line()
