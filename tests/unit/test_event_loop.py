"""`alcove run` and `alcove dev` run on uvloop unless ALCOVE_EVENT_LOOP=asyncio, with the
garbage collector tuned for a long-running service."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

import bridge.__main__
from bridge.__main__ import GC_THRESHOLD, run_service, tune_gc


@pytest.fixture(autouse=True)
def gc_as_it_was(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """run_service tunes the whole process's collector: not the test runner's."""
    monkeypatch.setattr(bridge.__main__, "tune_gc", lambda: None)
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def loop_module(monkeypatch: pytest.MonkeyPatch, choice: str | None) -> str:
    if choice is None:
        monkeypatch.delenv("ALCOVE_EVENT_LOOP", raising=False)
    else:
        monkeypatch.setenv("ALCOVE_EVENT_LOOP", choice)
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    run_service(main())
    return seen[0]


def test_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert loop_module(monkeypatch, None).startswith("uvloop")


def test_the_standard_loop_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    assert loop_module(monkeypatch, "asyncio").startswith("asyncio")


def test_an_unknown_choice_says_what_to_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALCOVE_EVENT_LOOP", "trio")

    async def main() -> None:
        raise AssertionError("must not run")

    coro = main()
    with pytest.raises(SystemExit, match="use uvloop or asyncio"):
        run_service(coro)
    coro.close()


def test_the_collector_is_tuned_for_a_service() -> None:
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLD
    assert gc.get_freeze_count() > 10_000  # the loaded code, out of every full collection
