"""Serve an ASGI app under a real uvicorn on 127.0.0.1, on the port the kernel picks (port 0), and say which.

Tests run it in a thread (`LoopbackServer`); the benchmarks (bench/service.py, bench/soak.py,
bench/service_memory.py) run `python -m bench.loopback [APP]` as a child process (`ServerProcess`: the
app of `python -m service` unless APP names another, settings from the environment) and read the port
from the first line it prints, `PORT <n>`. Binding port 0 and reading the bound port leaves no window
in which another process could take a port picked in advance.
"""

import argparse
import asyncio
import importlib
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import uvicorn
from starlette.types import ASGIApp

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[1]
SERVICE_APP = "service.app:create_app"


class _NotifyingServer(uvicorn.Server):
    """uvicorn's server, setting `listening` once its sockets are bound (or it gave up starting)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.listening.set()

    @property
    def port(self) -> int:
        return self.servers[0].sockets[0].getsockname()[1]


class LoopbackServer:
    """One app under uvicorn in a background thread: `with LoopbackServer(app) as server: server.url`."""

    def __init__(self, app: ASGIApp, *, log_level: str = "warning") -> None:
        config = uvicorn.Config(app, host=HOST, port=0, lifespan="on", log_level=log_level, access_log=False)
        self._server = _NotifyingServer(config)
        self._thread = threading.Thread(target=self._run, name="loopback-uvicorn", daemon=True)
        self.failure: BaseException | None = None
        self.url = ""

    def _run(self) -> None:
        try:
            self._server.run()
        except BaseException as error:  # uvicorn exits (SystemExit) when the lifespan startup fails
            self.failure = error
        finally:
            self._server.listening.set()

    def start(self, *, timeout: float = 120.0) -> str:
        """Start and return the base URL; RuntimeError if the app's startup failed."""
        self._thread.start()
        if not self._server.listening.wait(timeout) or not self._server.started:
            self.stop()
            raise RuntimeError(f"uvicorn did not start: {self.failure!r}")
        self.url = f"http://{HOST}:{self._server.port}"
        return self.url

    def stop(self) -> None:
        """Graceful shutdown: open connections finish, then the app's lifespan shutdown runs."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> "LoopbackServer":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def wait_ready(url: str, *, timeout: float = 120.0) -> None:
    """Poll GET /readyz until 200; TimeoutError naming the last answer (a guard, not a speed goal)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/readyz", timeout=10)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text}"
        except httpx.HTTPError as error:
            last = repr(error)
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout} s: {last}")


class _PortPrintingServer(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        print(f"PORT {self.servers[0].sockets[0].getsockname()[1]}", flush=True)


class ServerProcess:
    """`python -m bench.loopback APP` as a child process on 127.0.0.1, port 0: `wait_ready()` gives its URL.

    It logs to a temporary file, not a pipe nobody reads (a line per request would fill a pipe and stall the
    server); the file's tail is the error when the server does not start."""

    def __init__(
        self, *, name: str = "server", app: str = SERVICE_APP, env: Mapping[str, str] | None = None,
        access_log: bool = False,
    ) -> None:  # fmt: skip
        self.name = name
        # MALLOC_ARENA_MAX=2 as `make serve` and the container set it (fewer glibc arenas, flat memory).
        environment = {"MALLOC_ARENA_MAX": "2", **os.environ, **(env or {})}
        self.log = tempfile.TemporaryFile()
        command = [sys.executable, "-m", "bench.loopback", app] + (["--access-log"] if access_log else [])
        self.process = subprocess.Popen(
            command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=self.log, text=True
        )
        self.url = ""

    def _log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def wait_ready(self, timeout: float = 300) -> str:
        """The base URL once the server is bound (its models loaded) and /readyz answers 200; RuntimeError with
        the server's log if it exits, TimeoutError if it takes longer than `timeout` seconds."""
        deadline = time.monotonic() + timeout
        if not self.url:
            # The "PORT <n>" line comes once the lifespan has started and the socket is bound; EOF if it failed.
            if not select.select([self.process.stdout], [], [], timeout)[0]:
                raise TimeoutError(f"{self.name} did not start in {timeout} s: {self._log_tail()}")
            line = self.process.stdout.readline()
            if not line.startswith("PORT "):
                raise RuntimeError(f"{self.name} did not start: {self._log_tail()}")
            self.url = f"http://{HOST}:{int(line.split()[1])}"
        wait_ready(self.url, timeout=max(deadline - time.monotonic(), 1.0))
        return self.url

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts the app down cleanly), then SIGKILL after a minute."""
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.process.stdout.close()
        self.log.close()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bench.loopback [APP] [--access-log]`: APP built with settings from the environment, on
    127.0.0.1:0; prints `PORT <n>` once bound."""
    import logging

    parser = argparse.ArgumentParser(prog="python -m bench.loopback", description=main.__doc__)
    parser.add_argument(
        "app", nargs="?", default=SERVICE_APP,
        help=f"module:function returning the ASGI app, called without arguments (default: {SERVICE_APP}, the "
        "app of python -m service)",
    )  # fmt: skip
    parser.add_argument("--access-log", action="store_true", help="log every request, as python -m service does")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module, _, factory = args.app.partition(":")
    app = getattr(importlib.import_module(module), factory)()
    # log_config=None: uvicorn's loggers (the access log too) go to the root handler on stderr; stdout carries
    # the PORT line alone.
    config = uvicorn.Config(
        app, host=HOST, port=0, lifespan="on", log_level="info", access_log=args.access_log, log_config=None
    )
    # In the main thread, so uvicorn's own SIGTERM/SIGINT handling shuts the app down cleanly.
    asyncio.run(_PortPrintingServer(config).serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
