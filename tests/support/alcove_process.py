"""Alcove as a real subprocess (`python -m bridge run`), so a test can kill -9 it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp


class AlcoveProcess:
    def __init__(
        self,
        config_path: Path,
        homeserver_url: str,
        db_url: str,
        port: int,
        log_path: Path,
        log_level: str = "DEBUG",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.log_level = log_level
        self.extra_env = dict(extra_env or {})
        self.config_path = config_path
        self.homeserver_url = homeserver_url
        self.db_url = db_url
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ALCOVE__")}
        env["ALCOVE__HOMESERVER__ADDRESS"] = self.homeserver_url
        env["ALCOVE__DATABASE__URL"] = self.db_url
        env["ALCOVE__LOGGING__LEVEL"] = self.log_level
        env["ALCOVE__LOGGING__FILE"] = str(self.log_path)
        env.update(self.extra_env)
        return env

    async def start(self, timeout: float = 60.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        out = self.log_path.with_suffix(".stderr").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "-c", str(self.config_path)],
            env=self._env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"Alcove exited with {self.proc.returncode}:\n{self.output()}"
                    )
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}/ready") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(f"Alcove not ready within {timeout}s:\n{self.output()}")

    def output(self) -> str:
        path = self.log_path.with_suffix(".stderr")
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    async def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait for the exit without blocking the event loop: the test's
        FaultProxy runs on that loop, and a blocking wait would stall Alcove's last requests
        (and so its graceful stop) until the wait timed out."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise subprocess.TimeoutExpired(self.proc.args, timeout)
            await asyncio.sleep(0.05)
        return code

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and a blocking wait (benches; tests use ``stop``)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
