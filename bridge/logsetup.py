"""Logging: named loggers, lazy % formatting, no message bodies above DEBUG.

mautrix logs whole request bodies at DEBUG; those loggers are capped at INFO so no message
content reaches any log, whatever level the operator picks."""

from __future__ import annotations

import logging
import sys

# mautrix expects its TraceLogger class for the loggers it is handed; importing it registers the
# class before any of ours are created.
import mautrix.util.logging  # noqa: F401

from .config import LoggingConfig

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# These log request bodies or SQL parameters (message content) at DEBUG: never below INFO.
CAPPED = ("alcove.mau", "mau", "alcove.db.sql", "aiohttp.access", "aiosqlite", "asyncpg")


def setup_logging(config: LoggingConfig) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if config.file is not None:
        config.file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(config.file))
    logging.basicConfig(level=config.level, format=FORMAT, handlers=handlers, force=True)
    for name in CAPPED:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLevelName(config.level)))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one INFO line per job run
