"""Serve an ASGI app under a real uvicorn on 127.0.0.1, on the port the kernel picks (port 0), and say which.

Tests run it in a thread (`LoopbackServer`); bench/soak.py runs `python -m bench.loopback` as its own
process (the app of `python -m service`, settings from the environment) and reads the port from the
first line it prints, `PORT <n>`. Binding port 0 and reading the bound port leaves no window in which
another process could take a port picked in advance.
"""

import asyncio
import socket
import sys
import threading
import time

import httpx
import uvicorn
from starlette.types import ASGIApp

HOST = "127.0.0.1"


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


def main() -> int:
    """`python -m bench.loopback`: the service's app, settings from the environment, on 127.0.0.1:0."""
    import logging

    from service.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = uvicorn.Config(create_app(), host=HOST, port=0, lifespan="on", log_level="info", access_log=False)
    # In the main thread, so uvicorn's own SIGTERM/SIGINT handling shuts the app down cleanly.
    asyncio.run(_PortPrintingServer(config).serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
