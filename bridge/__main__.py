"""The `alcove` command: run | dev | generate-registration | doctor | vacuum-homeserver.
Exit codes: 0 ok, 1 Alcove could not start or a check failed, 2 bad config or usage."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from .config import load_config
from .errors import AlcoveError, ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alcove", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the appservice")
    run.add_argument("-c", "--config", default="config.yaml")
    gen = sub.add_parser("generate-registration", help="write registration.yaml files for Synapse")
    gen.add_argument("-c", "--config", default="config.yaml")
    gen.add_argument("--force", action="store_true", help="replace existing registration files")
    gen.add_argument(
        "--keep-tokens",
        action="store_true",
        help="rewrite existing registration files in the current form, keeping their tokens",
    )
    doc = sub.add_parser("doctor", help="check the homeserver, tokens, ping and admin flag")
    doc.add_argument("-c", "--config", default="config.yaml")
    vac = sub.add_parser(
        "vacuum-homeserver",
        help="rewrite the homeserver's database so purged sessions leave no bytes on disk",
    )
    vac.add_argument("-c", "--config", default="config.yaml")
    vac.add_argument(
        "--homeserver-config",
        type=Path,
        help="homeserver.yaml (default: homeserver.synapse_config from the config)",
    )
    dev = sub.add_parser("dev", help="throwaway Synapse + Alcove on 127.0.0.1 with SQLite")
    dev.add_argument(
        "--state-dir", type=Path, help="default .alcove-dev (.alcove-dev-workers with --workers)"
    )
    dev.add_argument(
        "--encryption",
        action="store_true",
        help="the bot as a crypto-capable member (encryption.enabled; issue 11, incomplete)",
    )
    dev.add_argument(
        "--smtp",
        metavar="HOST:PORT",
        help="where Synapse sends clients' email notifications (default 127.0.0.1 and the port "
        "in STATE_DIR/dev-secrets.json; e.g. `python -m aiosmtpd -n -l 127.0.0.1:PORT` shows them)",
    )
    dev.add_argument(
        "--mail-delay",
        default="10m",
        help="email.notif_delay_before_mail: how long a message waits unread before the mail",
    )
    dev.add_argument(
        "--workers",
        action="store_true",
        help="Synapse split into workers (PostgreSQL, Redis, nginx; see README)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as e:
        print(f"Config error: {e}", file=sys.stderr)
        return 2
    except AlcoveError as e:
        print(f"Alcove cannot start: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _dispatch(args: argparse.Namespace) -> int:
    from .logsetup import setup_logging

    if args.command == "generate-registration":
        from .registration import write_registrations

        config = load_config(args.config, need_tokens=False)
        written = write_registrations(config, force=args.force, keep_tokens=args.keep_tokens)
        print(f"Wrote {written.registration} and {written.doublepuppet}.")
        for fixed in written.fixed:
            print(f"Fixed: {fixed}.")
        print("Add both to app_service_config_files in homeserver.yaml and restart Synapse.")
        return 0
    if args.command == "doctor":
        from .doctor import failures, render, run_doctor

        config = load_config(args.config)
        checks = asyncio.run(run_doctor(config))
        print(render(checks))
        return 1 if failures(checks) else 0
    if args.command == "run":
        from .app import run_until_signalled

        config = load_config(args.config)
        setup_logging(config.logging)
        run_service(run_until_signalled(config))
        return 0
    if args.command == "vacuum-homeserver":
        from .scrub import homeserver_database, vacuum_homeserver

        config = load_config(args.config, need_tokens=False)
        path = args.homeserver_config or config.homeserver.synapse_config
        if path is None:
            raise ConfigError(
                "homeserver.synapse_config", "needed (or --homeserver-config) to find the database"
            )
        hs_db = homeserver_database(Path(path))
        asyncio.run(vacuum_homeserver(hs_db))
        print(f"Vacuumed {hs_db.describe()}.")
        return 0
    if args.command == "dev":
        from .config import LoggingConfig

        if args.workers and args.encryption:
            _parser().error("--encryption is not available with --workers yet; use one of them")
        state_dir = args.state_dir or Path(".alcove-dev-workers" if args.workers else ".alcove-dev")
        setup_logging(LoggingConfig(level="INFO", file=state_dir / "alcove.log"))
        if args.workers:
            from .devstack_workers import run_dev_workers

            asyncio.run(run_dev_workers(state_dir))
        else:
            from .devstack import run_dev

            smtp = None
            if args.smtp:
                host, _, port = args.smtp.rpartition(":")
                if not host or not port.isdigit():
                    _parser().error("--smtp: HOST:PORT, e.g. 127.0.0.1:2525")
                smtp = (host, int(port))
            run_service(
                run_dev(
                    state_dir, encryption=args.encryption, smtp=smtp, mail_delay=args.mail_delay
                )
            )
        return 0
    raise AssertionError(args.command)


GC_THRESHOLD = (10_000, 10, 10)


def tune_gc() -> None:
    """Python's cyclic garbage collector took a sixth of the CPU of a busy Alcove (measured
    with gc.callbacks in bench/ceiling.py): the code and libraries loaded by now (some 140,000
    objects) were scanned again at every full collection, and at the default threshold (700
    allocations) the rows, futures and requests in flight were promoted to the oldest
    generation, triggering a full collection about once a second. Freeze what is loaded (it
    lives as long as the process) and collect the youngest generation every 10,000
    allocations instead: the collector then takes about 1% of the CPU. Memory held by
    unreachable cycles between collections stays in the kilobytes."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def run_service(main_coroutine: Coroutine[Any, Any, None]) -> None:
    """Run Alcove's event loop: uvloop (libuv), which costs about a tenth less CPU per command
    than asyncio's own loop (bench/ceiling.py), unless ALCOVE_EVENT_LOOP=asyncio asks for the
    standard one (or uvloop is not installed: it is not built for Windows)."""
    choice = os.environ.get("ALCOVE_EVENT_LOOP", "uvloop")
    if choice not in ("uvloop", "asyncio"):
        raise SystemExit(f"ALCOVE_EVENT_LOOP={choice!r}: use uvloop or asyncio")
    tune_gc()
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main_coroutine)
            return
    asyncio.run(main_coroutine)


if __name__ == "__main__":
    sys.exit(main())
