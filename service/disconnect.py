"""A client that leaves cancels its work: the decodes and inference of a request whose connection closed stop.

Starlette runs a handler to its end even when its client is gone; this watches the connection instead. Once
the body has been read, the next ASGI message a server sends is `http.disconnect` (uvicorn: when the
connection closes, or once the response is complete); on it, the request's task is cancelled, which drops
its queued decodes and queued images, kills its running decode, and answers ClientDisconnected.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import Request


class ClientDisconnected(Exception):
    """The client closed its connection before the answer; its work was dropped (answered 499, read by no one)."""


@contextlib.asynccontextmanager
async def cancelled_on_disconnect(request: Request) -> AsyncIterator[None]:
    """Run the enclosed work, cancelled when the client disconnects (then ClientDisconnected). Enter it only once
    the request's body has been read: it reads the request's next message."""
    task = asyncio.current_task()
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.create_task(watch(), name="disconnect-watch")
    try:
        yield
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        raise ClientDisconnected("the client closed the connection") from None
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
