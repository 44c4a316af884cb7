"""Component tests build the bot with the one test harness (tests/support/harness.py)."""

from tests.support.harness import harnesses

__all__ = ["harnesses"]
